//! Decoding the chosen series into a `Volume<f32>` in Hounsfield units, and the [`SeriesInfo`] a
//! DICOM SEG needs later.
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use medseg_data::Volume;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::geometry::build_grid;
use crate::input::Limits;
use crate::instance::{Instance, PatientStudy, PixelDescription, parse_full};
use crate::series::Scan;

/// Files read and decoded in parallel at a time. Their bytes (64 × 512 KiB for a 512 × 512 CT)
/// and, for compressed files, their decoded slices in f32 are held until the chunk has been
/// written into the volume.
const DECODE_CHUNK: usize = 64;

/// Slices transposed into the volume together (the tile of one task is this many rows of a
/// slice: 64 × 528 f32 for a 512-column CT).
const SLICE_GROUP: usize = 64;

/// Rows `j` of the volume filled by one task when slices are transposed into it.
const ROWS_PER_TASK: usize = 8;

/// How a frame's stored values are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SampleFormat {
    /// BitsAllocated / 8: 1, 2 or 4.
    bytes: usize,
    /// BitsStored, 1..=8 × `bytes`: the value is the low `stored` bits.
    stored: u32,
    /// PixelRepresentation 1: the stored bits are two's complement.
    signed: bool,
    /// Byte order of the samples (little endian for files read in place, the machine's order for
    /// frames decoded by dicom-pixeldata).
    little_endian: bool,
}

/// A file's pixels, once read and checked.
enum FilePixels {
    /// Uncompressed little endian: the PixelData value is `range` of the file's bytes, frame
    /// after frame.
    InPlace { format: SampleFormat, range: Range<usize> },
    /// Decoded by dicom-pixeldata and rescaled: `(k, HU in row-major [rows, columns])` per frame.
    Decoded(Vec<(usize, Vec<f32>)>),
}

/// One slice's pixels on their way into the volume.
enum SliceData<'a> {
    /// Stored values in the file's bytes, with the slice's rescale.
    Stored { bytes: &'a [u8], format: SampleFormat, rescale: Rescale },
    /// Already in HU.
    Hu(Vec<f32>),
}

/// Slice `k` of the volume, row-major `[rows, columns]`.
struct Slice<'a> {
    k: usize,
    data: SliceData<'a>,
}

/// One slice of the volume and the image it came from, for references from derived objects.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SliceRef {
    /// SOPClassUID of the source image.
    pub sop_class_uid: String,
    /// SOPInstanceUID of the source image.
    pub sop_instance_uid: String,
    /// 1-based frame number within a multi-frame source, `None` for single-frame images.
    pub frame_number: Option<u32>,
    /// ImagePositionPatient of the slice (LPS, mm).
    pub position: [f64; 3],
    /// The file it was read from.
    pub file: String,
}

/// What a DICOM series was, beyond its voxels: the identifiers and attributes that a DICOM SEG
/// of it must reference or copy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesInfo {
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// SeriesInstanceUID.
    pub series_instance_uid: String,
    /// FrameOfReferenceUID (empty when the images had none).
    pub frame_of_reference_uid: String,
    /// Modality.
    pub modality: String,
    /// SeriesDescription.
    pub series_description: String,
    /// SeriesNumber.
    pub series_number: Option<i64>,
    /// Patient and study attributes to copy.
    pub patient: PatientStudy,
    /// Rows and Columns of each slice.
    pub rows: u32,
    /// Columns of each slice.
    pub columns: u32,
    /// ImageOrientationPatient (LPS).
    pub image_orientation: [f64; 6],
    /// PixelSpacing `(row, column)` in mm.
    pub pixel_spacing: [f64; 2],
    /// Distance between slices in mm.
    pub slice_spacing: f64,
    /// SliceThickness as the images state it, when they do.
    pub slice_thickness: Option<f64>,
    /// The slices in volume order: `slices[k]` is the volume's slice `k`.
    pub slices: Vec<SliceRef>,
    /// Transfer syntax UIDs of the source files.
    pub transfer_syntaxes: Vec<String>,
}

/// A decoded series.
#[derive(Debug, Clone)]
pub struct DicomVolume {
    /// Voxels in HU (RescaleSlope/Intercept applied per slice), NIfTI axes `(column, row, slice)`.
    pub volume: Volume<f32>,
    /// Where it came from.
    pub info: SeriesInfo,
}

/// Reads the series chosen by [`Scan::choose`] (or `series`) from a folder, zip or file.
pub fn read_dicom(
    path: impl AsRef<Path>,
    series: Option<&str>,
    limits: Limits,
) -> Result<DicomVolume> {
    let mut scan = Scan::open(path, limits)?;
    let uid = scan.choose(series)?.series_instance_uid.clone();
    scan.load(&uid)
}

/// The volume as int16 when every voxel is an integer in the int16 range (CT in HU usually is).
pub fn to_i16_exact(v: &Volume<f32>) -> Option<Volume<i16>> {
    let fits = v
        .data()
        .iter()
        .all(|&x| x.fract() == 0.0 && (i16::MIN as f32..=i16::MAX as f32).contains(&x));
    fits.then(|| v.map(|x| x as i16))
}

impl Scan {
    /// Decodes series `uid`: checks the grid, decodes every slice, applies the rescale.
    ///
    /// Uncompressed little-endian files are not parsed again: their PixelData value is read where
    /// the header pass found it (after checking that the element header is still there) and
    /// converted straight into the volume. Other transfer syntaxes are parsed and decoded by
    /// dicom-rs.
    pub fn load(&mut self, uid: &str) -> Result<DicomVolume> {
        self.load_with(uid, true)
    }

