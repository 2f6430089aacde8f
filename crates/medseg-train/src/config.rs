//! Run configuration in two stages (house style §6): [`TrainConfig`] is what the user wrote
//! (TOML, every field documented, unknown fields rejected); [`TrainConfig::resolve`] checks the
//! cross-field rules and produces a [`TrainPlan`] with absolute paths and the run folder.
//!
//! Embedded presets: `phantom` (the default of `cargo xtask train`, tiny Swin UNETR), `phantom_unet`, `btcv`, `msd_spleen`,
//! `totalseg_smt` — the files under `crates/medseg-train/configs/`.
use std::path::{Path, PathBuf};

use medseg_data::Compose;
use medseg_data::transforms::{self, BtcvConfig};
use medseg_infer::{InferenceConfig, Preprocessing};

use crate::loss::{DiceCeConfig, LossKind};
use crate::model::ModelConfig;
use crate::optim::AdamWConfig;
use crate::precision::Precision;
use crate::schedule::ScheduleConfig;
use crate::sliding_window::SlidingWindowConfig;
use crate::{Error, Result};

/// Everything a run needs, as written in a TOML file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name: the run folder is `<output.dir>/<name>-<UTC timestamp>`.
    pub name: String,
    /// Master seed: weights, loader order and augmentation all derive from it.
    pub seed: u64,
    /// `cpu`, or `cuda` / `cuda:N` (needs a CUDA build).
    pub device: String,
    /// Compute precision: `f32` (default) or `bf16` (bf16 forward/backward on bf16 copies of the
    /// f32 master weights; loss, optimiser and checkpoints stay f32; docs/cuda.md §4). bf16 runs
    /// on any device but only pays off on CUDA.
    #[serde(default)]
    pub precision: Precision,
    /// The network.
    pub model: ModelConfig,
    /// Data set and transforms.
    pub data: DataConfig,
    /// Loop length, accumulation, clipping, validation cadence.
    pub train: LoopConfig,
    /// Loss terms.
    pub loss: LossConfig,
    /// AdamW.
    pub optim: AdamWConfig,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Sliding-window validation.
    pub inference: SlidingWindowConfig,
    /// Run outputs.
    pub output: OutputConfig,
}

/// Which transform pipeline of medseg-data is used (defined with the inference settings).
pub use medseg_infer::Pipeline;

/// Where the deterministic part of the pipeline is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    /// No cache.
    None,
    /// In memory (MONAI `CacheDataset`).
    Memory,
    /// Under `<run>/cache` (MONAI `PersistentDataset`).
    Disk,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// MSD-style `dataset.json` with `training` and `validation` lists (relative to the working
    /// directory).
    pub datalist: PathBuf,
    /// When the datalist is missing, generate the synthetic phantom (medseg-data `phantom`,
    /// default settings) in its folder.
    pub generate_phantom: bool,
    /// Transform pipeline.
    pub pipeline: Pipeline,
    /// Target spacing (mm) of `Spacing`.
    pub pixdim: [f64; 3],
    /// HU mapped to 0 by `ScaleIntensityRange`.
    pub a_min: f32,
    /// HU mapped to 1 by `ScaleIntensityRange`.
    pub a_max: f32,
    /// Training patch size `(D, H, W)`; divisible by the model's divisor (32 for Swin UNETR).
    pub roi: [usize; 3],
    /// Patches drawn per volume by `RandCropByPosNegLabel`.
    pub num_samples: usize,
    /// `RandFlip` probability per axis.
    pub flip_prob: f64,
    /// `RandRotate90` probability.
    pub rot90_prob: f64,
    /// `RandScaleIntensity` probability.
    pub scale_prob: f64,
    /// `RandShiftIntensity` probability.
    pub shift_prob: f64,
    /// Volumes per batch (each yields `num_samples` patches).
    pub batch_size: usize,
    /// Loader worker threads.
    pub num_workers: usize,
    /// Cache of the deterministic pipeline prefix.
    pub cache: CacheKind,
}

impl DataConfig {
    /// The training pipeline these fields describe (random crops and augmentation).
    pub fn train_transforms(&self) -> Compose {
        match self.pipeline {
            Pipeline::Btcv => transforms::btcv_train(&self.btcv()),
            Pipeline::Smt => transforms::smt_train(self.roi),
            // A MONAI bundle's inference steps: no training recipe (refused by `validate`).
            Pipeline::Monai => self.preprocessing().transforms(),
        }
    }

    /// The deterministic pipeline of validation and inference (`medseg predict`): orientation,
    /// spacing, intensity scaling, foreground crop ([`Self::preprocessing`]'s transforms).
    pub fn val_transforms(&self) -> Compose {
        self.preprocessing().transforms()
    }

