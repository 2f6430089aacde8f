//! DICOM series → NIfTI (`medseg convert`), and the series listing (`medseg convert --list`).
use std::path::Path;

use crate::error::{Error, Result};
use crate::input::Limits;
use crate::read::{SeriesInfo, to_i16_exact};
use crate::series::Scan;

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The series written.
    pub info: SeriesInfo,
    /// `[columns, rows, slices]`.
    pub shape: [usize; 3],
    /// Voxel spacing in mm.
    pub spacing: [f64; 3],
    /// nibabel axis codes of the affine, e.g. `LPS`.
    pub axcodes: String,
    /// `int16` when every HU value fits, else `float32`.
    pub dtype: &'static str,
    /// Files looked at and files skipped (not DICOM, DICOMDIR, no pixel data).
    pub files: usize,
    /// Files skipped.
    pub skipped: usize,
}

/// Reads the series of `input` chosen by `series` (or by [`Scan::choose`]'s rule) and writes it
/// to `output` as NIfTI (gzip for `.nii.gz`), int16 when the HU values fit, atomically.
pub fn convert(
    input: &Path,
    output: &Path,
    series: Option<&str>,
    limits: Limits,
) -> Result<Converted> {
    let mut scan = Scan::open(input, limits)?;
    let uid = scan.choose(series)?.series_instance_uid.clone();
    let got = scan.load(&uid)?;
    let write_err =
        |e: medseg_data::Error| Error::Write { path: output.to_path_buf(), message: e.to_string() };
    let dtype = match to_i16_exact(&got.volume) {
        Some(v) => {
            medseg_data::write_volume(output, &v).map_err(write_err)?;
            "int16"
        }
        None => {
            medseg_data::write_volume(output, &got.volume).map_err(write_err)?;
            "float32"
        }
    };
    Ok(Converted {
        shape: got.volume.shape(),
        spacing: got.volume.spacing(),
        axcodes: got.volume.axcodes(),
        info: got.info,
        dtype,
        files: scan.files(),
        skipped: scan.skipped(),
    })
}

/// A plain-text table of the series of a scan, the one chosen by default marked with `*`.
pub fn listing(scan: &Scan) -> String {
    let chosen = scan.choose(None).ok().map(|s| s.series_instance_uid.clone());
    let mut out = format!(
        "{}: {} files, {} skipped (not DICOM images), {} series\n",
        scan.path().display(),
        scan.files(),
        scan.skipped(),
        scan.series().len()
    );
    for s in scan.series() {
        let mark =
            if chosen.as_deref() == Some(s.series_instance_uid.as_str()) { "*" } else { " " };
        let sp = |v: Option<f64>| v.map_or("?".to_string(), |x| format!("{x:.3}"));
        out.push_str(&format!(
            "{mark} {}  {}  #{}  \"{}\"  {} slices  {}×{}×{}  spacing {}×{}×{} mm{}{}\n",
            s.series_instance_uid,
            if s.modality.is_empty() { "?" } else { &s.modality },
            s.series_number.map_or("-".to_string(), |n| n.to_string()),
            s.description,
            s.slices,
            s.dims[0],
            s.dims[1],
            s.dims[2],
            sp(s.spacing[0]),
            sp(s.spacing[1]),
            sp(s.spacing[2]),
            if s.localizer { "  [localizer]" } else { "" },
            s.geometry_problem
                .as_ref()
                .map_or(String::new(), |p| format!("\n    not convertible: {p}")),
        ));
    }
    out
}