    /// [`Scan::load`]; `in_place` false sends every file through dicom-pixeldata (the tests
    /// compare both ways).
    pub(crate) fn load_with(&mut self, uid: &str, in_place: bool) -> Result<DicomVolume> {
        let keys = self.slice_keys(uid);
        if keys.is_empty() {
            return Err(Error::Selection {
                path: self.path().to_path_buf(),
                message: format!("no series {uid}"),
            });
        }
        let grid = build_grid(uid, &self.instances, &keys)?;
        let limits = self.input.limits();
        let [nx, ny, nz] = grid.shape;
        let first = &self.instances[grid.order[0].inst];
        if nx == 0
            || ny == 0
            || nx as u64 > limits.max_rows_cols as u64
            || ny as u64 > limits.max_rows_cols as u64
        {
            return Err(Error::Limit {
                file: first.file.clone(),
                message: format!(
                    "{ny} rows × {nx} columns is outside 1..={} each",
                    limits.max_rows_cols
                ),
            });
        }
        let voxels = nx as u64 * ny as u64 * nz as u64;
        if voxels > limits.max_voxels {
            return Err(Error::Limit {
                file: first.file.clone(),
                message: format!(
                    "{nx}×{ny}×{nz} = {voxels} voxels is more than the limit {}",
                    limits.max_voxels
                ),
            });
        }
        // The frames of each file with their slice index k; files in the order of their first
        // slice, so that a chunk of files fills a run of neighbouring slices.
        let mut k_of: BTreeMap<usize, Vec<(usize, usize)>> = Default::default();
        for (k, key) in grid.order.iter().enumerate() {
            k_of.entry(key.inst).or_default().push((key.frame, k));
        }
        let mut files: Vec<(usize, Vec<(usize, usize)>)> = k_of.into_iter().collect();
        files.sort_by_key(|(_, frames)| frames.iter().map(|&(_, k)| k).min());
        // One read buffer per file of a chunk, reused from chunk to chunk.
        let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); DECODE_CHUNK.min(files.len())];
        // Each chunk is read, checked and decoded in parallel (files on disk are read
        // concurrently, zip entries one at a time), then transposed into the volume in parallel;
        // the first error in slice order is the one reported, as with a sequential loop.
        let mut chunks = files.chunks(DECODE_CHUNK);
        let (input, instances) = (&self.input, &self.instances);
        let first_chunk = chunks.next().unwrap_or_default();
        let first_slices =
            load_chunk(input, instances, first_chunk, &mut buffers, [nx, ny], in_place)?;
        // The output is allocated only once the first chunk's pixel data has proven the
        // header's rows × columns (every slice has the same, checked by the grid) and frame
        // counts.
        let mut data = vec![0f32; voxels as usize];
        let mut blocks = row_blocks(&mut data, grid.shape);
        write_slices(&mut blocks, &first_slices, nx, nz);
        drop(first_slices);
        for chunk in chunks {
            let slices = load_chunk(input, instances, chunk, &mut buffers, [nx, ny], in_place)?;
            write_slices(&mut blocks, &slices, nx, nz);
        }
        drop(blocks);
        let volume = Volume::new(data, grid.shape, grid.affine).ok_or_else(|| Error::Geometry {
            series: uid.to_string(),
            message: "voxel count does not match the grid".to_string(),
        })?;
        let multi = |i: usize| self.instances[i].frames.len() > 1;
        let slices = grid
            .order
            .iter()
            .map(|key| {
                let inst = &self.instances[key.inst];
                SliceRef {
                    sop_class_uid: inst.sop_class_uid.clone(),
                    sop_instance_uid: inst.sop_instance_uid.clone(),
                    frame_number: multi(key.inst).then_some(key.frame as u32 + 1),
                    position: inst.frames[key.frame].ipp.unwrap_or_default(),
                    file: inst.file.clone(),
                }
            })
            .collect();
        let mut ts: Vec<String> =
            files.iter().map(|(i, _)| self.instances[*i].transfer_syntax.clone()).collect();
        ts.sort();
        ts.dedup();
        let info = SeriesInfo {
            study_instance_uid: first.study_uid.clone(),
            series_instance_uid: uid.to_string(),
            frame_of_reference_uid: first.frame_of_reference_uid.clone(),
            modality: first.modality.clone(),
            series_description: first.series_description.clone(),
            series_number: first.series_number,
            patient: first.patient.clone(),
            rows: ny as u32,
            columns: nx as u32,
            image_orientation: grid.iop,
            pixel_spacing: grid.pixel_spacing,
            slice_spacing: grid.slice_spacing,
            slice_thickness: first.slice_thickness,
            slices,
            transfer_syntaxes: ts,
        };
        Ok(DicomVolume { volume, info })
    }
}

/// Names of the transfer syntaxes this build decodes (for docs and messages).
pub fn supported_transfer_syntaxes() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = TransferSyntaxRegistry
        .iter()
        .filter(|ts| ts.can_decode_all())
        .map(|ts| (ts.uid().to_string(), ts.name().to_string()))
        .collect();
    v.sort();
    v
}

