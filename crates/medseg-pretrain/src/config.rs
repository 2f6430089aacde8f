//! Pretraining configuration in two stages: [`PretrainConfig`] is what the user wrote (TOML, every
//! field documented, unknown fields rejected); [`PretrainConfig::resolve`] checks cross-field
//! rules and produces a [`PretrainPlan`] with absolute paths and the run folder.
//!
//! Embedded presets: `phantom` (tiny SSL head on the generated phantom, CPU, a few minutes) and
//! `research` (the published recipe, swin-reference §3.4–3.5) — the files under `configs/`.
use std::path::{Path, PathBuf};

use medseg_models::SslHeadConfig;
use medseg_train::config::CacheKind;

use crate::loss::LossWeights;
use crate::ops::CutoutConfig;
use crate::{Error, Result};

/// Everything a pretraining run needs, as written in a TOML file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Run name: the run folder is `<output.dir>/<name>-<UTC timestamp>`.
    pub name: String,
    /// Master seed: weights, loader order, crops, rotations and cutouts derive from it.
    pub seed: u64,
    /// `cpu`, or `cuda` / `cuda:N` (needs a CUDA build).
    pub device: String,
    /// The `SSLHead` (`in_channels`, `feature_size`, `dropout_path_rate`, `merge_order`).
    pub model: SslHeadConfig,
    /// Unlabelled data.
    pub data: DataConfig,
    /// Pretext tasks and loss weights.
    pub ssl: SslConfig,
    /// Loop length, clipping, validation and checkpoint cadence.
    pub train: LoopConfig,
    /// Optimiser.
    pub optim: OptimConfig,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Run outputs.
    pub output: OutputConfig,
}

/// `[data]`: unlabelled volumes from json datalists and/or folders of NIfTI files.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Json datalists (research `jsons/*.json` or MSD `dataset.json`): every `training` entry
    /// trains, every `validation` entry validates; entries are paths or objects with `image`
    /// (labels are ignored). Paths are relative to `base_dir` or else to the json's folder.
    #[serde(default)]
    pub datalists: Vec<PathBuf>,
    /// Folder that json entries are relative to (research `--data_dir`); default: each json's folder.
    #[serde(default)]
    pub base_dir: Option<PathBuf>,
    /// Folders whose `.nii`/`.nii.gz` files (or those of an `imagesTr` subfolder) all train.
    #[serde(default)]
    pub folders: Vec<PathBuf>,
    /// When the first datalist is missing, generate the medseg-data phantom (default settings) there.
    pub generate_phantom: bool,
    /// Fraction of the training volumes moved to validation when no `validation` entries exist.
    pub val_fraction: f64,
    /// HU mapped to 0 by `ScaleIntensityRange` (research −1000).
    pub a_min: f32,
    /// HU mapped to 1 (research 1000); values are clipped to [0, 1].
    pub a_max: f32,
    /// Crop size `(X, Y, Z)`: divisible by 32, `Y = Z` (rotation plane), ≥ 2 bottleneck tokens.
    pub roi: [usize; 3],
    /// Crops per volume (`RandSpatialCropSamples`, research `sw_batch_size` 2).
    pub num_samples: usize,
    /// Volumes per step (research `batch_size` 2); a step sees `batch_size·num_samples` crops per view.
    pub batch_size: usize,
    /// Loader worker threads.
    pub num_workers: usize,
    /// Cache of the deterministic pipeline prefix: `none`, `memory`, `disk` (under `<run>/cache`).
    pub cache: CacheKind,
}

/// `[ssl]`: the pretext tasks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslConfig {
    /// `patch_rand_drop` arguments.
    pub cutout: CutoutConfig,
    /// NT-Xent temperature (research 0.5).
    pub temperature: f64,
    /// Loss weights.
    pub weights: LossWeights,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimiser steps (research `num_steps`).
    pub max_steps: u64,
    /// Global gradient-norm clip (research `--grad_clip` with `max_grad_norm` 1); 0 = off.
    pub grad_clip: f64,
    /// Validate (reconstruction loss on the validation crops) every this many steps and at the end
    /// (research `eval_num`).
    pub val_every: u64,
    /// Save `last` every this many steps (and at validation and the end).
    pub checkpoint_every: u64,
    /// Validation batches per validation (0 = all).
    pub val_batches: usize,
}

/// Optimiser family (research `--opt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// `torch.optim.AdamW` (medseg-train's, decay / no-decay groups).
    Adamw,
    /// `torch.optim.SGD(momentum, weight_decay)` (coupled decay on every parameter).
    Sgd,
}

/// `[optim]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// `adamw` or `sgd`.
    pub kind: OptimKind,
    /// Peak learning rate (research default 4e-4; the README run 6e-6).
    pub lr: f64,
    /// Weight decay (research `--decay` 0.1).
    pub weight_decay: f64,
    /// AdamW `(β1, β2)`.
    pub betas: [f64; 2],
    /// AdamW ε.
    pub eps: f64,
    /// SGD momentum (research 0.9).
    pub momentum: f64,
}

