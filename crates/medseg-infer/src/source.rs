//! Model sources: where the network, its weights and its configuration come from.
//!
//! A source is a run folder (its `config.toml` and checkpoint), a one-file model package
//! (`medseg export`: weights + configuration in the safetensors metadata, [`crate::package`]) or
//! a MONAI bundle folder (`configs/inference.json` + `models/model.pt`, [`crate::bundle`]) or a
//! weights file (`.safetensors`, MONAI/PyTorch `.pt`/`.pth`) with the configuration that
//! describes it. Every source resolves to the same [`ResolvedModel`]; everything after
//! resolution is shared.
use std::path::{Path, PathBuf};

use candle::{DType, Device};
use candle_nn::VarMap;
use medseg_models::loader::{
    frozen_var_builder, load_into_varmap, read_checkpoint, zero_init_var_builder,
};

use crate::config::InferenceConfig;
use crate::invert::Resample;
use crate::model::{ModelConfig, SegModel};
use crate::{Error, Result};

/// The weights file of a run folder to predict with: medseg-run's
/// [`inference_weights`](medseg_run::checkpoint::inference_weights) (`checkpoints/best.safetensors`,
/// else the newest complete checkpoint generation, else an old run's `last.safetensors`), so the
/// checkpoint layout is known in one place only.
pub fn run_weights(run_dir: &Path) -> Result<PathBuf> {
    medseg_run::checkpoint::inference_weights(run_dir)
        .map_err(|e| Error::Model { path: run_dir.to_path_buf(), reason: e.to_string() })
}

/// A configuration and where it came from (a file, `preset NAME`), for messages.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSource {
    /// The configuration.
    pub config: InferenceConfig,
    /// Where it came from.
    pub origin: String,
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A training run folder: `config.toml` + the weights of [`run_weights`]. `config`, when
    /// given, replaces the folder's own `config.toml`.
    RunFolder {
        /// The run folder.
        dir: PathBuf,
        /// A configuration that overrides the run's own.
        config: Option<ConfigSource>,
    },
    /// A one-file model package (`medseg export`): its metadata holds the configuration.
    /// `config`, when given, replaces the package's own.
    Package {
        /// The `.safetensors` package.
        path: PathBuf,
        /// A configuration that overrides the package's own.
        config: Option<ConfigSource>,
    },
    /// A MONAI bundle folder: `configs/inference.json` (+ `configs/metadata.json`) and
    /// `models/model.pt`; it carries its own configuration.
    Bundle {
        /// The bundle folder.
        dir: PathBuf,
    },
    /// A weights file and the configuration describing its architecture and preprocessing.
    Weights {
        /// `.safetensors`, `.pt`, `.pth`, …
        path: PathBuf,
        /// The configuration.
        config: ConfigSource,
    },
}

/// A source resolved to a configuration and a weights file (nothing loaded yet).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModel {
    /// Model, preprocessing and sliding window.
    pub config: InferenceConfig,
    /// The weights file.
    pub weights: PathBuf,
    /// Where the configuration came from.
    pub origin: String,
    /// The weights were trained with this very configuration (a run folder's own config), so an
    /// unrecorded merge order is not worth a warning.
    pub from_run: bool,
    /// How predictions return to the input grid unless the caller says otherwise: what a
    /// bundle's postprocessing does, else [`Resample::Labels`].
    pub resample: Resample,
    /// Where the merge order comes from when the source decides it (a bundle's
    /// `monai_version`).
    pub merge_order_note: Option<String>,
}

impl ModelSource {
    /// A folder with `configs/inference.json` is a MONAI bundle (which takes no `config`), any
    /// other folder a run folder; a `.safetensors` file whose metadata has `medseg.format` is a
    /// package; any other file is a weights file (which then needs `config`).
    pub fn from_path(model: &Path, config: Option<ConfigSource>) -> Result<Self> {
        if model.is_dir() && crate::bundle::is_bundle(model) {
            if let Some(c) = config {
                return Err(Error::Model {
                    path: model.to_path_buf(),
                    reason: format!(
                        "a MONAI bundle carries its own configuration; drop --preset/--config \
                         ({})",
                        c.origin
                    ),
                });
            }
            return Ok(ModelSource::Bundle { dir: model.to_path_buf() });
        }
        if model.is_dir() {
            return Ok(ModelSource::RunFolder { dir: model.to_path_buf(), config });
        }
        if !model.exists() {
            return Err(Error::Model {
                path: model.to_path_buf(),
                reason: "does not exist (a run folder or a weights file)".into(),
            });
        }
        if crate::package::is_package(model)? {
            return Ok(ModelSource::Package { path: model.to_path_buf(), config });
        }
        match config {
            Some(config) => Ok(ModelSource::Weights { path: model.to_path_buf(), config }),
            None => Err(Error::Model {
                path: model.to_path_buf(),
                reason: "a plain weights file needs --preset or --config for the architecture \
                         and preprocessing (or pass a run folder or a `medseg export` package)"
                    .into(),
            }),
        }
    }

