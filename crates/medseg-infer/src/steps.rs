//! Preprocessing as an explicit list of MONAI transforms ([`Step`]) that records the grid before
//! and after every geometric step ([`GridStep`]), so that a prediction can be carried back to the
//! input grid the way MONAI's `Invertd` does it ([`crate::invert`]).
//!
//! Every step calls medseg-data's functional tier (`spatial`, `intensity`), the same functions
//! its `Transform`s use; the built-in pipelines (`btcv`, `smt`) are step lists too
//! ([`crate::Preprocessing::steps`]). Semantics are MONAI 1.6's (`Orientation`, `Spacing` with
//! `diagonal=False`, `align_corners=False`, `ScaleIntensityRange`, `CropForeground` with the
//! default `select_fn` `x > 0`, `NormalizeIntensity`).
use medseg_data::spatial::{self, Interp, Padding};
use medseg_data::{Affine, Sample, Volume, intensity};

use crate::{Error, Result};

/// One deterministic preprocessing transform, with MONAI's argument names.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "transform", rename_all = "snake_case")]
pub enum Step {
    /// `Orientation(axcodes)`: axis permutation and flips (exact; inverted exactly).
    Orientation {
        /// Target axis codes, e.g. `RAS`.
        axcodes: String,
    },
    /// `Spacing(pixdim, mode, padding_mode)`: resampling onto the grid of `pixdim` (mm) that keeps
    /// the first corner; inverted by resampling back with the same `mode` and padding.
    Spacing {
        /// Target voxel size (mm).
        pixdim: [f64; 3],
        /// `bilinear` (trilinear on 3-D) or `nearest`.
        mode: Interp,
        /// `padding_mode` (MONAI's default `border`).
        padding: Padding,
    },
    /// `ScaleIntensityRange(a_min, a_max, b_min, b_max, clip)`.
    ScaleIntensityRange {
        /// Input low.
        a_min: f32,
        /// Input high.
        a_max: f32,
        /// Output low.
        b_min: f32,
        /// Output high.
        b_max: f32,
        /// Clip to `[b_min, b_max]`.
        clip: bool,
    },
    /// `CropForeground(select_fn = x > 0, margin, allow_smaller, k_divisible)`; inverted by
    /// padding back with zeros (MONAI's `BorderPad`). A volume without foreground is left as is.
    CropForeground {
        /// Margin (voxels) per axis.
        margin: [usize; 3],
        /// Clip the grown box to the volume.
        allow_smaller: bool,
        /// Round the box up to a multiple of this per axis.
        k_divisible: [usize; 3],
    },
    /// `NormalizeIntensity(subtrahend, divisor, nonzero)`: `(x − mean) / std` (population std,
    /// 1 when 0), over the non-zero voxels only when `nonzero`.
    NormalizeIntensity {
        /// Fixed subtrahend instead of the mean.
        subtrahend: Option<f32>,
        /// Fixed divisor instead of the std.
        divisor: Option<f32>,
        /// Statistics and change restricted to non-zero voxels.
        nonzero: bool,
    },
}

/// How a recorded geometric step is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inverse {
    /// An integer index map (orientation, crop, pad); voxels outside the later grid read 0.
    Exact,
    /// Resampling with this interpolation and padding (spacing).
    Resample(Interp, Padding),
}

/// The grid before and after one geometric step of the preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub struct GridStep {
    /// Affine and shape before the step.
    pub from: (Affine, [usize; 3]),
    /// Affine and shape after the step.
    pub to: (Affine, [usize; 3]),
    /// How the step is undone.
    pub inverse: Inverse,
}

