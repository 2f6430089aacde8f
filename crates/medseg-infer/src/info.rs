//! What a model source holds, without loading its weights: the architecture, the parameter count
//! (from shapes only), the classes, the preprocessing, the sliding window, the merge order and its
//! source, a package's provenance, and a MONAI bundle's postprocessing and default resampling. `medseg info` prints [`ModelInfo`] as text
//! ([`std::fmt::Display`]) or JSON (serde).
use std::fmt;
use std::path::PathBuf;

use medseg_models::param_count::recording_var_builder;

use crate::invert::Resample;
use crate::model::ModelConfig;
use crate::package::{MergeOrderRecord, Provenance, read_header_metadata, read_package};
use crate::preprocess::{Pipeline, Preprocessing};
use crate::sliding_window::SlidingWindowConfig;
use crate::source::ModelSource;
use crate::{Error, Result};

/// A summary of one model source.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    /// `run folder`, `package`, `MONAI bundle` or `weights`.
    pub source: &'static str,
    /// The path given.
    pub path: PathBuf,
    /// The weights file.
    pub weights: PathBuf,
    /// Where the configuration comes from.
    pub config_origin: String,
    /// The network (MONAI argument names for Swin UNETR).
    pub model: ModelConfig,
    /// Trainable parameters (PyTorch `numel` sum), counted from shapes.
    pub parameters: usize,
    /// Class names by label value, when the source records them.
    pub classes: Option<Vec<String>>,
    /// Preprocessing.
    pub preprocessing: Preprocessing,
    /// Sliding window.
    pub window: SlidingWindowConfig,
    /// Patch-merging order and its source (Swin UNETR).
    pub merge_order: Option<MergeOrderRecord>,
    /// A package's provenance.
    pub provenance: Option<Provenance>,
    /// How predictions return to the input grid by default (`medseg predict --resample`).
    pub resample: Resample,
    /// A bundle's `monai_version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monai_version: Option<String>,
    /// A bundle's postprocessing, one entry per line, and the preprocessing entries medseg's
    /// reader covers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bundle_notes: Vec<String>,
}

/// Describes `source` (reads configurations and file headers, never the tensors).
pub fn describe(source: &ModelSource) -> Result<ModelInfo> {
    let resolved = source.resolve()?;
    let (kind, path, overridden) = match source {
        ModelSource::RunFolder { dir, config } => ("run folder", dir, config.is_some()),
        ModelSource::Package { path, config } => ("package", path, config.is_some()),
        ModelSource::Weights { path, .. } => ("weights", path, true),
        ModelSource::Bundle { dir } => ("MONAI bundle", dir, false),
    };
    let bundle = match source {
        ModelSource::Bundle { dir } => Some(crate::bundle::read_bundle(dir)?),
        _ => None,
    };
    let package = match source {
        ModelSource::Package { path, .. } => Some(read_package(path)?),
        _ => None,
    };
    let config = &resolved.config;
    let nc = config.model.out_channels();
    let classes = match (&package, source) {
        (Some(p), _) if !overridden => Some(p.classes.clone()),
        (None, ModelSource::Bundle { .. }) => bundle.as_ref().and_then(|b| b.classes.clone()),
        (None, ModelSource::RunFolder { dir, .. }) => {
            Some(crate::package::run_class_names(dir, nc))
        }
        _ => None,
    };
    let merge_order = match (&config.model, &package) {
        (ModelConfig::TinyUnet(_), _) => None,
        (ModelConfig::SwinUnetr(_), Some(p)) if !overridden => p.merge_order.clone(),
        (ModelConfig::SwinUnetr(c), None) if resolved.merge_order_note.is_some() => {
            Some(MergeOrderRecord {
                order: c.resolved_merge_order(),
                source: resolved.merge_order_note.clone().unwrap_or_default(),
            })
        }
        (ModelConfig::SwinUnetr(c), _) => {
            let recorded = match c.merge_order {
                Some(_) => None,
                None => weights_merge_order(&resolved.weights),
            };
            Some(match recorded {
                Some(order) => MergeOrderRecord { order, source: "weights' metadata".into() },
                None => {
                    let (order, from) = c.merge_order_with_source();
                    MergeOrderRecord { order, source: from.into() }
                }
            })
        }
    };
    let parameters = parameter_count(&config.model).map_err(|e| Error::Model {
        path: path.clone(),
        reason: format!("counting the parameters of the config: {e}"),
    })?;
    Ok(ModelInfo {
        source: kind,
        path: path.clone(),
        weights: resolved.weights.clone(),
        config_origin: resolved.origin.clone(),
        model: config.model.clone(),
        parameters,
        classes,
        preprocessing: config.preprocessing.clone(),
        window: config.window.clone(),
        merge_order,
        provenance: package.filter(|_| !overridden).map(|p| p.provenance),
        resample: resolved.resample,
        monai_version: bundle.as_ref().and_then(|b| b.monai_version.clone()),
        bundle_notes: bundle
            .map(|b| {
                let post = b.postprocessing.iter().map(|l| format!("postprocessing: {l}"));
                let reader = b.no_ops.iter().map(|l| format!("preprocessing: {l}"));
                reader.chain(post).collect()
            })
            .unwrap_or_default(),
    })
}

