//! Checkpoints and atomic file writes.
//!
//! A run folder holds `checkpoints/last.safetensors` (weights under the model's variable names,
//! MONAI `state_dict()` keys for MONAI ports), `checkpoints/last.state.safetensors` (AdamW
//! moments `m.<name>` / `v.<name>` + the JSON [`TrainState`] in the metadata) and
//! `checkpoints/best.safetensors`. Every file is written to a temporary file in the same folder and
//! renamed, so a crash never leaves a half-written file; the weights and the state both record
//! the step, and resuming refuses a pair whose steps differ.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle::{Device, Tensor};
use candle_nn::VarMap;

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

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Serialises named tensors with string metadata to safetensors bytes.
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
        .map_err(|e| Error::Checkpoint { path: PathBuf::from("<memory>"), reason: e.to_string() })
}

/// The variables of `varmap` as named tensors, sorted by name.
pub fn varmap_tensors(varmap: &VarMap) -> Result<Vec<(String, Tensor)>> {
    let data =
        varmap.data().lock().map_err(|_| Error::Config("variable map lock poisoned".into()))?;
    let mut v: Vec<(String, Tensor)> =
        data.iter().map(|(k, var)| (k.clone(), var.as_tensor().clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// Writes the weights of `varmap` atomically, recording `step` in the metadata.
pub fn save_weights(varmap: &VarMap, path: &Path, step: u64) -> Result<()> {
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("medseg_step".to_string(), step.to_string()),
    ]);
    write_atomic(path, &safetensors_bytes(&varmap_tensors(varmap)?, meta)?)
}

/// Reads the `medseg_step` metadata of a weights or state file.
pub fn read_step(path: &Path) -> Result<Option<u64>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(md.metadata().as_ref().and_then(|m| m.get("medseg_step")).and_then(|s| s.parse().ok()))
}

/// Loads weights saved by [`save_weights`] (or any safetensors file with the same names) into
/// the existing variables of `varmap`; every variable must be present with its shape.
pub fn load_weights(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors = crate::optim::load_tensors(path, &Device::Cpu)?;
    let data =
        varmap.data().lock().map_err(|_| Error::Config("variable map lock poisoned".into()))?;
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("weight {name:?} missing"),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "weight {name:?} has shape {:?}, model has {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Writes optimiser moments and the [`TrainState`] atomically.
pub fn save_state(path: &Path, moments: &[(String, Tensor)], state: &TrainState) -> Result<()> {
    let json = serde_json::to_string(state)
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
    let meta = HashMap::from([
        ("medseg_step".to_string(), state.step.to_string()),
        ("medseg_state".to_string(), json),
    ]);
    write_atomic(path, &safetensors_bytes(moments, meta)?)
}

/// Reads a state file: the moments and the [`TrainState`].
pub fn load_state(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, TrainState)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
    let json = md.metadata().as_ref().and_then(|m| m.get("medseg_state")).ok_or_else(|| {
        Error::Checkpoint { path: path.to_path_buf(), reason: "no medseg_state metadata".into() }
    })?;
    let state: TrainState = serde_json::from_str(json)
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
    let tensors = crate::optim::load_tensors(path, device)?;
    Ok((tensors, state))
}
