//! Preprocessing for inference: the deterministic validation transforms of a run (the medseg-data
//! preset the trainer validates with) and reading one case through them onto the network grid.
use std::path::Path;

use medseg_data::dataset::{DataItem, load_sample};
use medseg_data::spatial::{Interp, Padding};
use medseg_data::transforms::{self, BtcvConfig, Compose, Meta, Sample, Transform};
use medseg_data::{Affine, Volume, sample_rng};

use crate::steps::{GridStep, Step, apply_steps};
use crate::{Error, Result};

/// Which transform pipeline of medseg-data a run uses (`data.pipeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pipeline {
    /// `btcv_train` / `btcv_val`: Orientation RAS → Spacing `pixdim` → ScaleIntensityRange
    /// `a_min…a_max` → CropForeground.
    Btcv,
    /// `smt_train` / `smt_val` (Swin SMT on TotalSegmentator; uses `roi` only).
    Smt,
    /// The MONAI transforms of `steps`, in order (a MONAI bundle's `preprocessing`).
    Monai,
}

/// The fields of a run's `[data]` table that inference needs (the others, such as the datalist or
/// augmentation probabilities, are training-only and ignored when read from a run's config).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocessing {
    /// Transform pipeline.
    pub pipeline: Pipeline,
    /// Target spacing (mm) of `Spacing` (`btcv`).
    pub pixdim: [f64; 3],
    /// HU mapped to 0 by `ScaleIntensityRange` (`btcv`).
    pub a_min: f32,
    /// HU mapped to 1 by `ScaleIntensityRange` (`btcv`).
    pub a_max: f32,
    /// Training patch size `(D, H, W)` (`smt`: the `k_divisible` of the foreground crop).
    pub roi: [usize; 3],
    /// The transforms of pipeline `monai` (for `btcv`/`smt`: empty, see [`Self::steps`]).
    /// For `monai`, `pixdim`, `a_min` and `a_max` repeat the Spacing and ScaleIntensityRange
    /// steps for display (1 mm and 0…1 when there are none) and `roi` the window's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

impl Preprocessing {
    /// The deterministic pipeline of validation and inference: orientation, spacing, intensity
    /// scaling, foreground crop.
    pub fn transforms(&self) -> Compose {
        match self.pipeline {
            Pipeline::Btcv => transforms::btcv_val(&BtcvConfig {
                pixdim: self.pixdim,
                a_min: self.a_min,
                a_max: self.a_max,
                roi: self.roi,
                num_samples: 1,
                flip_prob: 0.0,
                rot90_prob: 0.0,
                scale_prob: 0.0,
                shift_prob: 0.0,
            }),
            Pipeline::Smt => transforms::smt_val(self.roi),
            Pipeline::Monai => Compose(
                self.steps.iter().map(|s| Box::new(s.clone()) as Box<dyn Transform>).collect(),
            ),
        }
    }

    /// The deterministic pipeline as MONAI steps (the same functions as [`Self::transforms`]),
    /// so that the grid of every step is recorded for resampling back.
    pub fn steps(&self) -> Vec<Step> {
        let ras = || Step::Orientation { axcodes: "RAS".into() };
        match self.pipeline {
            Pipeline::Btcv => vec![
                ras(),
                Step::Spacing {
                    pixdim: self.pixdim,
                    mode: Interp::Linear,
                    padding: Padding::Border,
                },
                Step::ScaleIntensityRange {
                    a_min: self.a_min,
                    a_max: self.a_max,
                    b_min: 0.0,
                    b_max: 1.0,
                    clip: true,
                },
                Step::CropForeground { margin: [0; 3], allow_smaller: true, k_divisible: [1; 3] },
            ],
            Pipeline::Smt => vec![
                ras(),
                Step::ScaleIntensityRange {
                    a_min: -1024.0,
                    a_max: 1024.0,
                    b_min: 0.0,
                    b_max: 1.0,
                    clip: true,
                },
                Step::CropForeground {
                    margin: [0; 3],
                    allow_smaller: false,
                    k_divisible: self.roi,
                },
            ],
            Pipeline::Monai => self.steps.clone(),
        }
    }

