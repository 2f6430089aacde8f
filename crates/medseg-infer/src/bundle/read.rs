//! A MONAI bundle folder read into medseg settings: [`read_bundle`] → [`Bundle`].
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medseg_models::{MergeOrder, SwinUnetrConfig};
use serde_json::Value;

use super::config::MonaiConfig;
use super::transforms::{self, Entry, Post, Pre};
use crate::config::InferenceConfig;
use crate::invert::Resample;
use crate::model::ModelConfig;
use crate::preprocess::{Pipeline, Preprocessing};
use crate::steps::Step;
use crate::{Error, Result};

/// The inference config of a bundle, relative to its folder.
pub const INFERENCE_JSON: &str = "configs/inference.json";
/// The metadata of a bundle, relative to its folder.
pub const METADATA_JSON: &str = "configs/metadata.json";

/// Arguments of MONAI's `SwinUNETR.__init__` that medseg implements.
const SWIN_UNETR_ARGS: &[&str] = &[
    "in_channels",
    "out_channels",
    "img_size",
    "patch_size",
    "depths",
    "num_heads",
    "window_size",
    "qkv_bias",
    "mlp_ratio",
    "feature_size",
    "norm_name",
    "drop_rate",
    "attn_drop_rate",
    "dropout_path_rate",
    "normalize",
    "patch_norm",
    "use_checkpoint",
    "spatial_dims",
    "downsample",
    "use_v2",
    "use_flash_attention",
];

/// Everything medseg takes from a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The bundle folder.
    pub dir: PathBuf,
    /// The weights: `models/model.pt` (a state dict), else `models/model.safetensors`.
    pub weights: PathBuf,
    /// The network (`network_def`), merge order filled in.
    pub model: SwinUnetrConfig,
    /// Where the merge order comes from.
    pub merge_order_from: String,
    /// The preprocessing steps, in the bundle's order.
    pub steps: Vec<Step>,
    /// Preprocessing entries that medseg's reader covers (LoadImage, EnsureChannelFirst, …).
    pub no_ops: Vec<String>,
    /// The sliding window (`inferer`).
    pub window: crate::SlidingWindowConfig,
    /// The postprocessing, one entry per line.
    pub postprocessing: Vec<String>,
    /// The resampling its postprocessing implies.
    pub resample: Resample,
    /// Class names from the metadata, when it has one per output channel.
    pub classes: Option<Vec<String>>,
    /// `monai_version` of the metadata.
    pub monai_version: Option<String>,
}

/// A folder with `configs/inference.json` is a bundle.
pub fn is_bundle(dir: &Path) -> bool {
    dir.join(INFERENCE_JSON).is_file()
}

impl Bundle {
    /// The bundle as the model, preprocessing and window of a prediction (pipeline `monai`).
    pub fn inference_config(&self) -> InferenceConfig {
        let (mut a_min, mut a_max) = (0.0, 1.0);
        for s in &self.steps {
            if let Step::ScaleIntensityRange { a_min: lo, a_max: hi, .. } = s {
                (a_min, a_max) = (*lo, *hi);
            }
        }
        InferenceConfig {
            model: ModelConfig::SwinUnetr(Box::new(self.model.clone())),
            preprocessing: Preprocessing {
                pipeline: Pipeline::Monai,
                pixdim: self.steps.iter().find_map(Step::pixdim).unwrap_or([1.0; 3]),
                a_min,
                a_max,
                roi: self.window.roi,
                steps: self.steps.clone(),
            },
            window: self.window.clone(),
        }
    }
}

