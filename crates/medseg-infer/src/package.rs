//! One-file model packages: a run's weights plus everything inference needs, in one
//! `.safetensors` file.
//!
//! The tensors are the run's weights under their checkpoint names, byte for byte. The
//! safetensors `__metadata__` (a string → string map) holds versioned JSON under these keys:
//!
//! | key | value |
//! |---|---|
//! | `medseg.format` | `"medseg-model/1"` (plain string; a reader refuses any other version) |
//! | `medseg.inference_config` | JSON of [`InferenceConfig`]: `model` (with the resolved `merge_order` for Swin UNETR), `data` (preprocessing), `inference` (sliding window) |
//! | `medseg.classes` | JSON array of the class names by label value (background first), `out_channels` long |
//! | `medseg.merge_order` | JSON `{"order": "legacy", "source": "…"}` or `null` for models without patch merging |
//! | `medseg.provenance` | JSON [`Provenance`]: run, git commit, steps, best validation Dice, export time, medseg version |
//!
//! Plus `format = "pt"` (safetensors' PyTorch convention) so that other tools load the tensors.
//! [`export_package`] writes a package atomically; [`read_package`] reads only the header (no
//! tensor data) and checks every key, so a malformed package is one error naming the file and
//! the key.
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle::Device;
use medseg_models::MergeOrder;

use crate::config::InferenceConfig;
use crate::model::ModelConfig;
use crate::source::ModelSource;
use crate::{Error, Result};

/// The format version this medseg writes and reads.
pub const FORMAT: &str = "medseg-model/1";
/// Metadata key of the format version.
pub const KEY_FORMAT: &str = "medseg.format";
/// Metadata key of the [`InferenceConfig`] JSON.
pub const KEY_INFERENCE_CONFIG: &str = "medseg.inference_config";
/// Metadata key of the class-name JSON array.
pub const KEY_CLASSES: &str = "medseg.classes";
/// Metadata key of the merge order and its source.
pub const KEY_MERGE_ORDER: &str = "medseg.merge_order";
/// Metadata key of the [`Provenance`] JSON.
pub const KEY_PROVENANCE: &str = "medseg.provenance";

/// The largest safetensors header accepted (safetensors' own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Where a package's weights come from.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    /// The run folder's name.
    pub run: Option<String>,
    /// The weights file inside the run folder (`checkpoints/best.safetensors`, …).
    pub weights_file: Option<String>,
    /// The git commit recorded in the run's `config.toml` header.
    pub git_commit: Option<String>,
    /// Optimiser steps of the run's newest complete checkpoint.
    pub training_steps: Option<u64>,
    /// The step recorded in the exported weights.
    pub weights_step: Option<u64>,
    /// Best mean validation Dice of the run.
    pub best_val_dice: Option<f64>,
    /// Step of the best validation Dice.
    pub best_step: Option<u64>,
    /// UTC time of the export, `YYYY-MM-DDTHH:MM:SSZ`.
    pub exported_at: String,
    /// The medseg version that exported it.
    pub medseg_version: String,
}

/// The merge order of a package and where it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MergeOrderRecord {
    /// The patch-merging order.
    pub order: MergeOrder,
    /// Where it came from at export (`config`, `weights' metadata`, `model's default`).
    pub source: String,
}

/// What a package's metadata holds.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageInfo {
    /// The package file.
    pub path: PathBuf,
    /// Model, preprocessing and sliding window.
    pub config: InferenceConfig,
    /// Class names by label value.
    pub classes: Vec<String>,
    /// Merge order (Swin UNETR) and its source.
    pub merge_order: Option<MergeOrderRecord>,
    /// Provenance.
    pub provenance: Provenance,
}