    /// The spacing the network sees, when the pipeline resamples (`btcv`).
    pub fn target_spacing(&self) -> Option<[f64; 3]> {
        match self.pipeline {
            Pipeline::Btcv => Some(self.pixdim),
            Pipeline::Smt => None,
            Pipeline::Monai => self.steps.iter().find_map(Step::pixdim),
        }
    }

    /// Checks the ranges of the fields.
    pub fn validate(&self) -> Result<()> {
        if self.pipeline == Pipeline::Monai {
            return self.steps.iter().try_for_each(Step::validate);
        }
        if !self.steps.is_empty() {
            return Err(Error::Config(format!(
                "data.steps is only read by pipeline \"monai\", not {:?}",
                self.pipeline
            )));
        }
        if self.a_min >= self.a_max || !self.a_min.is_finite() || !self.a_max.is_finite() {
            return Err(Error::Config(format!(
                "data.a_min ({}) must be below data.a_max ({})",
                self.a_min, self.a_max
            )));
        }
        if self.pixdim.iter().any(|&p| !(p > 0.0 && p.is_finite())) {
            return Err(Error::Config(format!("data.pixdim {:?} must be positive", self.pixdim)));
        }
        if self.roi.contains(&0) {
            return Err(Error::Config(format!("data.roi {:?} has a zero size", self.roi)));
        }
        Ok(())
    }
}

/// One case on the network grid.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The preprocessed image, C order over `shape`.
    pub data: Vec<f32>,
    /// Network grid shape.
    pub shape: [usize; 3],
    /// Network grid affine.
    pub affine: Affine,
    /// The input's grid (`original_affine`, `original_shape`) and the transforms' records.
    pub meta: Meta,
}

/// Orientation and spacing of an input as read.
#[derive(Debug, Clone, PartialEq)]
pub struct InputGeometry {
    /// nibabel axis codes (`RAS`, `LPS`, …).
    pub axcodes: String,
    /// Voxel spacing (mm).
    pub spacing: [f64; 3],
}

impl InputGeometry {
    fn of(v: &Volume<f32>) -> Self {
        InputGeometry { axcodes: v.axcodes(), spacing: v.spacing() }
    }
}

/// Reads `path` as `f32` (NaN/inf rejected naming the voxel) and applies `transforms`. Also
/// returns the input's orientation and spacing as read.
pub fn prepare(path: &Path, transforms: &Compose) -> Result<(Prepared, InputGeometry)> {
    let sample = load_sample(&DataItem::new(path, None), None, 1e-3)?;
    prepare_sample(sample, path, transforms)
}

/// Reads `path` as `f32` (NaN/inf rejected naming the voxel), as [`prepare`] does before its
/// transforms.
pub fn read_sample(path: &Path) -> Result<Sample> {
    Ok(load_sample(&DataItem::new(path, None), None, 1e-3)?)
}

/// Applies `steps` to an image already read (from `path`, named in errors), recording the grid
/// of every geometric step.
pub fn prepare_steps(
    sample: Sample,
    path: &Path,
    steps: &[Step],
) -> Result<(Prepared, InputGeometry, Vec<GridStep>)> {
    let input = InputGeometry::of(&sample.image);
    let (sample, trace) = apply_steps(sample, steps).map_err(|e| match e {
        Error::Data(d) => Error::Data(d.at_path(path)),
        other => Error::Path(format!("{}: preprocessing: {other}", path.display())),
    })?;
    let (shape, affine) = (sample.image.shape(), sample.image.affine);
    Ok((
        Prepared { data: sample.image.into_data(), shape, affine, meta: sample.meta },
        input,
        trace,
    ))
}

/// Applies `transforms` to an image already read (from `path`, named in errors).
pub fn prepare_sample(
    sample: Sample,
    path: &Path,
    transforms: &Compose,
) -> Result<(Prepared, InputGeometry)> {
    let input = InputGeometry::of(&sample.image);
    // The validation transforms are deterministic: the generator is never drawn from.
    let mut rng = sample_rng(0, 0, 0);
    let sample = transforms.apply(sample, &mut rng)?.into_iter().next().ok_or_else(|| {
        Error::Path(format!("{}: preprocessing produced no volume", path.display()))
    })?;
    let (shape, affine) = (sample.image.shape(), sample.image.affine);
    Ok((Prepared { data: sample.image.into_data(), shape, affine, meta: sample.meta }, input))
}