    /// The fields inference needs (medseg-infer [`Preprocessing`]).
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            pipeline: self.pipeline,
            pixdim: self.pixdim,
            a_min: self.a_min,
            a_max: self.a_max,
            roi: self.roi,
            steps: Vec::new(),
        }
    }

    /// The medseg-data BTCV transform parameters these fields describe.
    pub fn btcv(&self) -> BtcvConfig {
        BtcvConfig {
            pixdim: self.pixdim,
            a_min: self.a_min,
            a_max: self.a_max,
            roi: self.roi,
            num_samples: self.num_samples,
            flip_prob: self.flip_prob,
            rot90_prob: self.rot90_prob,
            scale_prob: self.scale_prob,
            shift_prob: self.shift_prob,
        }
    }
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimiser steps of the run.
    pub max_steps: u64,
    /// Micro-batches whose gradients are averaged per optimiser step.
    pub accumulate: usize,
    /// Global gradient-norm clip (`clip_grad_norm_`); 0 turns clipping off.
    pub grad_clip: f64,
    /// Validate every this many optimiser steps (and at the end).
    pub val_every: u64,
    /// Save `last` checkpoint every this many optimiser steps (and at validation and the end).
    pub checkpoint_every: u64,
    /// Pretrained encoder to start from (`swin_unetr` only): a medseg-pretrain checkpoint, MONAI's
    /// `model_swinvit.pt` or any checkpoint with Swin encoder keys; only `swinViT.*` is loaded
    /// (medseg-models `load_encoder`), the report goes to stderr and `<run>/init_from.txt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

/// `[loss]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// `dice_ce`, `dice` or `ce`.
    pub kind: LossKind,
    /// Keep channel 0 in the Dice term (CE always uses every class, as in MONAI).
    pub include_background: bool,
    /// Σp² + Σg² in the Dice denominator (MONAI `squared_pred`).
    pub squared_pred: bool,
    /// Added to the Dice numerator (MONAI `smooth_nr`, 1e-5).
    pub smooth_nr: f64,
    /// Added to the Dice denominator (MONAI `smooth_dr`, 1e-5).
    pub smooth_dr: f64,
    /// Reduce the Dice sums over the batch too (MONAI `batch`).
    pub batch: bool,
    /// Weight of the Dice term.
    pub lambda_dice: f64,
    /// Weight of the CE term.
    pub lambda_ce: f64,
}

impl LossConfig {
    /// The loss arguments as [`DiceCeConfig`].
    pub fn dice_ce(&self) -> DiceCeConfig {
        DiceCeConfig {
            include_background: self.include_background,
            squared_pred: self.squared_pred,
            smooth_nr: self.smooth_nr,
            smooth_dr: self.smooth_dr,
            batch: self.batch,
            lambda_dice: self.lambda_dice,
            lambda_ce: self.lambda_ce,
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Folder that receives run folders.
    pub dir: PathBuf,
    /// Write PNG overlays of the first validation case at each validation.
    pub overlays: bool,
    /// NSD tolerance (mm) of the final report.
    pub nsd_tolerance: f64,
    /// Show progress bars.
    pub progress: bool,
}

/// Names of the embedded presets.
pub const PRESETS: [&str; 5] = ["phantom", "phantom_unet", "btcv", "msd_spleen", "totalseg_smt"];

/// The TOML text of an embedded preset.
pub fn preset_text(name: &str) -> Option<&'static str> {
    match name {
        "phantom" => Some(include_str!("../configs/phantom.toml")),
        "phantom_unet" => Some(include_str!("../configs/phantom_unet.toml")),
        "btcv" => Some(include_str!("../configs/btcv.toml")),
        "msd_spleen" => Some(include_str!("../configs/msd_spleen.toml")),
        "totalseg_smt" => Some(include_str!("../configs/totalseg_smt.toml")),
        _ => None,
    }
}

impl TrainConfig {
    /// Parses TOML; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::ConfigParse { path: origin.to_path_buf(), reason: e.to_string() })
    }