/// Exports the run in `run_dir` as one package file `out`: the config is resolved and the weights
/// are loaded into the model first (so a run whose weights do not fit its config is refused),
/// then the weights' tensors are written unchanged with the metadata, atomically.
/// `classes` overrides the class names the run recorded.
pub fn export_package(
    run_dir: &Path,
    out: &Path,
    classes: Option<Vec<String>>,
) -> Result<PackageInfo> {
    let resolved = ModelSource::RunFolder { dir: run_dir.to_path_buf(), config: None }.resolve()?;
    let weights = resolved.weights.clone();
    if same_file(&weights, out) {
        return Err(Error::Path(format!(
            "export output {} is the run's weights file",
            out.display()
        )));
    }
    let loaded = resolved.load(&Device::Cpu)?;
    let config = loaded.config;
    let merge_order = config.merge_order().map(|order| MergeOrderRecord {
        order,
        source: loaded.merge_order_from.unwrap_or("config").to_string(),
    });
    let nc = config.model.out_channels();
    let classes = match classes {
        Some(c) => c,
        None => run_class_names(run_dir, nc),
    };
    check_classes(&classes, nc).map_err(|reason| Error::Model { path: out.into(), reason })?;
    let provenance = run_provenance(run_dir, &weights);
    let info = PackageInfo { path: out.to_path_buf(), config, classes, merge_order, provenance };
    let bytes = std::fs::read(&weights).map_err(|e| Error::io(&weights, e))?;
    let tensors = candle::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        Error::Model { path: weights.clone(), reason: format!("reading the weights: {e}") }
    })?;
    drop(bytes);
    let mut tensors: Vec<(String, candle::Tensor)> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let data = medseg_run::checkpoint::safetensors_bytes(&tensors, metadata(&info)?)
        .map_err(|e| Error::Model { path: out.into(), reason: e.to_string() })?;
    medseg_run::write_atomic(out, &data)
        .map_err(|e| Error::Model { path: out.into(), reason: format!("writing: {e}") })?;
    Ok(info)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The metadata map of a package.
fn metadata(info: &PackageInfo) -> Result<HashMap<String, String>> {
    let json = |v: serde_json::Result<String>, key: &str| {
        v.map_err(|e| Error::Model { path: info.path.clone(), reason: format!("{key}: {e}") })
    };
    Ok(HashMap::from([
        ("format".into(), "pt".into()),
        (KEY_FORMAT.into(), FORMAT.into()),
        (
            KEY_INFERENCE_CONFIG.into(),
            json(serde_json::to_string(&info.config), KEY_INFERENCE_CONFIG)?,
        ),
        (KEY_CLASSES.into(), json(serde_json::to_string(&info.classes), KEY_CLASSES)?),
        (KEY_MERGE_ORDER.into(), json(serde_json::to_string(&info.merge_order), KEY_MERGE_ORDER)?),
        (KEY_PROVENANCE.into(), json(serde_json::to_string(&info.provenance), KEY_PROVENANCE)?),
    ]))
}

fn check_classes(classes: &[String], nc: usize) -> std::result::Result<(), String> {
    if classes.len() != nc {
        return Err(format!(
            "{} class names for a model with {nc} output channels: {}",
            classes.len(),
            classes.join(", ")
        ));
    }
    Ok(())
}

/// The class names a run recorded: the `dice_<name>` columns of its `metrics.csv` (foreground
/// classes), else `class_<c>`.
pub(crate) fn run_class_names(run_dir: &Path, nc: usize) -> Vec<String> {
    let generic = || (0..nc).map(|c| format!("class_{c}")).collect::<Vec<_>>();
    let Ok(text) = std::fs::read_to_string(run_dir.join("metrics.csv")) else {
        return generic();
    };
    let header = text.lines().next().unwrap_or_default();
    let fg: Vec<String> =
        header.split(',').filter_map(|c| c.strip_prefix("dice_")).map(String::from).collect();
    if fg.len() + 1 != nc {
        return generic();
    }
    std::iter::once("background".to_string()).chain(fg).collect()
}

#[derive(serde::Deserialize)]
struct RunState {
    step: u64,
    best_mean_dice: Option<f64>,
    best_step: Option<u64>,
}