    /// Finds the weights and reads the configuration (paths only; no weights are read).
    pub fn resolve(&self) -> Result<ResolvedModel> {
        match self {
            ModelSource::RunFolder { dir, config } => {
                let weights = run_weights(dir)?;
                let (config, origin, from_run) = match config {
                    Some(c) => (c.config.clone(), c.origin.clone(), false),
                    None => {
                        let path = dir.join("config.toml");
                        let text = std::fs::read_to_string(&path).map_err(|e| Error::Model {
                            path: dir.clone(),
                            reason: format!(
                                "reading {}: {e} (pass --preset or --config instead)",
                                path.display()
                            ),
                        })?;
                        let config = InferenceConfig::from_run_toml(&text, &path)?;
                        (config, path.display().to_string(), true)
                    }
                };
                Ok(ResolvedModel {
                    config,
                    weights,
                    origin,
                    from_run,
                    resample: Resample::Labels,
                    merge_order_note: None,
                })
            }
            ModelSource::Package { path, config } => {
                let (config, origin, from_run) = match config {
                    Some(c) => (c.config.clone(), c.origin.clone(), false),
                    None => {
                        let info = crate::package::read_package(path)?;
                        (info.config, format!("package {}", path.display()), true)
                    }
                };
                Ok(ResolvedModel {
                    config,
                    weights: path.clone(),
                    origin,
                    from_run,
                    resample: Resample::Labels,
                    merge_order_note: None,
                })
            }
            ModelSource::Bundle { dir } => {
                let b = crate::bundle::read_bundle(dir)?;
                Ok(ResolvedModel {
                    config: b.inference_config(),
                    weights: b.weights.clone(),
                    origin: format!(
                        "MONAI bundle {}",
                        dir.join(crate::bundle::INFERENCE_JSON).display()
                    ),
                    from_run: true,
                    resample: b.resample,
                    merge_order_note: Some(b.merge_order_from),
                })
            }
            ModelSource::Weights { path, config } => Ok(ResolvedModel {
                config: config.config.clone(),
                weights: path.clone(),
                origin: config.origin.clone(),
                from_run: false,
                resample: Resample::Labels,
                merge_order_note: None,
            }),
        }
    }
}

/// A network ready for inference.
pub struct LoadedModel {
    /// The configuration, with the merge order filled in from the weights' metadata.
    pub config: InferenceConfig,
    /// The network on its device, weights detached (no autograd graph is recorded).
    pub model: Box<dyn SegModel>,
    /// Where the merge order came from (`config`, `weights' metadata`, `model's default`); `None` for
    /// models without patch merging.
    pub merge_order_from: Option<&'static str>,
    /// Warnings for the user (unused tensors, an unrecorded merge order).
    pub warnings: Vec<String>,
    /// The source's default resampling back to the input grid ([`ResolvedModel::resample`]).
    pub resample: Resample,
}

impl ResolvedModel {
    /// Builds the network of the configuration and fills it from the weights (every parameter
    /// required, shapes checked by name) on `device`.
    pub fn load(mut self, device: &Device) -> Result<LoadedModel> {
        let weights = &self.weights;
        let ckpt = read_checkpoint(weights)?;
        let mut warnings = Vec::new();
        let merge_order_from = match &mut self.config.model {
            ModelConfig::SwinUnetr(c) => Some(if self.merge_order_note.is_some() {
                "bundle's monai_version"
            } else if c.merge_order.is_some() {
                "config"
            } else if let Some(o) = ckpt.merge_order {
                c.merge_order = Some(o);
                "weights' metadata"
            } else {
                if !self.from_run {
                    warnings.push(format!(
                        "neither the config nor {} records the patch-merging order; using {:?} \
                         (MONAI 1.6.1 semantics). Weights trained before MONAI 1.5 (every \
                         published BTCV/SSL/Swin SMT checkpoint) need --merge-order legacy",
                        weights.display(),
                        c.resolved_merge_order()
                    ));
                }
                "model's default"
            }),
            ModelConfig::TinyUnet(_) => None,
        };
        self.config.validate()?;
        let varmap = VarMap::new();
        // Creates the variables (checkpoint names, zero-filled) on the target device; the
        // weights are copied into them.
        self.config.model.build(zero_init_var_builder(&varmap, DType::F32, device))?;
        let report = load_into_varmap(&varmap, &ckpt).map_err(|e| Error::Model {
            path: weights.clone(),
            reason: format!(
                "loading the weights into the {} of the config (a model/config mismatch?): {e}",
                self.config.model.kind()
            ),
        })?;
        if !report.missing.is_empty() {
            let first: Vec<&str> = report.missing.iter().take(3).map(String::as_str).collect();
            return Err(Error::Model {
                path: weights.clone(),
                reason: format!(
                    "{} of the model's parameters are missing (first: {}); the weights do not \
                     belong to this model config",
                    report.missing.len(),
                    first.join(", ")
                ),
            });
        }
        if let Some(first) = report.unused.first() {
            warnings.push(format!(
                "{} tensors of {} are not used by the model (first: {first})",
                report.unused.len(),
                weights.display(),
            ));
        }
        // Detached weights: inference records no autograd graph, so activations are freed as
        // soon as they are consumed.
        let model = self.config.model.build(frozen_var_builder(&varmap)?)?;
        Ok(LoadedModel {
            config: self.config,
            model,
            merge_order_from,
            warnings,
            resample: self.resample,
        })
    }
}
