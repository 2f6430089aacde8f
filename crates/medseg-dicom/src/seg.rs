//! A binary DICOM Segmentation (SEG) of a label map on the grid of the DICOM series it was
//! computed from: one segment per class present, one frame per (segment, slice) holding that
//! segment, each frame referencing its source image, the source FrameOfReference and the
//! patient/study attributes copied; written with dicom-rs, atomically.
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use medseg_data::{Volume, Voxel};

use crate::codes::{Code, code_for};
use crate::error::{Error, Result};
use crate::read::SeriesInfo;

/// Segmentation Storage SOP Class.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// Descriptive attributes of the SEG object.
#[derive(Debug, Clone, PartialEq)]
pub struct SegOptions {
    /// SeriesDescription of the new series.
    pub series_description: String,
    /// SeriesNumber of the new series.
    pub series_number: i32,
    /// SegmentAlgorithmName (and ContentCreatorName).
    pub algorithm_name: String,
    /// SoftwareVersions.
    pub software_version: String,
}

impl Default for SegOptions {
    fn default() -> Self {
        SegOptions {
            series_description: "medseg segmentation".to_string(),
            series_number: 300,
            algorithm_name: "medseg".to_string(),
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// One segment written.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegmentWritten {
    /// SegmentNumber (1-based).
    pub number: u16,
    /// The label value in the label map.
    pub label: u32,
    /// SegmentLabel (the class name).
    pub name: String,
    /// SegmentedPropertyType.
    pub code: Code,
    /// Slices (frames) holding it.
    pub frames: usize,
    /// Voxels in it.
    pub voxels: u64,
}

/// What [`write_seg`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegWritten {
    /// The new SOPInstanceUID.
    pub sop_instance_uid: String,
    /// The new SeriesInstanceUID.
    pub series_instance_uid: String,
    /// The segments, in SegmentNumber order.
    pub segments: Vec<SegmentWritten>,
    /// NumberOfFrames.
    pub frames: usize,
}

/// Writes `labels` (on the source grid: shape `[columns, rows, slices]` of `info`) as a binary
/// DICOM SEG at `path`. `class_names[l]` names label `l` (label 0 is background and never a
/// segment); labels without a name are an error, classes absent from the map get no segment.
pub fn write_seg<T: Voxel>(
    path: &Path,
    labels: &Volume<T>,
    class_names: &[String],
    info: &SeriesInfo,
    opts: &SegOptions,
) -> Result<SegWritten> {
    let [nx, ny, nz] = labels.shape();
    if [nx, ny, nz] != [info.columns as usize, info.rows as usize, info.slices.len()] {
        return Err(Error::Seg(format!(
            "label map {nx}×{ny}×{nz} is not on the source grid {}×{}×{}",
            info.columns,
            info.rows,
            info.slices.len()
        )));
    }
    if info.study_instance_uid.is_empty() || info.frame_of_reference_uid.is_empty() {
        return Err(Error::Seg(
            "the source series has no StudyInstanceUID or FrameOfReferenceUID".into(),
        ));
    }
    // Voxel counts per label, and which slices hold each label.
    let mut counts: Vec<u64> = vec![0; class_names.len()];
    for &v in labels.data() {
        let x = v.to_f64();
        if x == 0.0 {
            continue;
        }
        let l = x as usize;
        if x < 0.0 || x.fract() != 0.0 || l >= class_names.len() {
            return Err(Error::Seg(format!(
                "label {x} has no class name ({} names given, background first)",
                class_names.len()
            )));
        }
        counts[l] += 1;
    }
    let present: Vec<usize> = (1..class_names.len()).filter(|&l| counts[l] > 0).collect();
    if present.is_empty() {
        return Err(Error::Seg("the label map has no foreground voxel: nothing to write".into()));
    }
    let series_uid = new_uid(&info.series_instance_uid, 1);
    let sop_uid = new_uid(&info.series_instance_uid, 2);
    let dim_uid = new_uid(&info.series_instance_uid, 3);

    // Frames: for each segment, each slice where it is present, bit-packed row-major.
    let frame_bits = nx * ny;
    let mut bits: Vec<u8> = Vec::new();
    let mut n_frames = 0usize;
    let mut per_frame = Vec::new();
    let mut segments = Vec::new();
    for (s, &l) in present.iter().enumerate() {
        let number = (s + 1) as u16;
        let mut frames = 0;
        for k in 0..nz {
            let on = |i: usize, j: usize| labels.at(i, j, k).to_f64() as usize == l;
            if !(0..ny).any(|j| (0..nx).any(|i| on(i, j))) {
                continue;
            }
            let start = n_frames * frame_bits;
            bits.resize((start + frame_bits).div_ceil(8), 0);
            for j in 0..ny {
                for i in 0..nx {
                    if on(i, j) {
                        let b = start + j * nx + i;
                        bits[b / 8] |= 1 << (b % 8);
                    }
                }
            }
            n_frames += 1;
            frames += 1;
            per_frame.push(frame_item(info, k, number));
        }
        let (_, code, _) = code_for(&class_names[l]);
        segments.push(SegmentWritten {
            number,
            label: l as u32,
            name: class_names[l].clone(),
            code,
            frames,
            voxels: counts[l],
        });
    }
    if bits.len() % 2 == 1 {
        bits.push(0);
    }

    let mut o = InMemDicomObject::new_empty();
    let p = &info.patient;
    let now = timestamp();
    put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put_strs(&mut o, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]);
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    put_str(&mut o, tags::STUDY_DATE, VR::DA, &p.study_date);
    put_str(&mut o, tags::SERIES_DATE, VR::DA, &now.0);
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &now.0);
    put_str(&mut o, tags::STUDY_TIME, VR::TM, &p.study_time);
    put_str(&mut o, tags::SERIES_TIME, VR::TM, &now.1);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &now.1);
    put_str(&mut o, tags::ACCESSION_NUMBER, VR::SH, &p.accession_number);
    put_str(&mut o, tags::MODALITY, VR::CS, "SEG");
    put_str(&mut o, tags::MANUFACTURER, VR::LO, "medseg");
    put_str(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, &p.referring_physician_name);
    put_str(&mut o, tags::STUDY_DESCRIPTION, VR::LO, &p.study_description);
    put_str(&mut o, tags::SERIES_DESCRIPTION, VR::LO, &opts.series_description);
    put_str(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, &opts.algorithm_name);
    put_seq(&mut o, tags::REFERENCED_SERIES_SEQUENCE, vec![referenced_series(info)]);
    put_str(&mut o, tags::PATIENT_NAME, VR::PN, &p.patient_name);
    put_str(&mut o, tags::PATIENT_ID, VR::LO, &p.patient_id);
    put_str(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, &p.patient_birth_date);
    put_str(&mut o, tags::PATIENT_SEX, VR::CS, &p.patient_sex);
    put_str(&mut o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(&mut o, tags::SOFTWARE_VERSIONS, VR::LO, &opts.software_version);
    put_str(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, &info.study_instance_uid);
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    put_str(&mut o, tags::STUDY_ID, VR::SH, &p.study_id);
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, &opts.series_number.to_string());
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &info.frame_of_reference_uid);
    put_str(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    let mut dim_org = InMemDicomObject::new_empty();
    put_str(&mut dim_org, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_uid);
    put_seq(&mut o, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![dim_org]);
    put_seq(
        &mut o,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension(
                &dim_uid,
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Referenced Segment Number",
            ),
            dimension(
                &dim_uid,
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position Patient",
            ),
        ],
    );
    o.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)));
    put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_str(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, &n_frames.to_string());
    o.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(ny as u16)));
    o.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(nx as u16)));
    o.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(1u16)));
    o.put(DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(1u16)));
    o.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(0u16)));
    o.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)));
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut o, tags::CONTENT_LABEL, VR::CS, "SEGMENTATION");
    put_str(&mut o, tags::CONTENT_DESCRIPTION, VR::LO, &opts.series_description);
    put_str(&mut o, tags::CONTENT_CREATOR_NAME, VR::PN, &format!("{}^", opts.algorithm_name));
    put_str(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    let segment_items = present
        .iter()
        .enumerate()
        .map(|(s, &l)| segment_item((s + 1) as u16, &class_names[l], opts))
        .collect();
    put_seq(&mut o, tags::SEGMENT_SEQUENCE, segment_items);
    put_seq(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared_groups(info)]);
    put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
    o.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bits)));

    let file = o
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(SEGMENTATION_STORAGE)
                .media_storage_sop_instance_uid(sop_uid.as_str()),
        )
        .map_err(|e| Error::Seg(e.to_string()))?;
    let write_err = |message: String| Error::Write { path: path.to_path_buf(), message };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| write_err(e.to_string()))?;
    // The temporary file is created 0600; the SEG is an ordinary output file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| write_err(e.to_string()))?;
    }
    {
        let mut w = std::io::BufWriter::new(tmp.as_file());
        file.write_all(&mut w).map_err(|e| write_err(e.to_string()))?;
        std::io::Write::flush(&mut w).map_err(|e| write_err(e.to_string()))?;
    }
    tmp.persist(path).map_err(|e| write_err(e.error.to_string()))?;
    Ok(SegWritten {
        sop_instance_uid: sop_uid,
        series_instance_uid: series_uid,
        segments,
        frames: n_frames,
    })
}