/// Reads the bundle in `dir`: `configs/inference.json` (`network_def`, `preprocessing`,
/// `inferer`, `postprocessing`), `configs/metadata.json` (`monai_version`, class names) and the
/// weights file. Nothing is loaded; every unsupported part is an error naming it and the file.
pub fn read_bundle(dir: &Path) -> Result<Bundle> {
    let model_err = |reason: String| Error::Model { path: dir.to_path_buf(), reason };
    let json = dir.join(INFERENCE_JSON);
    if !json.is_file() {
        let yaml = dir.join("configs/inference.yaml");
        return Err(model_err(if yaml.is_file() {
            format!(
                "{}: YAML bundle configs are not supported (convert it to JSON)",
                yaml.display()
            )
        } else {
            format!("no {INFERENCE_JSON}: not a MONAI bundle")
        }));
    }
    let mut overrides = BTreeMap::new();
    overrides.insert("bundle_root".to_string(), Value::String(dir.display().to_string()));
    let cfg = MonaiConfig::read(&json, overrides)?;
    let meta_path = dir.join(METADATA_JSON);
    let meta = if meta_path.is_file() {
        Some(MonaiConfig::read(&meta_path, BTreeMap::new())?)
    } else {
        None
    };
    let monai_version = match &meta {
        Some(m) => match m.get("monai_version")? {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(m.error("monai_version", format!("expected a string, got {v}"))),
            None => None,
        },
        None => None,
    };
    let before_1_5 = match &monai_version {
        Some(v) => Some(version_below(v, (1, 5)).ok_or_else(|| Error::Bundle {
            file: meta_path.clone(),
            key: "monai_version".into(),
            reason: format!("{v:?} is not a version like 1.0.1"),
        })?),
        None => None,
    };
    let mut model = network(&cfg)?;
    let merge_order_from = if model.downsample == "mergingv2" {
        "downsample \"mergingv2\"".to_string()
    } else {
        let legacy = before_1_5.unwrap_or(false);
        model.merge_order = Some(if legacy { MergeOrder::Legacy } else { MergeOrder::Fixed });
        match &monai_version {
            Some(v) if legacy => format!("monai_version {v} in {METADATA_JSON} (< 1.5: legacy)"),
            Some(v) => format!("monai_version {v} in {METADATA_JSON} (≥ 1.5: fixed)"),
            None => format!("no monai_version in {METADATA_JSON}: MONAI 1.6's fixed order"),
        }
    };
    let (steps, no_ops, image_key) = preprocessing(&cfg, before_1_5.unwrap_or(false))?;
    let window = transforms::inferer(&Entry::read(&cfg, "inferer")?)?;
    let post = postprocessing(&cfg, &image_key)?;
    let classes = meta.as_ref().and_then(|m| class_names(m, model.out_channels));
    Ok(Bundle {
        dir: dir.to_path_buf(),
        weights: weights(dir)?,
        model,
        merge_order_from,
        steps,
        no_ops,
        window,
        postprocessing: post.summary.clone(),
        resample: post.resample(),
        classes,
        monai_version,
    })
}

/// `major.minor[.patch…]` below `(major, minor)`; `None` when unparseable.
fn version_below(v: &str, bound: (u32, u32)) -> Option<bool> {
    let mut it = v.trim().split(['.', '+', '-', 'r', 'c']);
    let major: u32 = it.next()?.parse().ok()?;
    let minor: u32 = it.next()?.parse().ok()?;
    Some((major, minor) < bound)
}

/// `network_def` as a [`SwinUnetrConfig`] (`img_size` accepted and dropped, as MONAI < 1.5
/// used it only for checks).
fn network(cfg: &MonaiConfig) -> Result<SwinUnetrConfig> {
    let e = Entry::read(cfg, "network_def")?;
    if e.target != "SwinUNETR" {
        return Err(e.error("network not supported (medseg runs MONAI's SwinUNETR)"));
    }
    e.only(SWIN_UNETR_ARGS)?;
    let Some(Value::Object(map)) = cfg.get("network_def")? else {
        return Err(cfg.error("network_def", "expected an object"));
    };
    let args: serde_json::Map<String, Value> = map
        .into_iter()
        .filter(|(k, v)| SWIN_UNETR_ARGS.contains(&k.as_str()) && k != "img_size" && !v.is_null())
        .collect();
    let model: SwinUnetrConfig = serde_json::from_value(Value::Object(args))
        .map_err(|err| e.error(format!("arguments: {err}")))?;
    model.validate().map_err(|err| e.error(err))?;
    Ok(model)
}

/// The steps, no-op notes and image key of `preprocessing` (a `Compose` or a list).
fn preprocessing(cfg: &MonaiConfig, before_1_5: bool) -> Result<(Vec<Step>, Vec<String>, String)> {
    let ids = entry_ids(cfg, "preprocessing")?;
    let mut image_key = None;
    let (mut steps, mut no_ops) = (Vec::new(), Vec::new());
    for id in ids {
        let e = Entry::read(cfg, &id)?;
        if e.disabled() {
            continue;
        }
        if image_key.is_none() {
            image_key = Some(match e.get("keys") {
                Some(Value::String(k)) => k.clone(),
                Some(Value::Array(a)) => match a.first().and_then(Value::as_str) {
                    Some(k) => k.to_string(),
                    None => return Err(e.error("`keys` must name the image key")),
                },
                _ => "image".to_string(),
            });
        }
        let key = image_key.as_deref().unwrap_or("image");
        // MONAI < 1.5 defaulted CropForeground's allow_smaller to true.
        match transforms::preprocessing(&e, key, before_1_5)? {
            Pre::Step(s) => steps.push(s),
            Pre::NoOp(note) => no_ops.push(note),
        }
    }
    Ok((steps, no_ops, image_key.unwrap_or_else(|| "image".into())))
}