impl Step {
    /// MONAI's name of the transform, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Orientation { .. } => "Orientation",
            Step::Spacing { .. } => "Spacing",
            Step::ScaleIntensityRange { .. } => "ScaleIntensityRange",
            Step::CropForeground { .. } => "CropForeground",
            Step::NormalizeIntensity { .. } => "NormalizeIntensity",
        }
    }

    /// Checks the arguments.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(format!("{}: {why}", self.name())));
        match self {
            Step::Orientation { axcodes } => {
                if medseg_data::affine::axcodes_to_ornt(axcodes).is_none() {
                    return bad(format!("axcodes {axcodes:?}: need one of L/R, P/A, I/S each"));
                }
            }
            Step::Spacing { pixdim, .. } => {
                if pixdim.iter().any(|p| !(*p > 0.0 && p.is_finite())) {
                    return bad(format!("pixdim {pixdim:?} must be positive"));
                }
            }
            Step::ScaleIntensityRange { a_min, a_max, b_min, b_max, .. } => {
                if a_min == a_max || [a_min, a_max, b_min, b_max].iter().any(|v| !v.is_finite()) {
                    return bad(format!("a_min {a_min} and a_max {a_max} must differ (finite)"));
                }
            }
            Step::CropForeground { k_divisible, .. } => {
                if k_divisible.contains(&0) {
                    return bad(format!("k_divisible {k_divisible:?} must be ≥ 1"));
                }
            }
            Step::NormalizeIntensity { subtrahend, divisor, .. } => {
                if subtrahend.is_some_and(|v| !v.is_finite())
                    || divisor.is_some_and(|v| !v.is_finite())
                {
                    return bad("subtrahend and divisor must be finite".into());
                }
            }
        }
        Ok(())
    }

    /// One line for `medseg info`.
    pub fn describe(&self) -> String {
        match self {
            Step::Orientation { axcodes } => format!("Orientation {axcodes}"),
            Step::Spacing { pixdim, mode, padding } => {
                format!("Spacing {pixdim:?} mm ({}, {padding:?} padding)", interp_name(*mode))
            }
            Step::ScaleIntensityRange { a_min, a_max, b_min, b_max, clip } => format!(
                "ScaleIntensityRange [{a_min}, {a_max}] → [{b_min}, {b_max}]{}",
                if *clip { ", clipped" } else { "" }
            ),
            Step::CropForeground { margin, allow_smaller, k_divisible } => format!(
                "CropForeground (x > 0, margin {margin:?}, allow_smaller {allow_smaller}, \
                 k_divisible {k_divisible:?})"
            ),
            Step::NormalizeIntensity { subtrahend, divisor, nonzero } => {
                let opt = |v: &Option<f32>, d: &str| v.map_or(d.to_string(), |v| v.to_string());
                format!(
                    "NormalizeIntensity (subtract {}, divide by {}{})",
                    opt(subtrahend, "mean"),
                    opt(divisor, "std"),
                    if *nonzero { ", non-zero voxels" } else { "" }
                )
            }
        }
    }

    /// Applies the step to the image of `s` (a label map, if any, follows geometric steps with
    /// nearest-neighbour sampling).
    pub fn apply(&self, s: Sample) -> Result<Sample> {
        self.validate()?;
        Ok(match self {
            Step::Orientation { axcodes } => {
                s.map_spatial(|v| spatial::orient(v, axcodes), |v| spatial::orient(v, axcodes))?
            }
            Step::Spacing { pixdim, mode, padding } => {
                let (affine, shape) =
                    spatial::spacing_grid(&s.image.affine, s.image.shape(), *pixdim)?;
                s.map_spatial(
                    |v| spatial::resample_to_grid(v, &affine, shape, *mode, *padding, |x| x as f32),
                    |v| {
                        spatial::resample_to_grid(
                            v,
                            &affine,
                            shape,
                            Interp::Nearest,
                            *padding,
                            |x| x as u8,
                        )
                    },
                )?
            }
            Step::ScaleIntensityRange { a_min, a_max, b_min, b_max, clip } => {
                let mut s = s;
                let data = s.image.data_mut();
                intensity::scale_intensity_range(data, *a_min, *a_max, *b_min, *b_max, *clip);
                s
            }
            Step::CropForeground { margin, allow_smaller, k_divisible } => {
                let fg = spatial::bounding_box(&s.image, |v| v > 0.0);
                let shape = s.image.shape();
                match spatial::foreground_box(fg, shape, *margin, *allow_smaller, *k_divisible) {
                    None => s,
                    Some((start, size)) => s.map_spatial(
                        |v| spatial::crop(v, start, size, 0.0),
                        |v| spatial::crop(v, start, size, 0),
                    )?,
                }
            }
            Step::NormalizeIntensity { subtrahend, divisor, nonzero } => {
                let mut s = s;
                normalize_intensity(s.image.data_mut(), *subtrahend, *divisor, *nonzero);
                s
            }
        })
    }

    /// How the step is undone, for geometric steps.
    pub fn inverse(&self) -> Option<Inverse> {
        match self {
            Step::Orientation { .. } | Step::CropForeground { .. } => Some(Inverse::Exact),
            Step::Spacing { mode, padding, .. } => Some(Inverse::Resample(*mode, *padding)),
            Step::ScaleIntensityRange { .. } | Step::NormalizeIntensity { .. } => None,
        }
    }

    /// The target spacing of a `Spacing` step.
    pub fn pixdim(&self) -> Option<[f64; 3]> {
        match self {
            Step::Spacing { pixdim, .. } => Some(*pixdim),
            _ => None,
        }
    }
}

impl medseg_data::Transform for Step {
    fn apply(&self, s: Sample, _rng: &mut dyn rand::RngCore) -> medseg_data::Result<Sample> {
        Step::apply(self, s).map_err(|e| match e {
            Error::Data(d) => d,
            other => medseg_data::Error::InvalidArgument(other.to_string()),
        })
    }
}