/// A DICOM UID under the `2.25` root (a 128-bit number), distinct per call.
fn new_uid(seed: &str, salt: u64) -> String {
    let mut parts = [0u64; 2];
    for (n, part) in parts.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(seed.as_bytes());
        h.write_u64(salt);
        h.write_u64(n as u64);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        *part = h.finish();
    }
    let v = ((parts[0] as u128) << 64 | parts[1] as u128) >> 1;
    format!("2.25.{}", v.max(1))
}

/// `(YYYYMMDD, HHMMSS)` in UTC.
fn timestamp() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

/// A decimal string of at most 16 characters.
fn ds(x: f64) -> String {
    for prec in (0..=10).rev() {
        let s = format!("{x:.prec$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".to_string() } else { s };
        }
    }
    format!("{x:.3e}")
}

fn put_str(o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str) {
    o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn put_strs(o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &[&str]) {
    let strs: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    o.put(DataElement::new(tag, vr, PrimitiveValue::Strs(strs.into())));
}

fn put_seq(o: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    o.put(DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED)));
}

fn code_item(c: Code) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::CODE_VALUE, VR::SH, c.value);
    put_str(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.scheme);
    put_str(&mut o, tags::CODE_MEANING, VR::LO, c.meaning);
    o
}

fn dimension(org: &str, index: Tag, group: Tag, label: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::DIMENSION_ORGANIZATION_UID, VR::UI, org);
    o.put(DataElement::new(
        tags::DIMENSION_INDEX_POINTER,
        VR::AT,
        PrimitiveValue::Tags([index][..].into()),
    ));
    o.put(DataElement::new(
        tags::FUNCTIONAL_GROUP_POINTER,
        VR::AT,
        PrimitiveValue::Tags([group][..].into()),
    ));
    put_str(&mut o, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
    o
}