/// Reads one file's pixels: in place when the header pass found an uncompressed little-endian
/// PixelData value and the bytes still hold it, else parsed and decoded by dicom-rs. Either way
/// the header's image description is checked against the limits and against the pixel data that
/// is actually there before anything is converted.
fn load_file(
    inst: &Instance,
    bytes: &[u8],
    frames: &[(usize, usize)],
    rows: usize,
    cols: usize,
    in_place: bool,
) -> Result<FilePixels> {
    let n_frames = inst.frames.len();
    if let Some(native) = inst.native.filter(|_| in_place)
        && native.value(bytes).is_some()
    {
        let format = sample_format(&inst.pixels, &inst.file, true)?;
        check_length(native.len as u64, rows, cols, n_frames, format.bytes, &inst.file)?;
        return Ok(FilePixels::InPlace {
            format,
            range: native.offset..native.offset + native.len,
        });
    }
    let obj = parse_full(bytes, &inst.file)?;
    check_pixel_data(&obj, &inst.file, rows, cols, n_frames, &inst.transfer_syntax)?;
    let decoded = frames
        .iter()
        .map(|&(frame, k)| {
            let h = &inst.frames[frame];
            let hu = decode_frame(&obj, frame as u32, &inst.file, rows, cols, n_frames > 1, h)?;
            Ok((k, hu))
        })
        .collect::<Result<_>>()?;
    Ok(FilePixels::Decoded(decoded))
}

/// The layout of the stored values: grey-scale (SamplesPerPixel 1), BitsAllocated 8, 16 or 32,
/// 1 ≤ BitsStored ≤ BitsAllocated, PixelRepresentation 0 or 1.
fn sample_format(
    pixels: &PixelDescription,
    file: &str,
    little_endian: bool,
) -> Result<SampleFormat> {
    let unsupported = |message: String| Error::UnsupportedImage { file: file.to_string(), message };
    let int = |value: Option<u32>, name: &str| {
        value.ok_or_else(|| unsupported(format!("{name} missing or not an integer")))
    };
    let spp = int(pixels.samples_per_pixel, "SamplesPerPixel")?;
    if spp != 1 {
        return Err(unsupported(format!("SamplesPerPixel {spp}: only grey-scale images are read")));
    }
    let bits = int(pixels.bits_allocated, "BitsAllocated")?;
    if ![8, 16, 32].contains(&bits) {
        return Err(unsupported(format!("BitsAllocated {bits}: only 8, 16 and 32 are read")));
    }
    let stored = int(pixels.bits_stored, "BitsStored")?;
    if stored == 0 || stored > bits {
        return Err(unsupported(format!("BitsStored {stored} with BitsAllocated {bits}")));
    }
    let representation = int(pixels.pixel_representation, "PixelRepresentation")?;
    if representation > 1 {
        return Err(unsupported(format!("PixelRepresentation {representation}: not 0 or 1")));
    }
    Ok(SampleFormat {
        bytes: bits as usize / 8,
        stored,
        signed: representation == 1,
        little_endian,
    })
}

/// Refuses a PixelData value shorter than rows × columns × frames samples.
fn check_length(
    have: u64,
    rows: usize,
    cols: usize,
    frames: usize,
    bytes: usize,
    file: &str,
) -> Result<()> {
    let need = (rows * cols) as u64 * bytes as u64 * frames as u64;
    if have < need {
        return Err(Error::Limit {
            file: file.to_string(),
            message: format!(
                "PixelData holds {have} bytes, the header needs {need} ({rows} rows × {cols} \
                 columns × {frames} frames × {bytes} bytes)"
            ),
        });
    }
    Ok(())
}

/// Checks a parsed file's transfer syntax and image description against the limits and against
/// the pixel data that is actually there, before anything is decoded.
fn check_pixel_data(
    obj: &DefaultDicomObject,
    file: &str,
    rows: usize,
    cols: usize,
    frames: usize,
    ts_uid: &str,
) -> Result<()> {
    let unsupported = |message: String| Error::UnsupportedImage { file: file.to_string(), message };
    let ts = TransferSyntaxRegistry.get(ts_uid);
    match ts {
        Some(ts) if ts.can_decode_all() => {}
        _ => {
            return Err(Error::UnsupportedTransferSyntax {
                file: file.to_string(),
                uid: ts_uid.to_string(),
                name: ts.map_or("unknown".to_string(), |t| t.name().to_string()),
            });
        }
    }
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<u32>().ok());
    let pixels = PixelDescription {
        samples_per_pixel: int(tags::SAMPLES_PER_PIXEL),
        bits_allocated: int(tags::BITS_ALLOCATED),
        bits_stored: int(tags::BITS_STORED),
        pixel_representation: int(tags::PIXEL_REPRESENTATION),
    };
    let format = sample_format(&pixels, file, cfg!(target_endian = "little"))?;
    let pixel = obj.get(tags::PIXEL_DATA).ok_or_else(|| unsupported("no PixelData".to_string()))?;
    match pixel.value() {
        Value::Primitive(p) => {
            check_length(p.calculate_byte_len() as u64, rows, cols, frames, format.bytes, file)?
        }
        Value::PixelSequence(seq) => {
            let fragments = seq.fragments().len();
            if fragments < frames {
                return Err(Error::Limit {
                    file: file.to_string(),
                    message: format!("{frames} frames but only {fragments} pixel data fragments"),
                });
            }
        }
        Value::Sequence(_) => return Err(unsupported("PixelData is a sequence".to_string())),
    }
    Ok(())
}