/// Schedule shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The base rate throughout (research without `--lrdecay`).
    Constant,
    /// Research `WarmupCosineSchedule` per step.
    WarmupCosine,
}

/// `[schedule]`: research `WarmupCosineSchedule(warmup_steps, t_total = max_steps)`:
/// factor `t/warmup` for `t < warmup`, then `½(1 + cos(π·(t − warmup)/(max_steps − warmup)))`,
/// at the step counter `t` before the step (the first step uses factor 0).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `constant` or `warmup_cosine`.
    pub kind: ScheduleKind,
    /// Warm-up steps (research 500).
    pub warmup_steps: u64,
}

impl ScheduleConfig {
    /// Learning rate of the step taken at counter `t` (`t` steps done) of a `total`-step run.
    pub fn lr(&self, base: f64, t: u64, total: u64) -> f64 {
        match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::WarmupCosine => base * warmup_cosine_factor(t, self.warmup_steps, total),
        }
    }
}

/// The `lr_lambda` of research `WarmupCosineSchedule` (cycles 0.5).
pub fn warmup_cosine_factor(t: u64, warmup: u64, total: u64) -> f64 {
    if t < warmup {
        return t as f64 / (warmup.max(1)) as f64;
    }
    let progress = (t - warmup) as f64 / (total.saturating_sub(warmup).max(1)) as f64;
    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Folder that receives run folders.
    pub dir: PathBuf,
    /// Write `recon/step_NNNNNN.png` (input, augmented input, reconstruction) at each validation.
    pub recon_png: bool,
    /// Show a progress bar (terminal) or a log line every 5 % of the steps.
    pub progress: bool,
}

/// Names of the embedded presets.
pub const PRESETS: [&str; 2] = ["phantom", "research"];

/// The TOML text of an embedded preset.
pub fn preset_text(name: &str) -> Option<&'static str> {
    match name {
        "phantom" => Some(include_str!("../configs/phantom.toml")),
        "research" => Some(include_str!("../configs/research.toml")),
        _ => None,
    }
}

impl PretrainConfig {
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
        PretrainConfig::from_toml(text, &PathBuf::from(format!("<preset {name}>")))
    }

    /// Reads a TOML file, or a preset when `path_or_preset` names one and is not a file.
    pub fn load(path_or_preset: &str) -> Result<Self> {
        let (text, origin) = medseg_run::config::config_text(path_or_preset, preset_text)?;
        PretrainConfig::from_toml(&text, &origin)
    }

    /// Serialises back to TOML (the resolved config of a run).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(format!("serialising config: {e}")))
    }

    /// Checks every field range and cross-field rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let m = &self.model;
        if m.in_channels == 0 || m.feature_size == 0 || !m.feature_size.is_multiple_of(12) {
            return bad(format!(
                "model: in_channels ({}) ≥ 1 and feature_size ({}) a positive multiple of 12",
                m.in_channels, m.feature_size
            ));
        }
        if !(0.0..1.0).contains(&m.dropout_path_rate) {
            return bad(format!(
                "model.dropout_path_rate must be in [0, 1), got {}",
                m.dropout_path_rate
            ));
        }
        let d = &self.data;
        if d.datalists.is_empty() && d.folders.is_empty() {
            return bad("data: give at least one of datalists or folders".into());
        }
        let r = d.roi;
        if r.iter().any(|&s| s == 0 || s % 32 != 0) {
            return bad(format!("data.roi {r:?} must be divisible by 32 (Swin input divisor)"));
        }
        if r[1] != r[2] {
            return bad(format!(
                "data.roi {r:?}: axes 1 and 2 must be equal (the rotation task turns that plane)"
            ));
        }
        if r.iter().map(|s| s / 32).product::<usize>() < 2 {
            return bad(format!(
                "data.roi {r:?} leaves one bottleneck token; the rotation and contrastive heads \
                 read tokens 0 and 1 (use 64 along one axis)"
            ));
        }
        if d.num_samples == 0 || d.batch_size == 0 {
            return bad(format!(
                "data.num_samples ({}) and data.batch_size ({}) must be ≥ 1",
                d.num_samples, d.batch_size
            ));
        }
        if !(d.a_min < d.a_max && d.a_min.is_finite() && d.a_max.is_finite()) {
            return bad(format!("data.a_min ({}) must be below data.a_max ({})", d.a_min, d.a_max));
        }
        if !(0.0..1.0).contains(&d.val_fraction) {
            return bad(format!("data.val_fraction must be in [0, 1), got {}", d.val_fraction));
        }
        self.ssl.cutout.validate(r)?;
        if !(self.ssl.temperature > 0.0 && self.ssl.temperature.is_finite()) {
            return bad(format!("ssl.temperature must be > 0, got {}", self.ssl.temperature));
        }
        let w = &self.ssl.weights;
        if [w.rot, w.contrast, w.recon].iter().any(|v| !(*v >= 0.0 && v.is_finite()))
            || w.rot + w.contrast + w.recon == 0.0
        {
            return bad(format!("ssl.weights must be ≥ 0 and not all 0, got {w:?}"));
        }
        let t = &self.train;
        if t.max_steps == 0 || t.val_every == 0 || t.checkpoint_every == 0 {
            return bad(format!(
                "train.max_steps ({}), val_every ({}), checkpoint_every ({}) must be ≥ 1",
                t.max_steps, t.val_every, t.checkpoint_every
            ));
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return bad(format!("train.grad_clip must be ≥ 0 (0 = off), got {}", t.grad_clip));
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite() && o.weight_decay >= 0.0 && o.eps > 0.0) {
            return bad(format!(
                "optim: lr ({}) and eps ({}) must be > 0, weight_decay ({}) ≥ 0",
                o.lr, o.eps, o.weight_decay
            ));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) || !(0.0..1.0).contains(&o.momentum) {
            return bad(format!(
                "optim.betas {:?} and optim.momentum ({}) must be in [0, 1)",
                o.betas, o.momentum
            ));
        }
        if self.schedule.kind == ScheduleKind::WarmupCosine
            && self.schedule.warmup_steps >= self.train.max_steps
        {
            return bad(format!(
                "schedule.warmup_steps ({}) must be below train.max_steps ({})",
                self.schedule.warmup_steps, self.train.max_steps
            ));
        }
        if !(self.device == "cpu" || self.device == "cuda" || self.device.starts_with("cuda:")) {
            return bad(format!("device must be cpu, cuda or cuda:N, got {:?}", self.device));
        }
        Ok(())
    }

    /// Validates and resolves paths; the run folder is `<output.dir>/<name>-<timestamp>`.
    pub fn resolve(self) -> Result<PretrainPlan> {
        self.validate()?;
        let abs = medseg_run::config::absolute;
        let datalists =
            self.data.datalists.iter().map(|p| abs(p)).collect::<medseg_run::Result<_>>()?;
        let folders =
            self.data.folders.iter().map(|p| abs(p)).collect::<medseg_run::Result<_>>()?;
        let base_dir = self.data.base_dir.as_deref().map(abs).transpose()?;
        let run_dir = medseg_run::config::run_dir_proposal(&self.output.dir, &self.name)?;
        Ok(PretrainPlan { config: self, datalists, folders, base_dir, run_dir })
    }
}

