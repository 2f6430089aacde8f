//! One parsed DICOM file's header: identity, geometry of each frame, rescale, and the tags a
//! DICOM SEG copies. Single-frame images and enhanced multi-frame images (per-frame and shared
//! functional groups) both become a list of [`FrameHeader`]s.
use dicom_core::Tag;
use dicom_core::header::HasLength;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

use crate::error::{Error, Result};

/// SOP classes that are not images: DICOMDIR (Media Storage Directory) and the like.
const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// Patient and study attributes a derived object (DICOM SEG) copies from its source.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PatientStudy {
    /// PatientName (0010,0010).
    pub patient_name: String,
    /// PatientID (0010,0020).
    pub patient_id: String,
    /// PatientBirthDate (0010,0030).
    pub patient_birth_date: String,
    /// PatientSex (0010,0040).
    pub patient_sex: String,
    /// StudyDate (0008,0020).
    pub study_date: String,
    /// StudyTime (0008,0030).
    pub study_time: String,
    /// StudyID (0020,0010).
    pub study_id: String,
    /// AccessionNumber (0008,0050).
    pub accession_number: String,
    /// ReferringPhysicianName (0008,0090).
    pub referring_physician_name: String,
    /// StudyDescription (0008,1030).
    pub study_description: String,
}

/// Geometry and rescale of one frame (a single-frame file has exactly one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FrameHeader {
    /// 0-based frame number within the file.
    pub frame: u32,
    /// ImageOrientationPatient: row direction cosines then column direction cosines (LPS).
    pub iop: Option<[f64; 6]>,
    /// ImagePositionPatient: centre of the first transmitted voxel (LPS, mm).
    pub ipp: Option<[f64; 3]>,
    /// PixelSpacing: (row spacing, column spacing) in mm.
    pub spacing: Option<[f64; 2]>,
    /// RescaleSlope (1 when absent).
    pub slope: f64,
    /// RescaleIntercept (0 when absent).
    pub intercept: f64,
}

/// The Image Pixel attributes (group 0028) as the header states them; `None` when absent or not
/// an integer. They are checked when the pixels are decoded, with errors naming the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PixelDescription {
    /// SamplesPerPixel (0028,0002).
    pub samples_per_pixel: Option<u32>,
    /// BitsAllocated (0028,0100).
    pub bits_allocated: Option<u32>,
    /// BitsStored (0028,0101).
    pub bits_stored: Option<u32>,
    /// PixelRepresentation (0028,0103): 0 unsigned, 1 two's complement.
    pub pixel_representation: Option<u32>,
}

/// Where a file's uncompressed little-endian PixelData value lies, as the header pass found it:
/// the decode pass reads these bytes in place instead of parsing the file again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NativePixelData {
    /// Byte offset of the value in the file.
    pub offset: usize,
    /// Length of the value in bytes (as declared, and within the file).
    pub len: usize,
    /// Length of the whole file when it was scanned.
    pub file_len: usize,
    /// Explicit VR (12-byte element header) rather than implicit VR (8 bytes).
    pub explicit_vr: bool,
}

impl NativePixelData {
    /// The PixelData value, when `bytes` still hold the file as scanned: same length, and the
    /// element header (tag (7FE0,0010) and the 4-byte length) right before the value.
    pub fn value<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        if bytes.len() != self.file_len {
            return None;
        }
        let header_len = if self.explicit_vr { 12 } else { 8 };
        let header = bytes.get(self.offset.checked_sub(header_len)?..self.offset)?;
        let tag_ok = header[..4] == [0xE0, 0x7F, 0x10, 0x00];
        let len_ok = header[header_len - 4..] == (self.len as u32).to_le_bytes();
        if !(tag_ok && len_ok) {
            return None;
        }
        bytes.get(self.offset..self.offset.checked_add(self.len)?)
    }
}

/// Transfer syntaxes whose PixelData is read in place: implicit and explicit VR little endian.
const NATIVE_LITTLE_ENDIAN: [&str; 2] = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"];