    /// An embedded preset by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        let text = preset_text(name).ok_or_else(|| {
            Error::Config(format!("unknown preset {name:?}; presets are {PRESETS:?}"))
        })?;
        TrainConfig::from_toml(text, &PathBuf::from(format!("<preset {name}>")))
    }

    /// Reads a TOML file, or a preset when `path_or_preset` names one and is not a file.
    pub fn load(path_or_preset: &str) -> Result<Self> {
        let (text, origin) = medseg_run::config::config_text(path_or_preset, preset_text)?;
        TrainConfig::from_toml(&text, &origin)
    }

    /// Serialises back to TOML (the resolved config of a run).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(format!("serialising config: {e}")))
    }

    /// Model, preprocessing and sliding window: what `medseg predict` needs of this run.
    pub fn inference_config(&self) -> InferenceConfig {
        InferenceConfig {
            model: self.model.clone(),
            preprocessing: self.data.preprocessing(),
            window: self.inference.clone(),
        }
    }

    /// Checks every field range and cross-field rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.model.validate()?;
        if self.data.pipeline == Pipeline::Monai {
            return bad(
                "data.pipeline \"monai\" (a MONAI bundle's preprocessing) has no training \
                        recipe: use btcv or smt"
                    .into(),
            );
        }
        let div = self.model.size_divisor();
        for (what, roi) in [("data.roi", self.data.roi), ("inference.roi", self.inference.roi)] {
            if roi.iter().any(|&r| r == 0 || r % div != 0) {
                return bad(format!(
                    "{what} {roi:?} must be divisible by {div} (the model's input divisor)"
                ));
            }
        }
        if let ModelConfig::SwinUnetr(_) = &self.model {
            // MONAI's InstanceNorm raises in training on a 1-voxel map: the bottleneck (roi / 32)
            // needs more than one voxel.
            if self.data.roi.iter().map(|r| r / div).product::<usize>() < 2 {
                return bad(format!(
                    "data.roi {:?} leaves a 1-voxel Swin UNETR bottleneck (roi / {div}); \
                     use at least 64 along one axis",
                    self.data.roi
                ));
            }
        }
        self.inference.validate()?;
        self.schedule.validate()?;
        let d = &self.data;
        if d.num_samples == 0 || d.batch_size == 0 {
            return bad(format!(
                "data.num_samples ({}) and data.batch_size ({}) must be ≥ 1",
                d.num_samples, d.batch_size
            ));
        }
        if d.a_min >= d.a_max || !d.a_min.is_finite() || !d.a_max.is_finite() {
            return bad(format!("data.a_min ({}) must be below data.a_max ({})", d.a_min, d.a_max));
        }
        if d.pixdim.iter().any(|&p| !(p > 0.0 && p.is_finite())) {
            return bad(format!("data.pixdim {:?} must be positive", d.pixdim));
        }
        for (k, p) in [
            ("flip_prob", d.flip_prob),
            ("rot90_prob", d.rot90_prob),
            ("scale_prob", d.scale_prob),
            ("shift_prob", d.shift_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("data.{k} must be in [0, 1], got {p}"));
            }
        }
        let t = &self.train;
        if t.max_steps == 0 || t.accumulate == 0 || t.val_every == 0 || t.checkpoint_every == 0 {
            return bad(format!(
                "train.max_steps ({}), accumulate ({}), val_every ({}), checkpoint_every ({}) \
                 must be ≥ 1",
                t.max_steps, t.accumulate, t.val_every, t.checkpoint_every
            ));
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return bad(format!("train.grad_clip must be ≥ 0 (0 = off), got {}", t.grad_clip));
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) || o.weight_decay < 0.0 || o.eps <= 0.0 {
            return bad(format!(
                "optim: lr ({}) and eps ({}) must be > 0, weight_decay ({}) ≥ 0",
                o.lr, o.eps, o.weight_decay
            ));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(format!("optim.betas {:?} must be in [0, 1)", o.betas));
        }
        if !(o.encoder_lr_scale >= 0.0 && o.encoder_lr_scale.is_finite()) {
            return bad(format!(
                "optim.encoder_lr_scale must be ≥ 0 (1 = same lr, 0 = frozen encoder), got {}",
                o.encoder_lr_scale
            ));
        }
        let l = &self.loss;
        if l.lambda_dice < 0.0 || l.lambda_ce < 0.0 || l.lambda_dice + l.lambda_ce == 0.0 {
            return bad(format!(
                "loss.lambda_dice ({}) and loss.lambda_ce ({}) must be ≥ 0 and not both 0",
                l.lambda_dice, l.lambda_ce
            ));
        }
        if l.smooth_nr < 0.0 || l.smooth_dr < 0.0 {
            return bad(format!(
                "loss.smooth_nr ({}) and loss.smooth_dr ({}) must be ≥ 0",
                l.smooth_nr, l.smooth_dr
            ));
        }
        if self.output.nsd_tolerance.is_nan() || self.output.nsd_tolerance < 0.0 {
            return bad(format!(
                "output.nsd_tolerance must be ≥ 0, got {}",
                self.output.nsd_tolerance
            ));
        }
        if !(self.device == "cpu" || self.device == "cuda" || self.device.starts_with("cuda:")) {
            return bad(format!("device must be cpu, cuda or cuda:N, got {:?}", self.device));
        }
        Ok(())
    }

    /// Validates and resolves paths; the run folder is `<output.dir>/<name>-<timestamp>`.
    pub fn resolve(self) -> Result<TrainPlan> {
        self.validate()?;
        let datalist = medseg_run::config::absolute(&self.data.datalist)?;
        let run_dir = medseg_run::config::run_dir_proposal(&self.output.dir, &self.name)?;
        Ok(TrainPlan { config: self, datalist, run_dir, fresh_run_dir: true })
    }
}