/// The postprocessing summary and the resampling it implies.
fn postprocessing(cfg: &MonaiConfig, image_key: &str) -> Result<Post> {
    let mut post = Post::default();
    for id in entry_ids(cfg, "postprocessing")? {
        transforms::postprocessing(cfg, &id, image_key, &mut post)?;
    }
    transforms::finish_post(cfg, &post)?;
    Ok(post)
}

/// The ids of the transform entries of `id`: `id::transforms::<i>` for a `Compose`, `id::<i>`
/// for a list (plain `@` references to another id are followed).
fn entry_ids(cfg: &MonaiConfig, id: &str) -> Result<Vec<String>> {
    let mut at = id.to_string();
    for _ in 0..16 {
        match cfg.raw(&at) {
            Some(Value::String(s)) if s.starts_with('@') => at = s[1..].to_string(),
            Some(Value::Array(a)) => {
                return Ok((0..a.len()).map(|i| format!("{at}::{i}")).collect());
            }
            Some(Value::Object(_)) => {
                let t = cfg.get(&format!("{at}::_target_"))?;
                let t = t.as_ref().and_then(Value::as_str).unwrap_or_default();
                if t.rsplit('.').next() != Some("Compose") {
                    return Err(cfg.error(&at, format!("expected a Compose or a list, got `{t}`")));
                }
                at = format!("{at}::transforms");
            }
            Some(v) => return Err(cfg.error(&at, format!("expected a transform list, got {v}"))),
            None => return Err(cfg.error(&at, "missing")),
        }
    }
    Err(cfg.error(id, "references nest too deep"))
}

/// Class names by channel from the metadata: `network_data_format.outputs.pred.channel_def`,
/// else the `N:name` items of `pred_classes` / `label_classes`; only when every channel is named.
pub fn class_names(meta: &MonaiConfig, n: usize) -> Option<Vec<String>> {
    let from_def = meta
        .raw("network_data_format::outputs::pred::channel_def")
        .and_then(Value::as_object)
        .and_then(|m| {
            (0..n).map(|c| m.get(&c.to_string())?.as_str().map(|s| s.trim().to_string())).collect()
        });
    if from_def.is_some() {
        return from_def;
    }
    for key in ["pred_classes", "label_classes"] {
        let Some(text) = meta.raw(key).and_then(Value::as_str) else { continue };
        let mut names: BTreeMap<usize, String> = BTreeMap::new();
        for item in text.split(',') {
            if let Some((num, name)) = item.split_once(':')
                && let Ok(c) = num.trim().rsplit(' ').next().unwrap_or_default().parse::<usize>()
            {
                names.insert(c, name.trim().to_string());
            }
        }
        let list: Option<Vec<String>> = (0..n).map(|c| names.get(&c).cloned()).collect();
        if list.is_some() {
            return list;
        }
    }
    None
}

/// The bundle's weights file; TorchScript is refused with a clear message.
fn weights(dir: &Path) -> Result<PathBuf> {
    for name in ["models/model.pt", "models/model.safetensors"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let ts = dir.join("models/model.ts");
    Err(Error::Model {
        path: dir.to_path_buf(),
        reason: if ts.is_file() {
            format!(
                "only {} (TorchScript) is present: TorchScript is not supported; medseg reads the \
                 state dict models/model.pt",
                ts.display()
            )
        } else {
            "no weights: expected models/model.pt (a state dict) or models/model.safetensors"
                .to_string()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(version_below("1.0.1", (1, 5)), Some(true));
        assert_eq!(version_below("1.4.0", (1, 5)), Some(true));
        assert_eq!(version_below("1.5.0", (1, 5)), Some(false));
        assert_eq!(version_below("1.6.1rc1", (1, 5)), Some(false));
        assert_eq!(version_below("2.0", (1, 5)), Some(false));
        assert_eq!(version_below("one", (1, 5)), None);
    }
}
