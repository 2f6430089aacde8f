//! Folder evaluation: prediction folder vs ground-truth folder of NIfTI label maps, paired by file
//! name, with a progress bar. Also the minimal NIfTI label-map reader it needs (the data crate is
//! deliberately not a dependency: this crate stays a leaf).
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nifti::{NiftiObject, NiftiType, ReaderOptions};

use crate::error::{Error, Result};
use crate::metric::{MetricsConfig, SegmentationMetric};
use crate::report::Report;

/// A label map read from NIfTI, in the file's storage order.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    /// Labels, C-order over `dims` (that is, NIfTI x fastest).
    pub data: Vec<u16>,
    /// `[nz, ny, nx]`: NIfTI `dim[3], dim[2], dim[1]`.
    pub dims: [usize; 3],
    /// `[dz, dy, dx]`: NIfTI `pixdim[3], pixdim[2], pixdim[1]`.
    pub spacing: [f64; 3],
}

/// Reads a 3-D NIfTI label map (any integer or float type with integral values in 0..=65535,
/// `scl_slope`/`scl_inter` applied); errors name the file.
pub fn read_label_map(path: &Path) -> Result<LabelMap> {
    let bad = |message: String| Error::NotALabelMap { path: path.to_path_buf(), message };
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|source| Error::Nifti { path: path.to_path_buf(), source })?;
    let h = obj.header().clone();
    let ndim = usize::from(h.dim[0]);
    if !(3..=7).contains(&ndim) || h.dim[4..=ndim].iter().any(|&d| d != 1) {
        return Err(bad(format!(
            "expected a 3-D volume, header dim is {:?}",
            &h.dim[..=ndim.min(7)]
        )));
    }
    let dims = [usize::from(h.dim[3]), usize::from(h.dim[2]), usize::from(h.dim[1])];
    let spacing = [h.pixdim[3], h.pixdim[2], h.pixdim[1]].map(|s| f64::from(s).abs());
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(bad(format!("invalid pixdim spacing {spacing:?}")));
    }
    let dtype =
        h.data_type().map_err(|source| Error::Nifti { path: path.to_path_buf(), source })?;
    let vol = obj.into_volume();
    let nerr = |source| Error::Nifti { path: path.to_path_buf(), source };
    let values: Vec<f64> = match dtype {
        NiftiType::Uint8 => cast(vol.into_nifti_typed_data::<u8>().map_err(nerr)?),
        NiftiType::Int8 => cast(vol.into_nifti_typed_data::<i8>().map_err(nerr)?),
        NiftiType::Uint16 => cast(vol.into_nifti_typed_data::<u16>().map_err(nerr)?),
        NiftiType::Int16 => cast(vol.into_nifti_typed_data::<i16>().map_err(nerr)?),
        NiftiType::Uint32 => cast(vol.into_nifti_typed_data::<u32>().map_err(nerr)?),
        NiftiType::Int32 => cast(vol.into_nifti_typed_data::<i32>().map_err(nerr)?),
        NiftiType::Float32 => cast(vol.into_nifti_typed_data::<f32>().map_err(nerr)?),
        NiftiType::Float64 => vol.into_nifti_typed_data::<f64>().map_err(nerr)?,
        other => return Err(bad(format!("unsupported label datatype {other:?}"))),
    };
    let expected: usize = dims.iter().product();
    if values.len() != expected {
        return Err(bad(format!("{} voxels stored, header dims need {expected}", values.len())));
    }
    let (slope, inter) = (f64::from(h.scl_slope), f64::from(h.scl_inter));
    let scale = slope != 0.0 && (slope != 1.0 || inter != 0.0);
    let mut data = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let v = if scale { v * slope + inter } else { v };
        if !((0.0..=65535.0).contains(&v) && v.fract() == 0.0) {
            return Err(bad(format!("voxel {i} holds {v}, not a label in 0..=65535")));
        }
        data.push(v as u16);
    }
    Ok(LabelMap { data, dims, spacing })
}

fn cast<T: Into<f64>>(v: Vec<T>) -> Vec<f64> {
    v.into_iter().map(Into::into).collect()
}

/// `.nii` / `.nii.gz` files of a folder, sorted by name.
pub fn list_nifti(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_file() && case_name(&p).is_some() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// File name without `.nii` / `.nii.gz`; `None` for other files.
pub fn case_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii"))?;
    Some(stem.to_string())
}

/// Scores every ground-truth file of `gt_dir` against the file of the same name in `pred_dir`.
///
/// Shapes and spacings must agree (spacing to 1e-4 relative); a missing prediction is an error. Cases
/// are read and scored one at a time (classes in parallel), so memory stays at one pair. The
/// progress bar is drawn on stderr when `progress` is true.
pub fn eval_folders(
    pred_dir: &Path,
    gt_dir: &Path,
    cfg: &MetricsConfig,
    progress: bool,
) -> Result<Report> {
    let gts = list_nifti(gt_dir)?;
    if gts.is_empty() {
        return Err(Error::NoCases { path: gt_dir.to_path_buf() });
    }
    let pairs: Vec<(String, PathBuf, PathBuf)> = gts
        .into_iter()
        .map(|gt| {
            let file = gt.file_name().map(PathBuf::from).unwrap_or_default();
            let pred = pred_dir.join(file);
            let name = case_name(&gt).unwrap_or_default();
            if pred.is_file() {
                Ok((name, pred, gt))
            } else {
                Err(Error::MissingPrediction { gt, pred })
            }
        })
        .collect::<Result<_>>()?;
    let mut metric = SegmentationMetric::new(cfg.clone())?;
    let bar = ProgressBar::new(pairs.len() as u64);
    if progress {
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix("eval");
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    for (name, pred_path, gt_path) in &pairs {
        bar.set_message(name.clone());
        let pred = read_label_map(pred_path)?;
        let gt = read_label_map(gt_path)?;
        let context = format!(" ({} vs {})", pred_path.display(), gt_path.display());
        if pred.dims != gt.dims {
            return Err(Error::ShapeMismatch { pred: pred.dims, gt: gt.dims, context });
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0);
        if !pred.spacing.iter().zip(&gt.spacing).all(|(&a, &b)| close(a, b)) {
            return Err(Error::SpacingMismatch { pred: pred.spacing, gt: gt.spacing, context });
        }
        metric.update_named(name, &pred.data, &gt.data, gt.dims, gt.spacing).map_err(
            |e| match e {
                Error::LabelOutOfRange { what, label, index, num_classes } => Error::NotALabelMap {
                    path: if what == "prediction" { pred_path.clone() } else { gt_path.clone() },
                    message: format!(
                        "label {label} at voxel {index} is not below num_classes {num_classes}"
                    ),
                },
                other => other,
            },
        )?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(metric.compute())
}