/// The `merge_order` a `.safetensors` file records in its metadata.
fn weights_merge_order(weights: &std::path::Path) -> Option<medseg_models::MergeOrder> {
    if weights.extension().is_none_or(|e| e != "safetensors") {
        return None;
    }
    let md = read_header_metadata(weights).ok()?;
    medseg_models::MergeOrder::parse(md.get("merge_order")?).ok()
}

/// Trainable parameters of the model `cfg` describes, from a shape-recording builder (nothing
/// is allocated).
pub fn parameter_count(cfg: &ModelConfig) -> Result<usize> {
    let (vb, rec) = recording_var_builder();
    cfg.build(vb)?;
    Ok(rec.shapes().values().map(|s| s.iter().product::<usize>()).sum())
}

/// `1234567` → `1,234,567`.
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {}", self.source, self.path.display())?;
        writeln!(f, "  weights        {}", self.weights.display())?;
        writeln!(f, "  config         {}", self.config_origin)?;
        match &self.model {
            ModelConfig::TinyUnet(c) => writeln!(
                f,
                "  architecture   tiny_unet: features {}, levels {}, in {} → out {} channels",
                c.features, c.levels, c.in_channels, c.out_channels
            )?,
            ModelConfig::SwinUnetr(c) => {
                let name = if c.use_moe { "Swin SMT" } else { "Swin UNETR" };
                writeln!(
                    f,
                    "  architecture   swin_unetr ({name}{}): feature size {}, depths {:?}, \
                     heads {:?}, window {:?}, patch {}, in {} → out {} channels",
                    if c.use_v2 { " v2" } else { "" },
                    c.feature_size,
                    c.depths,
                    c.num_heads,
                    c.window(),
                    c.patch_size,
                    c.in_channels,
                    c.out_channels
                )?;
                if c.use_moe {
                    writeln!(
                        f,
                        "  MoE            {} experts in the last {} stages, {:?}, padding {:?}{}",
                        c.num_experts,
                        c.num_layers_with_moe,
                        c.moe_kind,
                        c.moe_padding,
                        c.slots_per_expert
                            .map(|s| format!(", {s} slots/expert"))
                            .unwrap_or_default()
                    )?;
                }
            }
        }
        writeln!(f, "  parameters     {}", grouped(self.parameters))?;
        match &self.classes {
            Some(c) => writeln!(f, "  classes        {}: {}", c.len(), c.join(", "))?,
            None => {
                writeln!(f, "  classes        {} (names not recorded)", self.model.out_channels())?
            }
        }
        let p = &self.preprocessing;
        match p.pipeline {
            Pipeline::Btcv => writeln!(
                f,
                "  preprocessing  btcv: Orientation RAS, Spacing {:?} mm, intensity [{}, {}] → \
                 [0, 1], CropForeground",
                p.pixdim, p.a_min, p.a_max
            )?,
            Pipeline::Smt => writeln!(f, "  preprocessing  smt (crop divisible by {:?})", p.roi)?,
            Pipeline::Monai => {
                writeln!(f, "  preprocessing  monai ({} steps)", p.steps.len())?;
                for (i, s) in p.steps.iter().enumerate() {
                    writeln!(f, "                 {}. {}", i + 1, s.describe())?;
                }
            }
        }
        let w = &self.window;
        writeln!(
            f,
            "  sliding window roi {:?}, overlap {}, mode {:?}, sigma scale {}, sw batch {}",
            w.roi, w.overlap, w.mode, w.sigma_scale, w.sw_batch_size
        )?;
        if let Some(m) = &self.merge_order {
            writeln!(f, "  merge order    {:?} ({})", m.order, m.source)?;
        }
        writeln!(f, "  resample       {} (medseg predict --resample)", self.resample.as_str())?;
        if let Some(v) = &self.monai_version {
            writeln!(f, "  MONAI version  {v}")?;
        }
        for (i, note) in self.bundle_notes.iter().enumerate() {
            writeln!(f, "  {}{note}", if i == 0 { "bundle         " } else { "               " })?;
        }
        if let Some(p) = &self.provenance {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "not recorded".into());
            writeln!(f, "  provenance     run {}", opt(p.run.clone()))?;
            writeln!(f, "                 weights {}", opt(p.weights_file.clone()))?;
            writeln!(f, "                 git {}", opt(p.git_commit.clone()))?;
            writeln!(
                f,
                "                 training steps {}, weights step {}",
                opt(p.training_steps.map(|s| s.to_string())),
                opt(p.weights_step.map(|s| s.to_string()))
            )?;
            writeln!(
                f,
                "                 best validation Dice {} (step {})",
                opt(p.best_val_dice.map(|d| format!("{d:.4}"))),
                opt(p.best_step.map(|s| s.to_string()))
            )?;
            writeln!(
                f,
                "                 exported {} by medseg {}",
                p.exported_at, p.medseg_version
            )?;
        }
        Ok(())
    }
}