/// Decodes one frame with dicom-pixeldata and rescales it to HU, row-major.
fn decode_frame(
    obj: &DefaultDicomObject,
    frame: u32,
    file: &str,
    rows: usize,
    cols: usize,
    multi: bool,
    header: &crate::instance::FrameHeader,
) -> Result<Vec<f32>> {
    let decode_err = |message: String| Error::Decode { file: file.to_string(), message };
    let px = if multi { obj.decode_pixel_data_frame(frame) } else { obj.decode_pixel_data() }
        .map_err(|e| decode_err(e.to_string()))?;
    if px.rows() as usize != rows || px.columns() as usize != cols || px.samples_per_pixel() != 1 {
        return Err(decode_err(format!(
            "decoded {}×{}×{} samples, expected {rows}×{cols}×1",
            px.rows(),
            px.columns(),
            px.samples_per_pixel()
        )));
    }
    let bytes = px.frame_data(0).map_err(|e| decode_err(e.to_string()))?;
    let bits = px.bits_allocated() as usize;
    if ![8, 16, 32].contains(&bits) {
        return Err(decode_err(format!("decoded {bits} bits per sample")));
    }
    let format = SampleFormat {
        bytes: bits / 8,
        stored: px.bits_stored().clamp(1, bits as u16) as u32,
        signed: px.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed,
        little_endian: cfg!(target_endian = "little"),
    };
    let n = rows * cols;
    if bytes.len() < n * format.bytes {
        return Err(decode_err(format!(
            "decoded {} bytes, expected {}",
            bytes.len(),
            n * format.bytes
        )));
    }
    let mut hu = vec![0f32; n];
    let rescale = Rescale::new(format, header.slope, header.intercept);
    stored_to_hu(&bytes[..n * format.bytes], format, rescale, &mut hu);
    Ok(hu)
}

/// How stored values become HU, decided once per slice: `value × slope + intercept` computed in
/// f64 and rounded to f32, or the same numbers by a faster exact route.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rescale {
    /// Integer slope and intercept whose results, and products, stay within ±2^24 and ±2^30 for
    /// every stored value: computed in i32 and converted exactly to f32 (CT's usual slope 1 and
    /// intercept −1024).
    Int { slope: i32, intercept: i32 },
    /// Any other slope and intercept: in f64, rounded to f32.
    Float { slope: f64, intercept: f64 },
}

impl Rescale {
    fn new(format: SampleFormat, slope: f64, intercept: f64) -> Rescale {
        const EXACT_F32: f64 = (1u32 << 24) as f64;
        const PRODUCT: f64 = (1u32 << 30) as f64;
        let stored = format.stored.min(32);
        let (lo, hi) = if format.signed {
            (-(2f64.powi(stored as i32 - 1)), 2f64.powi(stored as i32 - 1) - 1.0)
        } else {
            (0.0, 2f64.powi(stored as i32) - 1.0)
        };
        // A linear function's extremes over [lo, hi] are at its ends.
        let exact = format.bytes <= 2
            && slope.fract() == 0.0
            && intercept.fract() == 0.0
            && [lo, hi].iter().all(|&v| {
                (v * slope).abs() <= PRODUCT && (v * slope + intercept).abs() <= EXACT_F32
            })
            && intercept.abs() <= PRODUCT;
        if exact {
            Rescale::Int { slope: slope as i32, intercept: intercept as i32 }
        } else {
            Rescale::Float { slope, intercept }
        }
    }
}

/// Converts stored values to HU: each value is masked to BitsStored, sign-extended when signed,
/// then rescaled. `src` holds at least `out.len()` samples.
fn stored_to_hu(src: &[u8], format: SampleFormat, rescale: Rescale, out: &mut [f32]) {
    let mask: u32 = if format.stored >= 32 { u32::MAX } else { (1u32 << format.stored) - 1 };
    // Two's complement without a branch: v − 2 × (v & sign bit).
    let sign: u32 = if format.signed { 1u32 << (format.stored - 1) } else { 0 };
    // One loop per layout, so that each is a straight (vectorisable) loop.
    match (format.bytes, format.little_endian) {
        (1, _) => rescale_small(src.iter().map(|&b| u32::from(b)), mask, sign, rescale, out),
        (2, true) => {
            let values = src.as_chunks::<2>().0.iter().map(|c| u32::from(u16::from_le_bytes(*c)));
            rescale_small(values, mask, sign, rescale, out)
        }
        (2, false) => {
            let values = src.as_chunks::<2>().0.iter().map(|c| u32::from(u16::from_be_bytes(*c)));
            rescale_small(values, mask, sign, rescale, out)
        }
        (_, true) => {
            let values = src.as_chunks::<4>().0.iter().map(|c| u32::from_le_bytes(*c));
            rescale_wide(values, mask, sign, rescale, out)
        }
        (_, false) => {
            let values = src.as_chunks::<4>().0.iter().map(|c| u32::from_be_bytes(*c));
            rescale_wide(values, mask, sign, rescale, out)
        }
    }
}

/// [`stored_to_hu`] for 8- and 16-bit samples (values fit i32).
#[inline(always)]
fn rescale_small(
    values: impl Iterator<Item = u32>,
    mask: u32,
    sign: u32,
    rescale: Rescale,
    out: &mut [f32],
) {
    let signed = |v: u32| (v & mask) as i32 - 2 * (v & mask & sign) as i32;
    match rescale {
        Rescale::Int { slope, intercept } => {
            for (o, v) in out.iter_mut().zip(values) {
                *o = (signed(v) * slope + intercept) as f32;
            }
        }
        Rescale::Float { slope, intercept } => {
            for (o, v) in out.iter_mut().zip(values) {
                *o = (f64::from(signed(v)) * slope + intercept) as f32;
            }
        }
    }
}