/// The header of one image file.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    /// Where it came from (for reading the pixels again).
    pub origin: crate::input::Origin,
    /// Printable file name.
    pub file: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub frame_of_reference_uid: String,
    pub modality: String,
    pub series_description: String,
    pub series_number: Option<i64>,
    pub image_type: Vec<String>,
    pub rows: u32,
    pub cols: u32,
    pub transfer_syntax: String,
    pub slice_thickness: Option<f64>,
    pub frames: Vec<FrameHeader>,
    pub patient: PatientStudy,
    /// The Image Pixel attributes.
    pub pixels: PixelDescription,
    /// Where the pixel bytes lie, for uncompressed little-endian files whose PixelData is a
    /// top-level element of defined length; `None` for every other file (decoded by dicom-rs).
    pub native: Option<NativePixelData>,
}

impl Instance {
    /// True when ImageType says LOCALIZER or SCOUT (a topogram, not a tomographic series).
    pub fn is_localizer(&self) -> bool {
        self.image_type.iter().any(|t| {
            let t = t.to_ascii_uppercase();
            t == "LOCALIZER" || t == "SCOUT"
        })
    }
}

/// What a byte buffer turned out to be.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// An image with pixel data.
    Image(Box<Instance>),
    /// Not DICOM, DICOMDIR, or DICOM without pixel data (reports, presentation states, …).
    Skipped,
    /// The bytes were the start of a file and its header goes on past them: read it whole.
    NeedWhole,
}

/// What the lazy walk over a data set found.
#[derive(Debug, Clone, Copy, Default)]
struct Walk {
    /// The top-level PixelData element was reached (every element before it was checked).
    reached_pixel_data: bool,
    /// Where its value lies, for uncompressed little endian.
    native: Option<NativePixelData>,
}

/// True when the bytes carry the DICOM Part 10 signature (`DICM` at 128, or at 0 without preamble).
pub(crate) fn has_dicom_magic(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.get(0..4) == Some(b"DICM")
}

/// Parses a whole file (pixel data included).
pub(crate) fn parse_full(bytes: &[u8], file: &str) -> Result<DefaultDicomObject> {
    let start = preamble_len(bytes);
    check_declared_lengths(bytes, start, file, bytes.len() as u64)?;
    parse(bytes, start, file, OpenFileOptions::new())
}

/// 128 when the bytes start with the Part 10 preamble (`DICM` at 128), else 0.
fn preamble_len(bytes: &[u8]) -> usize {
    if bytes.get(128..132) == Some(b"DICM") { 128 } else { 0 }
}

fn parse(
    bytes: &[u8],
    start: usize,
    file: &str,
    opts: OpenFileOptions,
) -> Result<DefaultDicomObject> {
    opts.read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(&bytes[start..])
        .map_err(|e| Error::Parse { file: file.to_string(), message: e.to_string() })
}