/// A validated configuration with resolved paths.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPlan {
    /// The configuration (as validated).
    pub config: TrainConfig,
    /// Absolute path of the datalist.
    pub datalist: PathBuf,
    /// The run folder (created by the trainer).
    pub run_dir: PathBuf,
    /// True: `run_dir` is a proposal (`<out>/<name>-<stamp>`) that the trainer creates
    /// exclusively, as `run_dir-2`, `run_dir-3`… when it exists. False: use exactly `run_dir`
    /// (`--run-dir`, shared by the ranks of a multi-GPU run), creating it if needed.
    pub fresh_run_dir: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_validates() {
        for p in PRESETS {
            let c = TrainConfig::preset(p).unwrap_or_else(|e| panic!("preset {p}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("preset {p}: {e}"));
            // round trip through the resolved-config writer
            let back = TrainConfig::from_toml(&c.to_toml().expect("toml"), Path::new("x"))
                .expect("reparse");
            assert_eq!(back, c, "preset {p} round trip");
        }
    }

    #[test]
    fn a_monai_bundle_pipeline_has_no_training_recipe() {
        let mut c = TrainConfig::preset("phantom").expect("preset");
        c.data.pipeline = Pipeline::Monai;
        let e = c.validate().expect_err("monai pipeline");
        assert!(e.to_string().contains("no training recipe"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = preset_text("phantom").expect("preset").replace("[train]", "[train]\nbogus = 1");
        let e = TrainConfig::from_toml(&text, Path::new("t.toml")).expect_err("unknown field");
        assert!(e.to_string().contains("bogus"), "{e}");
        let text = preset_text("phantom").expect("preset").replace("[loss]", "[loss]\nsmooth = 1");
        assert!(TrainConfig::from_toml(&text, Path::new("t.toml")).is_err());
    }

    #[test]
    fn precision_is_optional_defaults_to_f32_and_unknown_keys_still_fail() {
        let text = preset_text("phantom").expect("preset");
        assert!(!text.contains("precision"), "the preset predates the field");
        let c = TrainConfig::from_toml(text, Path::new("t.toml")).expect("parses");
        assert_eq!(c.precision, Precision::F32);
        let bf16 = text.replacen("device = ", "precision = \"bf16\"\ndevice = ", 1);
        let c = TrainConfig::from_toml(&bf16, Path::new("t.toml")).expect("bf16");
        assert_eq!(c.precision, Precision::Bf16);
        c.validate().expect("bf16 validates");
        let back = TrainConfig::from_toml(&c.to_toml().expect("toml"), Path::new("x")).expect("re");
        assert_eq!(back.precision, Precision::Bf16, "the resolved config keeps it");
        let fp8 = text.replacen("device = ", "precision = \"fp8\"\ndevice = ", 1);
        let e = TrainConfig::from_toml(&fp8, Path::new("t.toml")).expect_err("fp8");
        assert!(e.to_string().contains("fp8"), "{e}");
        let typo = text.replacen("device = ", "precison = \"bf16\"\ndevice = ", 1);
        let e = TrainConfig::from_toml(&typo, Path::new("t.toml")).expect_err("typo");
        assert!(e.to_string().contains("precison"), "{e}");
    }

    #[test]
    fn cross_field_checks_quote_the_values() {
        let mut c = TrainConfig::preset("phantom").expect("preset");
        c.data.roi = [33, 32, 32];
        let e = c.validate().expect_err("roi");
        assert!(e.to_string().contains("[33, 32, 32]"), "{e}");
        let mut c = TrainConfig::preset("phantom").expect("preset");
        c.schedule.warmup = c.schedule.max;
        assert!(c.validate().is_err());
        let mut c = TrainConfig::preset("phantom").expect("preset");
        c.inference.overlap = 1.0;
        assert!(c.validate().is_err());
        let mut c = TrainConfig::preset("phantom").expect("preset");
        assert_eq!(c.optim.encoder_lr_scale, 1.0, "defaults to one lr for all");
        c.optim.encoder_lr_scale = -0.1;
        let e = c.validate().expect_err("negative scale");
        assert!(
            e.to_string().contains("encoder_lr_scale") && e.to_string().contains("-0.1"),
            "{e}"
        );
    }

    #[test]
    fn stamp_has_the_expected_shape() {
        let s = medseg_run::config::utc_stamp();
        assert_eq!(s.len(), 15);
        assert!(s.starts_with("20"));
    }
}
