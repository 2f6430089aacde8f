//! Folder evaluation: a folder of predicted label maps against a folder of ground-truth label maps,
//! paired by file name. Volumes are read with medseg-data's NIfTI reader (the same hardened reader
//! as training and `predict`); the scores come from medseg-metrics, which works on in-memory label
//! maps only.
//!
//! Prediction and ground truth must lie on the same world grid: equal shape, equal spacing (1e-4
//! relative) and affines that agree element by element within [`AFFINE_TOLERANCE`] (mm), unless
//! [`EvalOptions::ignore_affine`] is set.
use std::path::{Path, PathBuf};

use medseg_data::Affine;
use medseg_data::nifti_io::read_volume;
use medseg_metrics::{MetricsConfig, Report, SegmentationMetric};

use crate::error::AffineMismatch;
use crate::{Error, Result};

/// Largest absolute difference allowed between any two elements of the prediction's and the
/// ground truth's 4×4 affines (mm; the rotation-zoom part in mm per voxel). Far above float32
/// rounding of a header (≈ 1e-5 mm at 200 mm), far below any real shift or flip.
pub const AFFINE_TOLERANCE: f64 = 1e-3;

/// A label map read from NIfTI in medseg-data's axis order (`Volume`: NIfTI i, j, k with k
/// fastest in memory).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    /// Labels, C order over `dims`.
    pub data: Vec<u16>,
    /// `[nx, ny, nz]`: NIfTI `dim[1..=3]`.
    pub dims: [usize; 3],
    /// Voxel spacing along `dims` (mm, from the affine).
    pub spacing: [f64; 3],
    /// Voxel → world (RAS+ mm).
    pub affine: Affine,
}

/// Reads a 3-D NIfTI label map (any integer or float type holding integral values in
/// `0..=65535`, `scl_slope`/`scl_inter` applied) with medseg-data's reader. `what` (`prediction`,
/// `ground truth`) and the file name appear in every error, as one sentence.
pub fn read_label_map(path: &Path, what: &'static str) -> Result<LabelMap> {
    let vol = read_volume::<u16>(path).map_err(|e| {
        let text = e.to_string();
        let prefix = format!("{}: ", path.display());
        let reason = text.strip_prefix(&prefix).unwrap_or(&text).to_string();
        Error::LabelMap { what, path: path.to_path_buf(), reason }
    })?;
    Ok(LabelMap {
        dims: vol.shape(),
        spacing: vol.spacing(),
        affine: vol.affine,
        data: vol.into_data(),
    })
}

/// `.nii` / `.nii.gz` files of a folder (hidden files skipped), sorted by name.
pub fn list_nifti(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::io(dir, source);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_file() && case_name(&p).is_some_and(|n| !n.starts_with('.')) {
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

/// Options of [`eval_folders`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalOptions {
    /// Score pairs whose affines differ (shape and spacing must still agree).
    pub ignore_affine: bool,
}

/// The affine as four lines `[a, b, c, d]` for error messages.
fn affine_text(a: &Affine) -> String {
    let rows: Vec<String> = a.0.iter().map(|r| format!("  {r:?}")).collect();
    rows.join("\n")
}

/// Scores every ground-truth file of `gt_dir` against the file of the same name in `pred_dir`.
///
/// Shapes, spacings (1e-4 relative) and affines ([`AFFINE_TOLERANCE`]) must agree; a missing
/// prediction is an error. Cases are read and scored one at a time (classes in parallel), so
/// memory stays at one pair. `on_case(done, total, name)` is called before each case.
pub fn eval_folders(
    pred_dir: &Path,
    gt_dir: &Path,
    cfg: &MetricsConfig,
    opts: EvalOptions,
    on_case: &mut dyn FnMut(usize, usize, &str),
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
    for (i, (name, pred_path, gt_path)) in pairs.iter().enumerate() {
        on_case(i, pairs.len(), name);
        let pred = read_label_map(pred_path, "prediction")?;
        let gt = read_label_map(gt_path, "ground truth")?;
        let context = format!(" ({} vs {})", pred_path.display(), gt_path.display());
        if pred.dims != gt.dims {
            return Err(medseg_metrics::Error::ShapeMismatch {
                pred: pred.dims,
                gt: gt.dims,
                context,
            }
            .into());
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0);
        if !pred.spacing.iter().zip(&gt.spacing).all(|(&a, &b)| close(a, b)) {
            return Err(medseg_metrics::Error::SpacingMismatch {
                pred: pred.spacing,
                gt: gt.spacing,
                context,
            }
            .into());
        }
        let diff = pred.affine.max_abs_diff(&gt.affine);
        // NaN differences fail too.
        let same_grid = diff <= AFFINE_TOLERANCE;
        if !opts.ignore_affine && !same_grid {
            return Err(Error::AffineMismatch(Box::new(AffineMismatch {
                pred_path: pred_path.clone(),
                gt_path: gt_path.clone(),
                pred: affine_text(&pred.affine),
                gt: affine_text(&gt.affine),
                diff,
                tol: AFFINE_TOLERANCE,
            })));
        }
        metric.update_named(name, &pred.data, &gt.data, gt.dims, gt.spacing).map_err(
            |e| match e {
                medseg_metrics::Error::LabelOutOfRange { what, label, index, num_classes } => {
                    let (what, path) = if what == "prediction" {
                        ("prediction", pred_path.clone())
                    } else {
                        ("ground truth", gt_path.clone())
                    };
                    Error::LabelMap {
                        what,
                        path,
                        reason: format!(
                            "label {label} at voxel {index} is not below num_classes {num_classes}"
                        ),
                    }
                }
                other => other.into(),
            },
        )?;
    }
    on_case(pairs.len(), pairs.len(), "");
    Ok(metric.compute())
}