fn referenced_series(info: &SeriesInfo) -> InMemDicomObject {
    let mut seen = std::collections::BTreeSet::new();
    let instances = info
        .slices
        .iter()
        .filter(|s| seen.insert(s.sop_instance_uid.clone()))
        .map(|s| {
            let mut o = InMemDicomObject::new_empty();
            put_str(&mut o, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &s.sop_class_uid);
            put_str(&mut o, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &s.sop_instance_uid);
            o
        })
        .collect();
    let mut o = InMemDicomObject::new_empty();
    put_seq(&mut o, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &info.series_instance_uid);
    o
}

fn shared_groups(info: &SeriesInfo) -> InMemDicomObject {
    let mut measures = InMemDicomObject::new_empty();
    let thickness = info.slice_thickness.filter(|t| *t > 0.0).unwrap_or(info.slice_spacing);
    put_str(&mut measures, tags::SLICE_THICKNESS, VR::DS, &ds(thickness));
    put_str(&mut measures, tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(info.slice_spacing));
    let sp = [ds(info.pixel_spacing[0]), ds(info.pixel_spacing[1])];
    put_strs(&mut measures, tags::PIXEL_SPACING, VR::DS, &[&sp[0], &sp[1]]);
    let mut orient = InMemDicomObject::new_empty();
    let iop: Vec<String> = info.image_orientation.iter().map(|&x| ds(x)).collect();
    let iop: Vec<&str> = iop.iter().map(String::as_str).collect();
    put_strs(&mut orient, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &iop);
    let mut g = InMemDicomObject::new_empty();
    put_seq(&mut g, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    put_seq(&mut g, tags::PLANE_ORIENTATION_SEQUENCE, vec![orient]);
    g
}

fn frame_item(info: &SeriesInfo, k: usize, segment: u16) -> InMemDicomObject {
    let slice = &info.slices[k];
    let mut source = InMemDicomObject::new_empty();
    put_str(&mut source, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &slice.sop_class_uid);
    put_str(&mut source, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &slice.sop_instance_uid);
    if let Some(f) = slice.frame_number {
        put_str(&mut source, tags::REFERENCED_FRAME_NUMBER, VR::IS, &f.to_string());
    }
    put_str(&mut source, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
    put_seq(
        &mut source,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item(Code {
            value: "121322",
            scheme: "DCM",
            meaning: "Source image for image processing operation",
        })],
    );
    let mut derivation = InMemDicomObject::new_empty();
    put_seq(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
    put_seq(
        &mut derivation,
        tags::DERIVATION_CODE_SEQUENCE,
        vec![code_item(Code { value: "113076", scheme: "DCM", meaning: "Segmentation" })],
    );
    let mut content = InMemDicomObject::new_empty();
    content.put(DataElement::new(
        tags::DIMENSION_INDEX_VALUES,
        VR::UL,
        PrimitiveValue::U32([segment as u32, k as u32 + 1].into()),
    ));
    let mut position = InMemDicomObject::new_empty();
    let ipp: Vec<String> = slice.position.iter().map(|&x| ds(x)).collect();
    let ipp: Vec<&str> = ipp.iter().map(String::as_str).collect();
    put_strs(&mut position, tags::IMAGE_POSITION_PATIENT, VR::DS, &ipp);
    let mut ident = InMemDicomObject::new_empty();
    ident.put(DataElement::new(
        tags::REFERENCED_SEGMENT_NUMBER,
        VR::US,
        PrimitiveValue::from(segment),
    ));
    let mut g = InMemDicomObject::new_empty();
    put_seq(&mut g, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
    put_seq(&mut g, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
    put_seq(&mut g, tags::PLANE_POSITION_SEQUENCE, vec![position]);
    put_seq(&mut g, tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![ident]);
    g
}

fn segment_item(number: u16, name: &str, opts: &SegOptions) -> InMemDicomObject {
    let (category, kind, side) = code_for(name);
    let mut o = InMemDicomObject::new_empty();
    put_seq(&mut o, tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, vec![code_item(category)]);
    o.put(DataElement::new(tags::SEGMENT_NUMBER, VR::US, PrimitiveValue::from(number)));
    put_str(&mut o, tags::SEGMENT_LABEL, VR::LO, name);
    put_str(&mut o, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put_str(&mut o, tags::SEGMENT_ALGORITHM_NAME, VR::LO, &opts.algorithm_name);
    let lab = cielab(palette(number));
    o.put(DataElement::new(
        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
        VR::US,
        PrimitiveValue::U16(lab.to_vec().into()),
    ));
    let mut type_item = code_item(kind);
    if let Some(side) = side {
        put_seq(
            &mut type_item,
            tags::SEGMENTED_PROPERTY_TYPE_MODIFIER_CODE_SEQUENCE,
            vec![code_item(side)],
        );
    }
    put_seq(&mut o, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![type_item]);
    o
}

/// A distinct sRGB colour per segment number.
fn palette(n: u16) -> [f64; 3] {
    const COLOURS: [[u8; 3]; 12] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [170, 110, 40],
    ];
    let c = COLOURS[(n as usize - 1) % COLOURS.len()];
    [c[0] as f64 / 255.0, c[1] as f64 / 255.0, c[2] as f64 / 255.0]
}

/// sRGB → CIELab (D50, as DICOM's PCS) scaled to the DICOM 16-bit encoding.
fn cielab(rgb: [f64; 3]) -> [u16; 3] {
    let lin = rgb.map(|c| if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) });
    // sRGB → XYZ (D50, Bradford-adapted).
    let x = 0.4360747 * lin[0] + 0.3850649 * lin[1] + 0.1430804 * lin[2];
    let y = 0.2225045 * lin[0] + 0.7168786 * lin[1] + 0.0606169 * lin[2];
    let z = 0.0139322 * lin[0] + 0.0971045 * lin[1] + 0.7141733 * lin[2];
    let white = [0.96422, 1.0, 0.82521];
    let f =
        |t: f64| if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 };
    let (fx, fy, fz) = (f(x / white[0]), f(y / white[1]), f(z / white[2]));
    let (l, a, b) = (116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz));
    let scale = |v: f64, lo: f64, hi: f64| {
        (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 65535.0).round() as u16
    };
    [scale(l, 0.0, 100.0), scale(a, -128.0, 127.0), scale(b, -128.0, 127.0)]
}