/// MONAI's spelling of an interpolation mode.
pub fn interp_name(i: Interp) -> &'static str {
    match i {
        Interp::Linear => "bilinear",
        Interp::Nearest => "nearest",
    }
}

/// MONAI `NormalizeIntensity` on one channel, in f32 with f64 statistics.
pub fn normalize_intensity(
    data: &mut [f32],
    subtrahend: Option<f32>,
    divisor: Option<f32>,
    nonzero: bool,
) {
    let selected = |v: f32| !nonzero || v != 0.0;
    let (mut n, mut sum) = (0usize, 0f64);
    for &v in data.iter().filter(|v| selected(**v)) {
        n += 1;
        sum += f64::from(v);
    }
    if n == 0 {
        return;
    }
    let mean = sum / n as f64;
    let var =
        data.iter().filter(|v| selected(**v)).map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>()
            / n as f64;
    let sub = subtrahend.unwrap_or(mean as f32);
    let div = divisor.unwrap_or(var.sqrt() as f32);
    let div = if div == 0.0 { 1.0 } else { div };
    for v in data.iter_mut().filter(|v| selected(**v)) {
        *v = (*v - sub) / div;
    }
}

/// Applies `steps` in order, recording the grid of every geometric step that changed it.
pub fn apply_steps(mut s: Sample, steps: &[Step]) -> Result<(Sample, Vec<GridStep>)> {
    let mut trace = Vec::new();
    for step in steps {
        let from = (s.image.affine, s.image.shape());
        s = step.apply(s)?;
        let to = (s.image.affine, s.image.shape());
        if let Some(inverse) = step.inverse()
            && (from.1 != to.1 || from.0.max_abs_diff(&to.0) > 0.0)
        {
            trace.push(GridStep { from, to, inverse });
        }
    }
    Ok((s, trace))
}

/// The grid a volume ends on after the steps of `trace` (or `start` when none).
pub fn final_grid(start: (&Affine, [usize; 3]), trace: &[GridStep]) -> (Affine, [usize; 3]) {
    trace.last().map_or((*start.0, start.1), |g| g.to)
}

/// A volume on the grid of `v` with `data` (shape checked).
pub fn like<T: Copy, U: Copy>(v: &Volume<T>, data: Vec<U>) -> Result<Volume<U>> {
    let shape = v.shape();
    v.with_data(data).ok_or_else(|| Error::Shape {
        what: "volume data".into(),
        expected: format!("{} voxels", shape.iter().product::<usize>()),
        got: shape.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_intensity_matches_the_formula() {
        let mut d = vec![0.0f32, 1.0, 2.0, 3.0, 0.0];
        normalize_intensity(&mut d, None, None, true);
        // non-zero 1, 2, 3: mean 2, population std sqrt(2/3).
        let s = (2.0f64 / 3.0).sqrt() as f32;
        assert_eq!(d, vec![0.0, -1.0 / s, 0.0, 1.0 / s, 0.0]);
        let mut c = vec![5.0f32; 4];
        normalize_intensity(&mut c, None, None, false);
        assert_eq!(c, vec![0.0; 4], "std 0 divides by 1");
        let mut f = vec![2.0f32, 4.0];
        normalize_intensity(&mut f, Some(1.0), Some(0.5), false);
        assert_eq!(f, vec![2.0, 6.0]);
    }

    #[test]
    fn steps_record_geometric_changes_only() {
        // Foreground (5) in [1, 2) × [1, 3) × [1, 4), background −5.
        let v = Volume::from_fn([3, 4, 5], Affine::from_diagonal([-2.0, 2.0, 3.0]), |i, j, k| {
            if i == 1 && (1..3).contains(&j) && (1..4).contains(&k) { 5.0f32 } else { -5.0 }
        });
        let s = Sample::new(v, None).expect("sample");
        let steps = [
            Step::Orientation { axcodes: "RAS".into() },
            Step::ScaleIntensityRange {
                a_min: 0.0,
                a_max: 10.0,
                b_min: 0.0,
                b_max: 1.0,
                clip: true,
            },
            Step::CropForeground { margin: [0; 3], allow_smaller: true, k_divisible: [1; 3] },
        ];
        let (out, trace) = apply_steps(s, &steps).expect("apply");
        assert_eq!(trace.len(), 2, "{trace:?}");
        assert_eq!(trace[0].inverse, Inverse::Exact);
        assert_eq!(trace[1].to.1, out.image.shape());
        assert_eq!(out.image.shape(), [1, 2, 3]);
        assert!(out.image.data().iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