/// Walks the data set lazily (headers read, values skipped) and refuses any element or item whose
/// declared length is larger than the whole file: dicom-rs allocates a value's declared length
/// before reading it, so a 4 GiB length in a 4 KiB file would otherwise cost 4 GiB.
/// A walk that fails for another reason is left to the real parser to report.
///
/// `total` is the whole file's length; `bytes` may be only its start (the walk then stops where
/// they end). On the way it notes whether the top-level PixelData element was reached and where
/// its value lies, when it has a defined length in an uncompressed little-endian transfer syntax.
fn check_declared_lengths(bytes: &[u8], start: usize, file: &str, total: u64) -> Result<Walk> {
    use dicom_core::header::Header;
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_parser::dataset::LazyDataToken;
    use dicom_parser::dataset::lazy_read::LazyDataSetReader;
    use dicom_parser::stateful::decode::StatefulDecode;
    let too_long = |len: u64| Error::Limit {
        file: file.to_string(),
        message: format!("an element declares {len} bytes but the file has {total}"),
    };
    let mut cursor = std::io::Cursor::new(&bytes[start..]);
    let mut walk = Walk::default();
    let Ok(meta) = dicom_object::FileMetaTable::from_reader(&mut cursor) else { return Ok(walk) };
    let Some(ts) =
        dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(meta.transfer_syntax())
    else {
        return Ok(walk);
    };
    if ts.uid() == "1.2.840.10008.1.2.1.99" {
        // Deflated data set: the lazy reader does not inflate it.
        return Ok(walk);
    }
    let in_place = NATIVE_LITTLE_ENDIAN.contains(&ts.uid());
    let explicit_vr = ts.uid() != NATIVE_LITTLE_ENDIAN[0];
    let Ok(mut reader) = LazyDataSetReader::new_with_ts(cursor, ts) else { return Ok(walk) };
    // Nesting depth: PixelData counts only at the top level of the data set.
    let mut depth = 0usize;
    while let Some(Ok(token)) = reader.advance() {
        let len = match &token {
            LazyDataToken::ElementHeader(h) => h.length().get().map(u64::from),
            LazyDataToken::LazyValue { header, .. } => header.length().get().map(u64::from),
            LazyDataToken::LazyItemValue { len, .. } => Some(u64::from(*len)),
            LazyDataToken::SequenceStart { len, .. } | LazyDataToken::ItemStart { len } => {
                len.get().map(u64::from)
            }
            _ => None,
        };
        if let Some(len) = len.filter(|&l| l > total) {
            return Err(too_long(len));
        }
        match &token {
            LazyDataToken::PixelSequenceStart => {
                walk.reached_pixel_data |= depth == 0;
                depth += 1;
            }
            LazyDataToken::SequenceStart { .. } => depth += 1,
            LazyDataToken::SequenceEnd => depth = depth.saturating_sub(1),
            LazyDataToken::LazyValue { header, decoder }
                if depth == 0 && header.tag() == tags::PIXEL_DATA =>
            {
                walk.reached_pixel_data = true;
                if let Some(len) = header.length().get().filter(|_| in_place) {
                    let offset = start as u64 + decoder.position();
                    let end = offset + u64::from(len);
                    if end <= total {
                        walk.native = Some(NativePixelData {
                            offset: offset as usize,
                            len: len as usize,
                            file_len: total as usize,
                            explicit_vr,
                        });
                    }
                }
            }
            _ => {}
        }
        if token.skip().is_err() {
            return Ok(walk);
        }
    }
    Ok(walk)
}