/// A validated configuration with resolved paths.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainPlan {
    /// The configuration (as validated).
    pub config: PretrainConfig,
    /// Absolute datalist paths.
    pub datalists: Vec<PathBuf>,
    /// Absolute folder paths.
    pub folders: Vec<PathBuf>,
    /// Absolute `base_dir`, if set.
    pub base_dir: Option<PathBuf>,
    /// The proposed run folder, created exclusively by the pretrainer (`-2`, `-3`… when it
    /// exists).
    pub run_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_validate_and_round_trip() {
        for p in PRESETS {
            let c = PretrainConfig::preset(p).unwrap_or_else(|e| panic!("preset {p}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("preset {p}: {e}"));
            let back = PretrainConfig::from_toml(&c.to_toml().expect("toml"), Path::new("x"))
                .expect("reparse");
            assert_eq!(back, c, "preset {p}");
        }
    }

    #[test]
    fn research_schedule_matches_the_lambda() {
        // WarmupCosineSchedule(warmup 500, t_total 100000)
        assert_eq!(warmup_cosine_factor(0, 500, 100_000), 0.0);
        assert!((warmup_cosine_factor(250, 500, 100_000) - 0.5).abs() < 1e-15);
        assert_eq!(warmup_cosine_factor(500, 500, 100_000), 1.0);
        assert!((warmup_cosine_factor(50_250, 500, 100_000) - 0.5).abs() < 1e-12);
        assert!(warmup_cosine_factor(100_000, 500, 100_000).abs() < 1e-15);
    }

    #[test]
    fn bad_values_are_rejected_with_the_values() {
        let mut c = PretrainConfig::preset("phantom").expect("preset");
        c.data.roi = [64, 32, 64];
        assert!(c.validate().expect_err("roi").to_string().contains("[64, 32, 64]"));
        let mut c = PretrainConfig::preset("phantom").expect("preset");
        c.data.roi = [32, 32, 32];
        assert!(c.validate().expect_err("one token").to_string().contains("bottleneck"));
        let mut c = PretrainConfig::preset("phantom").expect("preset");
        c.ssl.temperature = 0.0;
        assert!(c.validate().is_err());
        let mut c = PretrainConfig::preset("phantom").expect("preset");
        c.schedule.warmup_steps = c.train.max_steps;
        assert!(c.validate().is_err());
        let text = preset_text("phantom").expect("preset").replace("[ssl]", "[ssl]\nbogus = 1");
        let e = PretrainConfig::from_toml(&text, Path::new("t.toml")).expect_err("unknown");
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