/// What the run folder records about its weights (every field optional: an old or partial run
/// still exports).
fn run_provenance(run_dir: &Path, weights: &Path) -> Provenance {
    let git_commit = std::fs::read_to_string(run_dir.join("config.toml")).ok().and_then(|t| {
        t.lines()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| l.strip_prefix("# git "))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s != "unknown")
    });
    let state: Option<RunState> = medseg_run::checkpoint::resume_point(run_dir)
        .ok()
        .and_then(|p| medseg_run::checkpoint::read_metadata(&p.state).ok())
        .and_then(|md| md.get("medseg_state").and_then(|s| serde_json::from_str(s).ok()));
    let weights_step = medseg_run::checkpoint::read_step(weights).ok().flatten();
    Provenance {
        run: run_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
        weights_file: weights
            .strip_prefix(run_dir)
            .ok()
            .map(|p| p.display().to_string())
            .or_else(|| Some(weights.display().to_string())),
        git_commit,
        training_steps: state.as_ref().map(|s| s.step),
        weights_step,
        best_val_dice: state.as_ref().and_then(|s| s.best_mean_dice),
        best_step: state.as_ref().and_then(|s| s.best_step),
        exported_at: iso_now(),
        medseg_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn iso_now() -> String {
    let s = medseg_run::config::utc_stamp(); // YYYYMMDD-HHMMSS
    format!("{}-{}-{}T{}:{}:{}Z", &s[0..4], &s[4..6], &s[6..8], &s[9..11], &s[11..13], &s[13..15])
}

/// The string metadata of a safetensors file, reading only its header (its length is checked
/// against the file before it is read); an error names the file when it is not safetensors.
pub fn read_header_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bad = |reason: String| Error::Model { path: path.to_path_buf(), reason };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|e| bad(format!("not a safetensors file ({len} bytes, no header length): {e}")))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || n > len.saturating_sub(8) {
        return Err(bad(format!(
            "not a safetensors file: header length {n} for a file of {len} bytes (truncated?)"
        )));
    }
    let mut header = Vec::new();
    header.try_reserve_exact(n as usize).map_err(|e| bad(format!("header of {n} bytes: {e}")))?;
    f.take(n).read_to_end(&mut header).map_err(|e| Error::io(path, e))?;
    let h: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors file: unreadable header: {e}")))?;
    // The tensors must cover the data section exactly (a truncated file fails here, before any
    // tensor is read).
    let mut end = 0u64;
    for (name, t) in &h {
        if name == "__metadata__" {
            continue;
        }
        let e = t["data_offsets"][1].as_u64().ok_or_else(|| {
            bad(format!("not a safetensors file: tensor {name:?} has no data_offsets"))
        })?;
        end = end.max(e);
    }
    if end != len - 8 - n {
        return Err(bad(format!(
            "truncated or padded: its tensors need {end} bytes of data, the file has {} \
             after the header",
            len - 8 - n
        )));
    }
    let metadata = match h.get("__metadata__") {
        None => HashMap::new(),
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| bad(format!("unreadable __metadata__ (not strings): {e}")))?,
    };
    Ok(metadata)
}

/// Whether the `.safetensors` file `path` is a medseg package (its metadata has
/// `medseg.format`). Errors: the file is unreadable or not safetensors.
pub fn is_package(path: &Path) -> Result<bool> {
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Ok(false);
    }
    Ok(read_header_metadata(path)?.contains_key(KEY_FORMAT))
}

/// Reads and checks a package's metadata (no tensor data is read).
pub fn read_package(path: &Path) -> Result<PackageInfo> {
    let md = read_header_metadata(path)?;
    let err = |key: &str, reason: String| Error::Package {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let get = |key: &str| md.get(key).ok_or_else(|| err(key, "missing".into()));
    let format = get(KEY_FORMAT)?;
    if format != FORMAT {
        return Err(err(
            KEY_FORMAT,
            format!("unknown package format {format:?} (this medseg reads {FORMAT:?})"),
        ));
    }
    fn parse<T: serde::de::DeserializeOwned>(s: &str) -> std::result::Result<T, String> {
        serde_json::from_str(s).map_err(|e| format!("malformed JSON: {e}"))
    }
    let config: InferenceConfig =
        parse(get(KEY_INFERENCE_CONFIG)?).map_err(|r| err(KEY_INFERENCE_CONFIG, r))?;
    config.validate().map_err(|e| err(KEY_INFERENCE_CONFIG, e.to_string()))?;
    let classes: Vec<String> = parse(get(KEY_CLASSES)?).map_err(|r| err(KEY_CLASSES, r))?;
    check_classes(&classes, config.model.out_channels()).map_err(|r| err(KEY_CLASSES, r))?;
    let merge_order: Option<MergeOrderRecord> =
        parse(get(KEY_MERGE_ORDER)?).map_err(|r| err(KEY_MERGE_ORDER, r))?;
    match (&config.model, &merge_order) {
        (ModelConfig::SwinUnetr(c), Some(m)) if c.merge_order.is_some_and(|o| o != m.order) => {
            return Err(err(
                KEY_MERGE_ORDER,
                format!("{:?} disagrees with the config's {:?}", m.order, c.merge_order),
            ));
        }
        _ => {}
    }
    let provenance: Provenance = parse(get(KEY_PROVENANCE)?).map_err(|r| err(KEY_PROVENANCE, r))?;
    Ok(PackageInfo { path: path.to_path_buf(), config, classes, merge_order, provenance })
}
