//! Decoding the chosen series into a `Volume<f32>` in Hounsfield units, and the [`SeriesInfo`] a
//! DICOM SEG needs later.
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
use crate::instance::{PatientStudy, parse_full};
use crate::series::Scan;

/// Files parsed and decoded in parallel at a time (decoded slices are f64 until written: 32 slices
/// of 512 × 512 are 64 MiB).
const DECODE_CHUNK: usize = 32;

/// One decoded frame on its way into the volume.
struct Decoded {
    /// Slice index along the normal.
    k: usize,
    /// Stored values, row-major `[rows, columns]`.
    raw: Vec<f64>,
    slope: f64,
    intercept: f64,
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
    pub fn load(&mut self, uid: &str) -> Result<DicomVolume> {
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
        // k of each (instance, frame), in file order.
        let mut k_of: std::collections::BTreeMap<usize, Vec<(usize, usize)>> = Default::default();
        for (k, key) in grid.order.iter().enumerate() {
            k_of.entry(key.inst).or_default().push((key.frame, k));
        }
        let files: Vec<(usize, Vec<(usize, usize)>)> = k_of.into_iter().collect();
        // The output is allocated only once the first file's pixel data has proven the header's
        // rows × columns (every slice has the same, checked by the grid) and its frame count.
        let mut data: Vec<f32> = Vec::new();
        // Files are read in order (a zip archive hands out one entry at a time), then parsed,
        // checked and decoded in parallel, a chunk at a time (bounded memory); the first error in
        // file order is the one reported, as with a sequential loop.
        for chunk in files.chunks(DECODE_CHUNK) {
            let mut blobs = Vec::with_capacity(chunk.len());
            for (inst_idx, _) in chunk {
                blobs.push(self.input.read(&self.instances[*inst_idx].origin)?);
            }
            let instances = &self.instances;
            let decoded: Vec<Result<Vec<Decoded>>> = chunk
                .par_iter()
                .zip(blobs.par_iter())
                .map(|((inst_idx, frames), bytes)| {
                    let inst = &instances[*inst_idx];
                    let obj = parse_full(bytes, &inst.file)?;
                    let n_frames = inst.frames.len();
                    check_pixel_data(&obj, &inst.file, ny, nx, n_frames, &inst.transfer_syntax)?;
                    frames
                        .iter()
                        .map(|&(frame, k)| {
                            let raw =
                                decode_frame(&obj, frame as u32, &inst.file, ny, nx, n_frames > 1)?;
                            let h = &inst.frames[frame];
                            Ok(Decoded { k, raw, slope: h.slope, intercept: h.intercept })
                        })
                        .collect()
                })
                .collect();
            drop(blobs);
            let mut slices = Vec::new();
            for d in decoded {
                slices.extend(d?);
                if data.is_empty() {
                    data = vec![0f32; voxels as usize];
                }
            }
            // [j, i] rows of each slice -> column i of the (i, j, k) C-ordered volume: one
            // i-plane per task, so writes stay within a plane.
            data.par_chunks_mut(ny * nz).enumerate().for_each(|(i, plane)| {
                for s in &slices {
                    for j in 0..ny {
                        plane[j * nz + s.k] = (s.raw[j * nx + i] * s.slope + s.intercept) as f32;
                    }
                }
            });
        }
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

/// Checks the header's image description against the limits and against the pixel data that is
/// actually there, before anything is decoded.
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
    let int = |tag, name: &str| -> Result<u32> {
        obj.get(tag)
            .and_then(|e| e.to_int::<u32>().ok())
            .ok_or_else(|| unsupported(format!("{name} missing or not an integer")))
    };
    let spp = int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    if spp != 1 {
        return Err(unsupported(format!("SamplesPerPixel {spp}: only grey-scale images are read")));
    }
    let bits = int(tags::BITS_ALLOCATED, "BitsAllocated")?;
    if ![8, 16, 32].contains(&bits) {
        return Err(unsupported(format!("BitsAllocated {bits}: only 8, 16 and 32 are read")));
    }
    let stored = int(tags::BITS_STORED, "BitsStored")?;
    if stored == 0 || stored > bits {
        return Err(unsupported(format!("BitsStored {stored} with BitsAllocated {bits}")));
    }
    let pixel = obj.get(tags::PIXEL_DATA).ok_or_else(|| unsupported("no PixelData".to_string()))?;
    let need = (rows * cols) as u64 * (bits / 8) as u64 * frames as u64;
    match pixel.value() {
        Value::Primitive(p) => {
            let have = p.calculate_byte_len() as u64;
            if have < need {
                return Err(Error::Limit {
                    file: file.to_string(),
                    message: format!(
                        "PixelData holds {have} bytes, the header needs {need} ({rows} rows × {cols} \
                         columns × {frames} frames × {} bytes)",
                        bits / 8
                    ),
                });
            }
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

/// Decodes one frame to its stored values (sign-extended from BitsStored), row-major.
fn decode_frame(
    obj: &DefaultDicomObject,
    frame: u32,
    file: &str,
    rows: usize,
    cols: usize,
    multi: bool,
) -> Result<Vec<f64>> {
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
    let stored = px.bits_stored().clamp(1, bits as u16) as u32;
    let n = rows * cols;
    if bytes.len() < n * bits / 8 {
        return Err(decode_err(format!(
            "decoded {} bytes, expected {}",
            bytes.len(),
            n * bits / 8
        )));
    }
    let signed = px.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let mask: u64 = if stored >= 64 { u64::MAX } else { (1u64 << stored) - 1 };
    let interpret = |raw: u64| -> f64 {
        let v = raw & mask;
        if signed && (v >> (stored - 1)) & 1 == 1 {
            v as f64 - (1u64 << stored) as f64
        } else {
            v as f64
        }
    };
    let out = match bits {
        8 => bytes[..n].iter().map(|&b| interpret(b as u64)).collect(),
        16 => bytes[..2 * n]
            .chunks_exact(2)
            .map(|c| interpret(u16::from_ne_bytes([c[0], c[1]]) as u64))
            .collect(),
        _ => bytes[..4 * n]
            .chunks_exact(4)
            .map(|c| interpret(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) as u64))
            .collect(),
    };
    Ok(out)
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
}