/// [`stored_to_hu`] for 32-bit samples (always the f64 route: [`Rescale::new`] gives `Float`).
#[inline(always)]
fn rescale_wide(
    values: impl Iterator<Item = u32>,
    mask: u32,
    sign: u32,
    rescale: Rescale,
    out: &mut [f32],
) {
    let (slope, intercept) = match rescale {
        Rescale::Int { slope, intercept } => (f64::from(slope), f64::from(intercept)),
        Rescale::Float { slope, intercept } => (slope, intercept),
    };
    for (o, v) in out.iter_mut().zip(values) {
        let v = v & mask;
        let x = i64::from(v) - 2 * i64::from(v & sign);
        *o = (x as f64 * slope + intercept) as f32;
    }
}

/// Reads, checks and decodes a chunk of files (in parallel) into its slices, sorted by `k`.
fn load_chunk<'b>(
    input: &crate::input::Input,
    instances: &[Instance],
    chunk: &[(usize, Vec<(usize, usize)>)],
    buffers: &'b mut [Vec<u8>],
    [cols, rows]: [usize; 2],
    in_place: bool,
) -> Result<Vec<Slice<'b>>> {
    let loaded: Vec<Result<FilePixels>> = chunk
        .par_iter()
        .zip(buffers.par_iter_mut())
        .map(|((inst_idx, frames), buf)| {
            let inst = &instances[*inst_idx];
            input.read_into(&inst.origin, buf)?;
            load_file(inst, buf, frames, rows, cols, in_place)
        })
        .collect();
    let buffers: &'b [Vec<u8>] = buffers;
    let mut slices = Vec::new();
    for (((inst_idx, frames), pixels), buf) in chunk.iter().zip(loaded).zip(buffers) {
        match pixels? {
            FilePixels::InPlace { format, range } => {
                let inst = &instances[*inst_idx];
                let frame_len = rows * cols * format.bytes;
                for &(frame, k) in frames {
                    let h = &inst.frames[frame];
                    let at = range.start + frame * frame_len;
                    slices.push(Slice {
                        k,
                        data: SliceData::Stored {
                            bytes: &buf[at..at + frame_len],
                            format,
                            rescale: Rescale::new(format, h.slope, h.intercept),
                        },
                    });
                }
            }
            FilePixels::Decoded(hu) => {
                slices.extend(hu.into_iter().map(|(k, hu)| Slice { k, data: SliceData::Hu(hu) }))
            }
        }
    }
    slices.sort_by_key(|s| s.k);
    Ok(slices)
}

/// The volume split for row tasks: `blocks[b][i]` holds the lines along `k` of voxels
/// `(i, j, ·)` for the rows `j` of block `b` (`ROWS_PER_TASK` rows, fewer in the last block), one
/// contiguous part of plane `i`. Borrowed disjointly, so that blocks can be filled in parallel.
fn row_blocks(data: &mut [f32], [nx, ny, nz]: [usize; 3]) -> Vec<Vec<&mut [f32]>> {
    let mut blocks: Vec<Vec<&mut [f32]>> =
        (0..ny.div_ceil(ROWS_PER_TASK)).map(|_| Vec::with_capacity(nx)).collect();
    for plane in data.chunks_exact_mut(ny * nz) {
        for (b, part) in plane.chunks_mut(ROWS_PER_TASK * nz).enumerate() {
            blocks[b].push(part);
        }
    }
    blocks
}

