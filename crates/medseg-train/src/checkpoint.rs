//! What a training checkpoint holds: the weights (the model's variable names, MONAI
//! `state_dict()` keys for MONAI ports, `medseg_step` in the metadata) and the state (AdamW
//! moments `m.<name>` / `v.<name>` + the JSON [`TrainState`] in the metadata). medseg-run's
//! `checkpoint` module stores them as one generation `checkpoints/step-NNNNNN/` that is wholly
//! old or wholly new; the tensor-file helpers are re-exported from there.
use std::collections::HashMap;
use std::path::Path;

use candle::{Device, Tensor};
use candle_nn::VarMap;
use medseg_run::checkpoint::read_metadata;
pub use medseg_run::checkpoint::{load_weights, read_step, safetensors_bytes, varmap_tensors};
pub use medseg_run::write_atomic;

use crate::{Error, Result};

/// One logged optimiser step (a row of `metrics.csv`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRow {
    /// Optimiser step (1-based).
    pub step: u64,
    /// Epoch in which the step's last micro-batch was drawn.
    pub epoch: u64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used by the step.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds since the start of the run (cumulative over resumes).
    pub elapsed_s: f64,
    /// Validation Dice per foreground class, when this step validated.
    pub val_dice: Option<Vec<f64>>,
    /// Mean validation Dice (MONAI mean over cases × classes), when this step validated.
    pub val_mean_dice: Option<f64>,
}

/// Position of the run: everything besides weights and moments that resuming needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: u64,
    /// Current epoch of the training loader.
    pub epoch: u64,
    /// Batches of `epoch` already consumed.
    pub batch_in_epoch: usize,
    /// Best mean validation Dice so far.
    pub best_mean_dice: Option<f64>,
    /// Step of the best checkpoint.
    pub best_step: Option<u64>,
    /// Every logged step.
    pub history: Vec<LogRow>,
    /// Seconds of training before this process (resumed runs).
    pub elapsed_s: f64,
}

impl TrainState {
    /// The state of a new run.
    pub fn new() -> Self {
        TrainState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            best_mean_dice: None,
            best_step: None,
            history: Vec::new(),
            elapsed_s: 0.0,
        }
    }
}

impl Default for TrainState {
    fn default() -> Self {
        TrainState::new()
    }
}

/// The weights of `varmap` as safetensors bytes, recording `step` in the metadata.
pub fn weights_bytes(varmap: &VarMap, step: u64) -> Result<Vec<u8>> {
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("medseg_step".to_string(), step.to_string()),
    ]);
    Ok(safetensors_bytes(&varmap_tensors(varmap)?, meta)?)
}

/// Writes the weights of `varmap` atomically to one file, recording `step` in the metadata.
pub fn save_weights(varmap: &VarMap, path: &Path, step: u64) -> Result<()> {
    Ok(write_atomic(path, &weights_bytes(varmap, step)?)?)
}

/// Optimiser moments and the [`TrainState`] as safetensors bytes.
pub fn state_bytes(moments: &[(String, Tensor)], state: &TrainState) -> Result<Vec<u8>> {
    let json = serde_json::to_string(state)
        .map_err(|e| Error::Checkpoint { path: "<memory>".into(), reason: e.to_string() })?;
    let meta = HashMap::from([
        ("medseg_step".to_string(), state.step.to_string()),
        ("medseg_state".to_string(), json),
    ]);
    Ok(safetensors_bytes(moments, meta)?)
}

/// Reads a state file: the moments and the [`TrainState`].
pub fn load_state(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, TrainState)> {
    let md = read_metadata(path)?;
    let json = md.get("medseg_state").ok_or_else(|| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: "no medseg_state metadata".into(),
    })?;
    let state: TrainState = serde_json::from_str(json)
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
    let tensors = crate::optim::load_tensors(path, device)?;
    Ok((tensors, state))
}
