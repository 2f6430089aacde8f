//! What inference needs from a run's configuration: the model (`[model]`), the preprocessing
//! (`[data]`: pipeline, spacing, intensity window, roi) and the sliding window (`[inference]`).
//! medseg-train's `TrainConfig` embeds these types and converts into [`InferenceConfig`]; a run
//! folder's `config.toml` is read here directly, without the training-only tables.
use std::path::Path;

use medseg_models::MergeOrder;

use crate::model::ModelConfig;
use crate::preprocess::Preprocessing;
use crate::sliding_window::SlidingWindowConfig;
use crate::{Error, Result};

/// Model, preprocessing and sliding window of a trained network.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InferenceConfig {
    /// The network.
    pub model: ModelConfig,
    /// The deterministic validation transforms.
    #[serde(rename = "data")]
    pub preprocessing: Preprocessing,
    /// Sliding-window settings.
    #[serde(rename = "inference")]
    pub window: SlidingWindowConfig,
}

impl InferenceConfig {
    /// Parses the `[model]`, `[data]` and `[inference]` tables of a run's `config.toml` (the
    /// trainer's resolved config); other tables and the training-only `[data]` fields are
    /// ignored. `origin` names the source in errors.
    pub fn from_run_toml(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::ConfigParse { path: origin.to_path_buf(), reason: e.to_string() })
    }

    /// Checks the model, the preprocessing, the window and their cross rules (the roi is a
    /// multiple of the model's input divisor, single-channel input, at most 256 classes).
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.preprocessing.validate()?;
        self.window.validate()?;
        let div = self.model.size_divisor();
        let roi = self.window.roi;
        if roi.iter().any(|&r| r % div != 0) {
            return Err(Error::Config(format!(
                "inference.roi {roi:?} must be divisible by {div} (the model's input divisor)"
            )));
        }
        if self.model.in_channels() != 1 {
            return Err(Error::Config(format!(
                "the model takes {} input channels; prediction feeds one single-channel image",
                self.model.in_channels()
            )));
        }
        if self.model.out_channels() > 256 {
            return Err(Error::Config(format!(
                "model.out_channels {} exceeds the 256 labels of a u8 label map",
                self.model.out_channels()
            )));
        }
        Ok(())
    }

    /// Sets the Swin UNETR patch-merging order (an error for other models).
    pub fn set_merge_order(&mut self, order: MergeOrder) -> Result<()> {
        match &mut self.model {
            ModelConfig::SwinUnetr(c) => {
                c.merge_order = Some(order);
                Ok(())
            }
            ModelConfig::TinyUnet(_) => {
                Err(Error::Config("the merge order applies to swin_unetr models only".into()))
            }
        }
    }

    /// The patch-merging order the model uses (Swin UNETR / Swin SMT); `None` for other models.
    pub fn merge_order(&self) -> Option<MergeOrder> {
        match &self.model {
            ModelConfig::SwinUnetr(c) => Some(c.resolved_merge_order()),
            ModelConfig::TinyUnet(_) => None,
        }
    }
}