/// Parses the header of one file from `bytes`, the whole file or its first bytes (`total` is the
/// file's length). Non-DICOM bytes and non-image objects are [`Parsed::Skipped`]; a file with the
/// DICOM signature that does not parse is an error naming it; when `bytes` end before the
/// header does (PixelData not reached), [`Parsed::NeedWhole`].
pub(crate) fn parse_header(
    bytes: &[u8],
    total: u64,
    origin: crate::input::Origin,
    file: &str,
) -> Result<Parsed> {
    if !has_dicom_magic(bytes) {
        return Ok(Parsed::Skipped);
    }
    let start = preamble_len(bytes);
    let walk = check_declared_lengths(bytes, start, file, total)?;
    if (bytes.len() as u64) < total && !walk.reached_pixel_data {
        return Ok(Parsed::NeedWhole);
    }
    let native = walk.native;
    let obj = parse(bytes, start, file, OpenFileOptions::new().read_until(tags::PIXEL_DATA))?;
    let meta = obj.meta();
    let sop_class_uid = trim(&meta.media_storage_sop_class_uid);
    if sop_class_uid == MEDIA_STORAGE_DIRECTORY || obj.get(tags::ROWS).is_none() {
        return Ok(Parsed::Skipped);
    }
    let transfer_syntax = trim(&meta.transfer_syntax);
    let ds: &InMemDicomObject = &obj;
    let a = Attrs { obj: ds, file };
    let rows = a.u32(tags::ROWS, "Rows")?.unwrap_or(0);
    let cols = a.u32(tags::COLUMNS, "Columns")?.unwrap_or(0);
    let n_frames = match a.str(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(s) if s.is_empty() => 1,
        Some(s) => s.parse::<u32>().ok().filter(|&n| n >= 1).ok_or_else(|| Error::Attribute {
            file: file.to_string(),
            attribute: "NumberOfFrames",
            message: format!("{s:?} is not a positive integer"),
        })?,
    };
    let shared = first_item(ds, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame: Vec<&InMemDicomObject> = ds
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .map(|items| items.iter().collect())
        .unwrap_or_default();
    if !per_frame.is_empty() && per_frame.len() != n_frames as usize {
        return Err(Error::Attribute {
            file: file.to_string(),
            attribute: "PerFrameFunctionalGroupsSequence",
            message: format!("{} items for NumberOfFrames {n_frames}", per_frame.len()),
        });
    }
    if per_frame.is_empty() && n_frames > 1 {
        return Err(Error::UnsupportedImage {
            file: file.to_string(),
            message: format!(
                "multi-frame image ({n_frames} frames) without per-frame functional groups: \
                 the position of each frame is unknown"
            ),
        });
    }
    let top = FrameHeader {
        frame: 0,
        iop: a.fixed::<6>(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient")?,
        ipp: a.fixed::<3>(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient")?,
        spacing: a.fixed::<2>(tags::PIXEL_SPACING, "PixelSpacing")?,
        slope: a.f64(tags::RESCALE_SLOPE, "RescaleSlope")?.unwrap_or(1.0),
        intercept: a.f64(tags::RESCALE_INTERCEPT, "RescaleIntercept")?.unwrap_or(0.0),
    };
    let mut frames = Vec::with_capacity(per_frame.len().max(1));
    if per_frame.is_empty() {
        frames.push(top);
    } else {
        for (f, item) in per_frame.iter().enumerate() {
            let mut h = top.clone();
            h.frame = f as u32;
            // Per-frame groups override shared groups, which override the top level.
            for group in shared.iter().copied().chain(std::iter::once(*item)) {
                let g = Attrs { obj: group, file };
                if let Some(o) = g.nested_fixed::<6>(
                    tags::PLANE_ORIENTATION_SEQUENCE,
                    tags::IMAGE_ORIENTATION_PATIENT,
                    "ImageOrientationPatient",
                )? {
                    h.iop = Some(o);
                }
                if let Some(p) = g.nested_fixed::<3>(
                    tags::PLANE_POSITION_SEQUENCE,
                    tags::IMAGE_POSITION_PATIENT,
                    "ImagePositionPatient",
                )? {
                    h.ipp = Some(p);
                }
                if let Some(s) = g.nested_fixed::<2>(
                    tags::PIXEL_MEASURES_SEQUENCE,
                    tags::PIXEL_SPACING,
                    "PixelSpacing",
                )? {
                    h.spacing = Some(s);
                }
                if let Some(item) = first_item(group, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE) {
                    let t = Attrs { obj: item, file };
                    if let Some(s) = t.f64(tags::RESCALE_SLOPE, "RescaleSlope")? {
                        h.slope = s;
                    }
                    if let Some(i) = t.f64(tags::RESCALE_INTERCEPT, "RescaleIntercept")? {
                        h.intercept = i;
                    }
                }
            }
            frames.push(h);
        }
    }
    for h in &frames {
        if !(h.slope.is_finite() && h.intercept.is_finite()) || h.slope == 0.0 {
            return Err(Error::Attribute {
                file: file.to_string(),
                attribute: "RescaleSlope",
                message: format!("slope {} / intercept {} are not usable", h.slope, h.intercept),
            });
        }
    }
    let slice_thickness = a.f64(tags::SLICE_THICKNESS, "SliceThickness")?.or(shared
        .and_then(|g| first_item(g, tags::PIXEL_MEASURES_SEQUENCE))
        .and_then(|m| m.get(tags::SLICE_THICKNESS))
        .and_then(|e| e.to_float64().ok()));
    let s = |tag| a.str(tag).unwrap_or_default();
    let patient = PatientStudy {
        patient_name: s(tags::PATIENT_NAME),
        patient_id: s(tags::PATIENT_ID),
        patient_birth_date: s(tags::PATIENT_BIRTH_DATE),
        patient_sex: s(tags::PATIENT_SEX),
        study_date: s(tags::STUDY_DATE),
        study_time: s(tags::STUDY_TIME),
        study_id: s(tags::STUDY_ID),
        accession_number: s(tags::ACCESSION_NUMBER),
        referring_physician_name: s(tags::REFERRING_PHYSICIAN_NAME),
        study_description: s(tags::STUDY_DESCRIPTION),
    };
    let sop_instance_uid =
        a.str(tags::SOP_INSTANCE_UID).unwrap_or_else(|| trim(&meta.media_storage_sop_instance_uid));
    let series_uid =
        a.str(tags::SERIES_INSTANCE_UID).filter(|u| !u.is_empty()).ok_or_else(|| {
            Error::Attribute {
                file: file.to_string(),
                attribute: "SeriesInstanceUID",
                message: "missing".to_string(),
            }
        })?;
    Ok(Parsed::Image(Box::new(Instance {
        origin,
        file: file.to_string(),
        sop_class_uid: a.str(tags::SOP_CLASS_UID).unwrap_or(sop_class_uid),
        sop_instance_uid,
        study_uid: s(tags::STUDY_INSTANCE_UID),
        series_uid,
        frame_of_reference_uid: s(tags::FRAME_OF_REFERENCE_UID),
        modality: s(tags::MODALITY),
        series_description: s(tags::SERIES_DESCRIPTION),
        series_number: a.str(tags::SERIES_NUMBER).and_then(|v| v.parse().ok()),
        image_type: ds
            .get(tags::IMAGE_TYPE)
            .and_then(|e| e.to_multi_str().ok())
            .map(|v| v.iter().map(|s| s.trim().to_string()).collect())
            .unwrap_or_default(),
        rows,
        cols,
        transfer_syntax,
        slice_thickness,
        frames,
        patient,
        pixels: PixelDescription {
            samples_per_pixel: a.u32(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel").ok().flatten(),
            bits_allocated: a.u32(tags::BITS_ALLOCATED, "BitsAllocated").ok().flatten(),
            bits_stored: a.u32(tags::BITS_STORED, "BitsStored").ok().flatten(),
            pixel_representation: a
                .u32(tags::PIXEL_REPRESENTATION, "PixelRepresentation")
                .ok()
                .flatten(),
        },
        native,
    })))
}

fn trim(s: &str) -> String {
    s.trim_end_matches(['\0', ' ']).trim().to_string()
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag).and_then(|e| e.items()).and_then(|items| items.first())
}

/// Typed attribute access with errors that name the file and the attribute.
struct Attrs<'a> {
    obj: &'a InMemDicomObject,
    file: &'a str,
}

impl Attrs<'_> {
    fn err(&self, attribute: &'static str, message: String) -> Error {
        Error::Attribute { file: self.file.to_string(), attribute, message }
    }

    fn str(&self, tag: Tag) -> Option<String> {
        self.obj.get(tag).and_then(|e| e.to_str().ok()).map(|s| trim(&s))
    }

    fn u32(&self, tag: Tag, name: &'static str) -> Result<Option<u32>> {
        match self.obj.get(tag) {
            None => Ok(None),
            Some(e) => e.to_int::<u32>().map(Some).map_err(|err| self.err(name, err.to_string())),
        }
    }

    fn f64s(&self, tag: Tag, name: &'static str) -> Result<Option<Vec<f64>>> {
        let Some(e) = self.obj.get(tag) else { return Ok(None) };
        if e.is_empty() {
            return Ok(None);
        }
        let v = e.to_multi_float64().map_err(|err| self.err(name, err.to_string()))?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(self.err(name, format!("non-finite value in {v:?}")));
        }
        Ok(Some(v))
    }

    fn f64(&self, tag: Tag, name: &'static str) -> Result<Option<f64>> {
        Ok(self.f64s(tag, name)?.and_then(|v| v.first().copied()))
    }

    fn fixed<const N: usize>(&self, tag: Tag, name: &'static str) -> Result<Option<[f64; N]>> {
        match self.f64s(tag, name)? {
            None => Ok(None),
            Some(v) => <[f64; N]>::try_from(v.as_slice())
                .map(Some)
                .map_err(|_| self.err(name, format!("{} values, expected {N}", v.len()))),
        }
    }

    fn nested_fixed<const N: usize>(
        &self,
        seq: Tag,
        tag: Tag,
        name: &'static str,
    ) -> Result<Option<[f64; N]>> {
        match first_item(self.obj, seq) {
            None => Ok(None),
            Some(item) => Attrs { obj: item, file: self.file }.fixed::<N>(tag, name),
        }
    }
}