/// Writes `slices` (sorted by `k`, each row-major `[ny, nx]`) into the volume's lines along `k`
/// (`blocks` from [`row_blocks`]), converting stored values to HU on the way.
///
/// One task per block of rows: for each row it converts that row of every slice into a tile
/// (each slice read front to back), then fills each line's run of `k` from the tile (one
/// contiguous run when the slices are neighbours, which is how chunks are formed).
fn write_slices(blocks: &mut [Vec<&mut [f32]>], slices: &[Slice], nx: usize, nz: usize) {
    // Tile rows are padded so that a column of the tile does not map to a few cache sets.
    let stride = nx + 16;
    for group in slices.chunks(SLICE_GROUP) {
        let n = group.len();
        let k0 = group.first().map_or(0, |s| s.k);
        let run = group.iter().enumerate().all(|(s, slice)| slice.k == k0 + s);
        blocks.par_iter_mut().enumerate().for_each(|(b, parts)| {
            let mut tile = vec![0f32; n * stride];
            let rows = parts.first().map_or(0, |p| p.len() / nz);
            for r in 0..rows {
                let j = b * ROWS_PER_TASK + r;
                let pixels = j * nx..(j + 1) * nx;
                for (s, slice) in group.iter().enumerate() {
                    let out = &mut tile[s * stride..s * stride + nx];
                    match &slice.data {
                        SliceData::Stored { bytes, format, rescale } => {
                            let src =
                                &bytes[pixels.start * format.bytes..pixels.end * format.bytes];
                            stored_to_hu(src, *format, *rescale, out);
                        }
                        SliceData::Hu(hu) => out.copy_from_slice(&hu[pixels.clone()]),
                    }
                }
                for (i, part) in parts.iter_mut().enumerate() {
                    let line = &mut part[r * nz..(r + 1) * nz];
                    // Column i of the tile: tile[s * stride + i] for each slice s.
                    let column = &tile[i..=i + (n - 1) * stride];
                    if run {
                        for (s, o) in line[k0..k0 + n].iter_mut().enumerate() {
                            *o = column[s * stride];
                        }
                    } else {
                        for (s, slice) in group.iter().enumerate() {
                            line[slice.k] = column[s * stride];
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_transfer_syntaxes_are_the_pure_rust_set() {
        let ts = supported_transfer_syntaxes();
        for (uid, name) in &ts {
            println!("{uid}\t{name}");
        }
        let has = |uid: &str| ts.iter().any(|(u, _)| u == uid);
        for uid in [
            "1.2.840.10008.1.2",      // implicit VR little endian
            "1.2.840.10008.1.2.1",    // explicit VR little endian
            "1.2.840.10008.1.2.5",    // RLE lossless
            "1.2.840.10008.1.2.4.50", // JPEG baseline
            "1.2.840.10008.1.2.4.70", // JPEG lossless SV1
            "1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
            "1.2.840.10008.1.2.4.91", // JPEG 2000
        ] {
            assert!(has(uid), "{uid} should be decodable");
        }
        assert!(!has("1.2.840.10008.1.2.4.80"), "JPEG-LS needs CharLS (C++), not built");
    }

    /// The stored value as the DICOM standard defines it, written plainly: the low BitsStored
    /// bits, two's complement when signed, then `value × slope + intercept` in f64.
    fn reference(raw: u32, format: SampleFormat, slope: f64, intercept: f64) -> f32 {
        let stored = format.stored;
        let v = if stored >= 32 { raw as u64 } else { raw as u64 & ((1u64 << stored) - 1) };
        let value = if format.signed && (v >> (stored - 1)) & 1 == 1 {
            v as f64 - (1u64 << stored) as f64
        } else {
            v as f64
        };
        (value * slope + intercept) as f32
    }

    fn encode(values: &[u32], bytes: usize, little_endian: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &v in values {
            let le = v.to_le_bytes();
            let mut b = le[..bytes].to_vec();
            if !little_endian {
                b.reverse();
            }
            out.extend(b);
        }
        out
    }

    #[test]
    fn stored_to_hu_matches_the_plain_reference() {
        // Patterns with high garbage bits, sign bits at every position, extremes.
        let mut raw: Vec<u32> = vec![0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FF, 0x800, 0xFFF, 0x1000];
        raw.extend([0x7FFF, 0x8000, 0xF800, 0xFFFF, 0x1_0000, 0x7FFF_FFFF, 0x8000_0000]);
        raw.extend([0xFFFF_FFFF, 0xDEAD_BEEF, 1234, 64_000]);
        raw.extend((0..200u32).map(|i| i.wrapping_mul(2_654_435_761)));
        let rescales = [(1.0, -1024.0), (1.0, 0.0), (2.0, -3.0), (0.5, -1024.25), (1.0, 0.5)];
        let rescales = rescales.iter().chain(&[(3000.0, 0.0), (-1.0, 7.0), (1e-3, 0.0)]);
        for bytes in [1usize, 2, 4] {
            let bits = 8 * bytes as u32;
            for stored in [1, bits / 2, bits - 4, bits - 1, bits] {
                for signed in [false, true] {
                    for little_endian in [true, false] {
                        let format = SampleFormat { bytes, stored, signed, little_endian };
                        let values: Vec<u32> = raw
                            .iter()
                            .map(|&v| if bytes == 4 { v } else { v & ((1 << bits) - 1) })
                            .collect();
                        let src = encode(&values, bytes, little_endian);
                        for &(slope, intercept) in rescales.clone() {
                            let rescale = Rescale::new(format, slope, intercept);
                            let mut out = vec![f32::NAN; values.len()];
                            stored_to_hu(&src, format, rescale, &mut out);
                            for (&v, &o) in values.iter().zip(&out) {
                                let want = reference(v, format, slope, intercept);
                                assert_eq!(
                                    o.to_bits(),
                                    want.to_bits(),
                                    "{format:?} {rescale:?} raw {v:#x}: {o} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_integer_rescale_is_taken_only_where_it_is_exact() {
        let f16 = |stored, signed| SampleFormat { bytes: 2, stored, signed, little_endian: true };
        let int = |format, slope, intercept| {
            matches!(Rescale::new(format, slope, intercept), Rescale::Int { .. })
        };
        assert!(int(f16(16, true), 1.0, -1024.0), "CT's usual rescale");
        assert!(int(f16(12, false), 1.0, -1024.0));
        assert!(int(f16(16, false), 256.0, 0.0), "65535 × 256 < 2^24");
        assert!(!int(f16(16, false), 257.0, 0.0), "65535 × 257 > 2^24");
        assert!(!int(f16(16, true), 1.0, -1024.5), "fractional intercept");
        assert!(!int(f16(16, true), 0.5, 0.0), "fractional slope");
        assert!(!int(f16(16, true), 1.0, 2e7), "results above 2^24");
        let f32bit = SampleFormat { bytes: 4, stored: 32, signed: true, little_endian: true };
        assert!(!int(f32bit, 1.0, 0.0), "32-bit samples take the f64 route");
        // Exhaustively, where the integer route is taken it gives the f64 route's numbers.
        for (format, slope, intercept) in [
            (f16(16, true), 1.0, -1024.0),
            (f16(16, false), 256.0, -8_000_000.0),
            (f16(16, true), -3.0, 5.0),
        ] {
            assert!(int(format, slope, intercept));
            let values: Vec<u32> = (0..=u16::MAX as u32).collect();
            let src = encode(&values, 2, true);
            let mut out = vec![0f32; values.len()];
            stored_to_hu(&src, format, Rescale::new(format, slope, intercept), &mut out);
            let float = Rescale::Float { slope, intercept };
            let mut via_f64 = vec![0f32; values.len()];
            stored_to_hu(&src, format, float, &mut via_f64);
            assert_eq!(out, via_f64, "{format:?} {slope} {intercept}");
        }
    }

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// Reads `path` both ways: PixelData in place, and every file through dicom-pixeldata; also
    /// counts the files whose PixelData value the header pass located and the bytes confirm.
    fn both_ways(path: &Path) -> (DicomVolume, DicomVolume, usize) {
        let mut scan = Scan::open(path, Limits::default()).unwrap();
        let uid = scan.choose(None).unwrap().series_instance_uid.clone();
        let in_place = scan
            .instances
            .iter()
            .filter(|inst| {
                let bytes = scan.input.read(&inst.origin).unwrap();
                inst.native.and_then(|n| n.value(&bytes)).is_some()
            })
            .count();
        let fast = scan.load_with(&uid, true).unwrap();
        let decoded = scan.load_with(&uid, false).unwrap();
        (fast, decoded, in_place)
    }

    #[test]
    fn in_place_reading_equals_dicom_pixeldata_decoding() {
        for case in ["axial", "oblique", "rescale", "multiframe.dcm", "axial.zip", "two_series"] {
            let (fast, decoded, in_place) = both_ways(&fixtures().join(case));
            assert!(in_place > 0, "{case}: explicit VR little endian is read in place");
            assert_eq!(fast.volume.shape(), decoded.volume.shape(), "{case}");
            let same = fast.volume.data().iter().zip(decoded.volume.data());
            assert!(same.clone().all(|(a, b)| a.to_bits() == b.to_bits()), "{case}: voxels");
            assert_eq!(fast.info, decoded.info, "{case}");
        }
        // A compressed series has no PixelData to read in place.
        let (fast, decoded, in_place) = both_ways(&fixtures().join("rle"));
        assert_eq!(in_place, 0);
        assert_eq!(fast.volume.data(), decoded.volume.data());
    }

    /// Rewrites every file of the `axial` fixture into `dir` with `change` applied.
    fn rewritten(dir: &Path, change: impl Fn(&mut DefaultDicomObject)) {
        for entry in std::fs::read_dir(fixtures().join("axial")).unwrap() {
            let path = entry.unwrap().path();
            let Ok(mut obj) = dicom_object::open_file(&path) else { continue };
            change(&mut obj);
            obj.write_to_file(dir.join(path.file_name().unwrap())).unwrap();
        }
    }

    #[test]
    fn implicit_vr_and_masked_unsigned_samples_read_in_place_as_decoded() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let implicit = TransferSyntaxRegistry.get("1.2.840.10008.1.2").unwrap();
        type Change = Box<dyn Fn(&mut DefaultDicomObject)>;
        let cases: [(&str, Change); 2] = [
            ("implicit VR", Box::new(|obj| obj.update_meta(|m| m.set_transfer_syntax(implicit)))),
            (
                "12 of 16 bits, unsigned",
                Box::new(|obj| {
                    obj.put(DataElement::new(
                        tags::BITS_STORED,
                        VR::US,
                        PrimitiveValue::from(12u16),
                    ));
                    obj.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)));
                    let pr = PrimitiveValue::from(0u16);
                    obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, pr));
                }),
            ),
        ];
        for (name, change) in cases {
            let dir = tempfile::tempdir().unwrap();
            rewritten(dir.path(), change);
            let (fast, decoded, in_place) = both_ways(dir.path());
            assert_eq!(in_place, fast.info.slices.len(), "{name}: every file read in place");
            let ts = &fast.info.transfer_syntaxes;
            let want =
                if name == "implicit VR" { "1.2.840.10008.1.2" } else { "1.2.840.10008.1.2.1" };
            assert_eq!(ts, &[want.to_string()], "{name}");
            assert_eq!(fast.volume.data(), decoded.volume.data(), "{name}");
        }
    }

    #[test]
    fn a_file_changed_after_the_scan_is_parsed_again_or_refused() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let dir = tempfile::tempdir().unwrap();
        rewritten(dir.path(), |_| {});
        let want = read_dicom(dir.path(), None, Limits::default()).unwrap();
        let mut scan = Scan::open(dir.path(), Limits::default()).unwrap();
        let uid = scan.choose(None).unwrap().series_instance_uid.clone();
        // Every file grows an element before PixelData: the recorded offsets no longer hold,
        // so each file is parsed again and the voxels are the same.
        rewritten(dir.path(), |obj| {
            let comment = PrimitiveValue::from("moved the pixel data by a few bytes");
            obj.put(DataElement::new(tags::IMAGE_COMMENTS, VR::LT, comment));
        });
        let scan_file = &scan.instances[0];
        let bytes = std::fs::read(match &scan_file.origin {
            crate::input::Origin::File(p) => p.clone(),
            other => panic!("{other:?}"),
        })
        .unwrap();
        assert!(scan_file.native.unwrap().value(&bytes).is_none(), "the layout check notices");
        let got = scan.load(&uid).unwrap();
        assert_eq!(got.volume.data(), want.volume.data());
        // A file cut short after the scan is an error naming it.
        let mut scan = Scan::open(dir.path(), Limits::default()).unwrap();
        let victim = match &scan.instances[1].origin {
            crate::input::Origin::File(p) => p.clone(),
            other => panic!("{other:?}"),
        };
        let bytes = std::fs::read(&victim).unwrap();
        std::fs::write(&victim, &bytes[..bytes.len() - 100]).unwrap();
        let err = scan.load(&uid).expect_err("truncated after the scan");
        let name = victim.file_name().unwrap().to_str().unwrap();
        assert!(err.to_string().contains(name), "{err}");
    }

    #[test]
    fn slices_land_at_their_voxels_in_runs_and_out_of_order() {
        // An odd grid (rows not a multiple of a task's rows), stored 16-bit slices and decoded
        // HU slices mixed; slices written in two interleaved groups (k even, then k odd) and in
        // one run, against a plain loop.
        let [nx, ny, nz] = [37usize, 13, 9];
        let format = SampleFormat { bytes: 2, stored: 16, signed: true, little_endian: true };
        let value =
            |i: usize, j: usize, k: usize| (i * 7 + j * 131 + k * 1009) as i32 % 4000 - 2000;
        let stored: Vec<Vec<u8>> = (0..nz)
            .map(|k| {
                let v: Vec<u32> = (0..nx * ny).map(|p| value(p % nx, p / nx, k) as u32).collect();
                encode(&v, 2, true)
            })
            .collect();
        let slice = |k: usize| Slice {
            k,
            data: if k.is_multiple_of(3) {
                SliceData::Hu((0..nx * ny).map(|p| value(p % nx, p / nx, k) as f32 * 2.0).collect())
            } else {
                SliceData::Stored {
                    bytes: &stored[k],
                    format,
                    rescale: Rescale::new(format, 2.0, 0.0),
                }
            },
        };
        let mut want = vec![0f32; nx * ny * nz];
        for (idx, w) in want.iter_mut().enumerate() {
            let (i, j, k) = (idx / (ny * nz), (idx / nz) % ny, idx % nz);
            *w = value(i, j, k) as f32 * 2.0;
        }
        let groups: [Vec<Vec<usize>>; 2] = [
            vec![(0..nz).collect()],
            vec![(0..nz).step_by(2).collect(), (1..nz).step_by(2).collect()],
        ];
        for group in groups {
            let mut data = vec![f32::NAN; nx * ny * nz];
            let mut blocks = row_blocks(&mut data, [nx, ny, nz]);
            for ks in &group {
                let slices: Vec<Slice> = ks.iter().map(|&k| slice(k)).collect();
                write_slices(&mut blocks, &slices, nx, nz);
            }
            drop(blocks);
            assert_eq!(data, want, "groups {group:?}");
        }
    }

    /// The `axial` fixture with 300 × 280 slices (files larger than the header pass's first read),
    /// each with its own pattern, and `change` applied.
    fn large_series(dir: &Path, change: impl Fn(&mut DefaultDicomObject)) {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let (rows, cols) = (300u16, 280u16);
        rewritten(dir, |obj| {
            let n =
                obj.get(tags::INSTANCE_NUMBER).and_then(|e| e.to_int::<i32>().ok()).unwrap_or(0);
            let px: Vec<i16> = (0..rows as i32 * cols as i32)
                .map(|p| ((p * 7 + n * 1000) % 3000 - 1000) as i16)
                .collect();
            obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)));
            obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)));
            obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::I16(px.into())));
            change(obj);
        });
    }

    #[test]
    fn files_longer_than_the_first_read_are_scanned_from_their_start() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let dir = tempfile::tempdir().unwrap();
        large_series(dir.path(), |_| {});
        let size = std::fs::metadata(dir.path().join("IM0001")).unwrap().len();
        assert!(size > 2 * crate::series::HEADER_BYTES, "{size} bytes");
        let (fast, decoded, in_place) = both_ways(dir.path());
        assert_eq!(fast.volume.shape(), [280, 300, 5]);
        assert_eq!(in_place, 5, "every file read in place");
        assert_eq!(fast.volume.data(), decoded.volume.data());
        // A header longer than the first read (a 100 KB text before PixelData): read whole.
        let long = tempfile::tempdir().unwrap();
        large_series(long.path(), |obj| {
            let text = PrimitiveValue::from("x".repeat(100_000));
            obj.put(DataElement::new(tags::TEXT_VALUE, VR::UT, text));
        });
        let (long_fast, long_decoded, long_in_place) = both_ways(long.path());
        assert_eq!(long_in_place, 5);
        assert_eq!(long_fast.volume.data(), fast.volume.data());
        assert_eq!(long_decoded.volume.data(), fast.volume.data());
        // A PixelData length beyond the file, seen from the first read.
        let liar = dir.path().join("IM0001");
        let mut bytes = std::fs::read(&liar).unwrap();
        let pat = [0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0];
        let at = bytes.windows(8).rposition(|w| w == pat).expect("PixelData header") + 8;
        bytes[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        std::fs::write(&liar, &bytes).unwrap();
        match Scan::open(dir.path(), Limits::default()) {
            Err(Error::Limit { file, message }) => {
                assert!(file.ends_with("IM0001") && message.contains("4294967280"), "{message}")
            }
            other => panic!("expected a limit error, got {other:?}"),
        }
    }
}
