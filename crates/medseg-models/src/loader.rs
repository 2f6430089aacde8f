//! Checkpoint loading (safetensors, PyTorch `.pt`/`.pth` pickles read by candle without code
//! execution) and saving (safetensors with MONAI key names).
//!
//! Every key of a file goes through [`rename`], the single table that maps the key schemes in
//! the wild (swin-reference §1.13) onto MONAI `SwinUNETR.state_dict()` keys. Loading reports
//! unused tensors and parameters that were not found, and fails on a shape mismatch naming the
//! key; `relative_position_index` buffers are checked against the recomputed index.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::config::MergeOrder;

/// Loader errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read as safetensors or as a PyTorch pickle.
    #[error("reading checkpoint {path}: {source}")]
    Read {
        /// The checkpoint path.
        path: PathBuf,
        /// The underlying error.
        source: candle::Error,
    },
    /// A tensor's shape differs from the parameter's.
    #[error(
        "shape mismatch for {key} (file key {file_key}): model expects {expected:?}, file has {got:?}"
    )]
    ShapeMismatch {
        /// MONAI key of the parameter.
        key: String,
        /// Key as stored in the file.
        file_key: String,
        /// Parameter shape.
        expected: Vec<usize>,
        /// Tensor shape in the file.
        got: Vec<usize>,
    },
    /// Two file keys map to the same MONAI key.
    #[error("file keys {first} and {second} both map to {key}")]
    DuplicateKey {
        /// MONAI key.
        key: String,
        /// First file key.
        first: String,
        /// Second file key.
        second: String,
    },
    /// A stored `relative_position_index` differs from the recomputed one.
    #[error("{key}: stored relative_position_index differs from the recomputed one")]
    BadIndex {
        /// The buffer key.
        key: String,
    },
    /// Strict loading found missing parameters.
    #[error("{} parameters missing from the checkpoint, first: {}", missing.len(), missing.first().map(String::as_str).unwrap_or(""))]
    Missing {
        /// MONAI keys of the missing parameters.
        missing: Vec<String>,
    },
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle::Error),
}

/// Loader result.
pub type Result<T> = std::result::Result<T, Error>;

/// Name prefix of the Swin encoder's parameters in Swin UNETR, Swin SMT and `SslHead`: what
/// [`load_encoder`] fills.
pub const ENCODER_PREFIX: &str = "swinViT.";

/// Maps a checkpoint key onto a MONAI `SwinUNETR` key, or `None` for entries that are ignored.
///
/// | Scheme (in file) | MONAI key |
/// |---|---|
/// | `module.X` (DataParallel) | `X` (then the rules below) |
/// | `swin_vit.X` (research `--use_ssl_pretrained` rename) | `swinViT.X` |
/// | `patch_embed.X`, `layers{1-4}[c].X` (SSL `model_swinvit.pt`) | `swinViT.…` |
/// | `encoder.patch_embed.X` (DAE) | `swinViT.patch_embed.X` |
/// | `encoder.layersN.0.K.X` (DAE, one extra index) | `swinViT.layersN.0.X` |
/// | `….mlp.fc1.X` / `….mlp.fc2.X` (timm names) | `….mlp.linear1.X` / `….mlp.linear2.X` |
/// | `norm.{weight,bias}`, `swinViT.norm.*` (SSL final norm), `encoder.norm.*`, `encoder.mask_token` | ignored |
pub fn rename(key: &str) -> Option<String> {
    const IGNORED: [&str; 7] = [
        "norm.weight",
        "norm.bias",
        "swinViT.norm.weight",
        "swinViT.norm.bias",
        "encoder.norm.weight",
        "encoder.norm.bias",
        "encoder.mask_token",
    ];
    let k = key.strip_prefix("module.").unwrap_or(key);
    if IGNORED.contains(&k) {
        return None;
    }
    let k = if let Some(rest) = k.strip_prefix("swin_vit.") {
        format!("swinViT.{rest}")
    } else if k.starts_with("patch_embed.") || is_stage_key(k) {
        format!("swinViT.{k}")
    } else if let Some(rest) = k.strip_prefix("encoder.") {
        dae_key(rest)?
    } else {
        k.to_string()
    };
    Some(k.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2."))
}

/// `layers1.` … `layers4.` and `layers1c.` … `layers4c.` at the start of a key.
fn is_stage_key(k: &str) -> bool {
    [
        "layers1.",
        "layers2.",
        "layers3.",
        "layers4.",
        "layers1c.",
        "layers2c.",
        "layers3c.",
        "layers4c.",
    ]
    .iter()
    .any(|p| k.starts_with(p))
}

/// DAE (`filter_swinunetr`): `patch_embed.X` → `swinViT.patch_embed.X`;
/// `layersN.0.K.X` → `swinViT.layersN.0.X`.
fn dae_key(rest: &str) -> Option<String> {
    if rest.starts_with("patch_embed.") {
        return Some(format!("swinViT.{rest}"));
    }
    let mut parts = rest.splitn(4, '.');
    let (stage, zero, _extra, tail) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if !is_stage_key(&format!("{stage}.")) || zero != "0" {
        return None;
    }
    Some(format!("swinViT.{stage}.0.{tail}"))
}

/// What [`load_into_varmap`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// MONAI keys filled from the file.
    pub loaded: Vec<String>,
    /// Model parameters the file did not provide (left at their initial values).
    pub missing: Vec<String>,
    /// File keys that were not used (ignored by [`rename`] or not parameters of the model).
    pub unused: Vec<String>,
    /// `relative_position_index` buffers found and verified.
    pub buffers_checked: usize,
    /// `merge_order` recorded in safetensors metadata by [`save_safetensors`], if any.
    pub merge_order: Option<MergeOrder>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "loaded {} tensors, {} parameters missing, {} file tensors unused, {} index buffers checked",
            self.loaded.len(),
            self.missing.len(),
            self.unused.len(),
            self.buffers_checked
        )?;
        for m in &self.missing {
            writeln!(f, "  missing: {m}")?;
        }
        for u in &self.unused {
            writeln!(f, "  unused: {u}")?;
        }
        Ok(())
    }
}

/// A checkpoint read into memory: tensors by file key plus safetensors metadata.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// Tensors by key as stored in the file.
    pub tensors: BTreeMap<String, Tensor>,
    /// `merge_order` from the metadata written by [`save_safetensors`].
    pub merge_order: Option<MergeOrder>,
}

/// Reads `.safetensors` or a PyTorch pickle (`.pt`, `.pth`, `.bin`, `.ckpt`). Pickles may hold
/// the state dict directly or under `state_dict` or `model` (research trainer checkpoints, DAE).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let err = |source| Error::Read { path: path.to_path_buf(), source };
    let is_st = path.extension().is_some_and(|e| e == "safetensors");
    if is_st {
        let bytes = std::fs::read(path).map_err(|e| err(e.into()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(candle::Error::Msg(e.to_string())))?;
        let merge_order = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("merge_order"))
            .and_then(|s| MergeOrder::parse(s).ok());
        let tensors = candle::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(err)?;
        return Ok(Checkpoint { tensors: tensors.into_iter().collect(), merge_order });
    }
    let mut last = None;
    for key in [Some("state_dict"), Some("model"), None] {
        match candle::pickle::read_all_with_key(path, key) {
            Ok(v) if !v.is_empty() => {
                return Ok(Checkpoint { tensors: v.into_iter().collect(), merge_order: None });
            }
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(err(last.unwrap_or_else(|| candle::Error::Msg("no tensors found".into()))))
}

/// Fills the variables of `varmap` (built from a model with MONAI keys) from `ckpt`.
///
/// Every file key is mapped with [`rename`]. A shape mismatch is an error naming the key;
/// parameters not in the file are reported as `missing` (strict callers check
/// [`LoadReport::missing`] or use [`LoadReport::require_complete`]).
pub fn load_into_varmap(varmap: &VarMap, ckpt: &Checkpoint) -> Result<LoadReport> {
    let mut report = LoadReport { merge_order: ckpt.merge_order, ..LoadReport::default() };
    let mut by_monai: HashMap<String, (&String, &Tensor)> = HashMap::new();
    for (file_key, t) in &ckpt.tensors {
        match rename(file_key) {
            None => report.unused.push(file_key.clone()),
            Some(k) => {
                if let Some((first, _)) = by_monai.get(&k) {
                    return Err(Error::DuplicateKey {
                        key: k,
                        first: (*first).clone(),
                        second: file_key.clone(),
                    });
                }
                by_monai.insert(k, (file_key, t));
            }
        }
    }
    let data =
        varmap.data().lock().map_err(|_| candle::Error::Msg("varmap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        match by_monai.remove(name) {
            None => report.missing.push(name.clone()),
            Some((file_key, t)) => {
                if t.dims() != var.dims() {
                    return Err(Error::ShapeMismatch {
                        key: name.clone(),
                        file_key: file_key.clone(),
                        expected: var.dims().to_vec(),
                        got: t.dims().to_vec(),
                    });
                }
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                report.loaded.push(name.clone());
            }
        }
    }
    let mut rest: Vec<(String, (&String, &Tensor))> = by_monai.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, (file_key, t)) in rest {
        if k.ends_with("attn.relative_position_index") {
            check_index(&k, t)?;
            report.buffers_checked += 1;
        } else {
            report.unused.push(file_key.clone());
        }
    }
    report.unused.sort();
    Ok(report)
}

impl LoadReport {
    /// `Err(Error::Missing)` when any parameter was not found.
    pub fn require_complete(&self) -> Result<()> {
        if self.missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Missing { missing: self.missing.clone() })
        }
    }
}

/// Compares a stored `[N, N]` index with MONAI's for the cubic window `N = w³`.
fn check_index(key: &str, t: &Tensor) -> Result<()> {
    let (n, n2) = t.dims2()?;
    let w = (1..=n).find(|w| w * w * w >= n).unwrap_or(1);
    if n != n2 || w * w * w != n {
        return Ok(());
    }
    let stored = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    let expected = medseg_ops::relative_position_index([w; 3]);
    if stored.len() != expected.len() || stored.iter().zip(&expected).any(|(a, &b)| *a != b as i64)
    {
        return Err(Error::BadIndex { key: key.to_string() });
    }
    Ok(())
}

/// A `VarBuilder` over detached copies of the variables of `varmap` (sharing storage), for
/// inference: ops on these tensors record no autograd graph, so intermediate activations are
/// freed as soon as they are consumed instead of living until the output is dropped. The builder
/// is on the variables' device (CPU for an empty map).
pub fn frozen_var_builder(varmap: &VarMap) -> Result<candle_nn::VarBuilder<'static>> {
    let data =
        varmap.data().lock().map_err(|_| candle::Error::Msg("varmap lock poisoned".into()))?;
    let tensors: HashMap<String, Tensor> =
        data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
    // The builder copies every tensor to its device: use the variables' own, so CUDA weights stay
    // on the GPU.
    let device = tensors.values().next().map_or(Device::Cpu, |t| t.device().clone());
    Ok(candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &device))
}

/// A `VarBuilder` that creates the variables of `varmap` filled with zeros, whatever
/// initialisation the model asks for: for building a model whose weights are loaded next
/// ([`load_into_varmap`]), so no random initialisation is computed only to be overwritten
/// (62 M uniform draws for fs48).
pub fn zero_init_var_builder(
    varmap: &VarMap,
    dtype: DType,
    device: &Device,
) -> candle_nn::VarBuilder<'static> {
    /// `varmap` with every initialisation hint replaced by zeros.
    struct ZeroInit(VarMap);
    impl candle_nn::var_builder::SimpleBackend for ZeroInit {
        fn get(
            &self,
            s: candle::Shape,
            name: &str,
            _hint: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle::Result<Tensor> {
            self.0.get(s, name, candle_nn::Init::Const(0.0), dtype, dev)
        }

        fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle::Result<Tensor> {
            candle_nn::var_builder::SimpleBackend::get_unchecked(&self.0, name, dtype, dev)
        }

        fn contains_tensor(&self, name: &str) -> bool {
            candle_nn::var_builder::SimpleBackend::contains_tensor(&self.0, name)
        }
    }
    candle_nn::VarBuilder::from_backend(Box::new(ZeroInit(varmap.clone())), dtype, device.clone())
}

/// Reads `path` and loads it into `varmap` (see [`load_into_varmap`]).
pub fn load_file(varmap: &VarMap, path: &Path) -> Result<LoadReport> {
    load_into_varmap(varmap, &read_checkpoint(path)?)
}

/// Saves `varmap` as safetensors with MONAI key names, adding the `relative_position_index`
/// buffers (int64, as in MONAI's state dict) and `merge_order` metadata, so the file loads
/// with `SwinUNETR.load_state_dict(safetensors.torch.load_file(path))`.
pub fn save_safetensors(varmap: &VarMap, merge_order: MergeOrder, path: &Path) -> Result<()> {
    let err = |source| Error::Read { path: path.to_path_buf(), source };
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    {
        let data =
            varmap.data().lock().map_err(|_| candle::Error::Msg("varmap lock poisoned".into()))?;
        for (k, v) in data.iter() {
            tensors.insert(k.clone(), v.as_tensor().contiguous()?);
            if let Some(prefix) = k.strip_suffix("relative_position_bias_table") {
                let len = v.dim(0)?;
                let w = (1..=len).find(|w| (2 * w - 1).pow(3) >= len).unwrap_or(1);
                if (2 * w - 1).pow(3) == len {
                    let idx: Vec<i64> = medseg_ops::relative_position_index([w; 3])
                        .into_iter()
                        .map(i64::from)
                        .collect();
                    let n = w * w * w;
                    let t = Tensor::from_vec(idx, (n, n), &Device::Cpu)?;
                    tensors.insert(format!("{prefix}relative_position_index"), t);
                }
            }
        }
    }
    let order = match merge_order {
        MergeOrder::Legacy => "legacy",
        MergeOrder::Fixed => "fixed",
        MergeOrder::V2 => "v2",
    };
    let meta: HashMap<String, String> =
        [("merge_order".to_string(), order.to_string()), ("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect();
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta), &tmp)
        .map_err(|e| err(candle::Error::Msg(e.to_string())))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.into()))?;
    Ok(())
}

/// What [`load_encoder`] did: the [`LoadReport`] over the encoder (`swinViT.*`) parameters
/// plus the model parameters outside the encoder, which keep their initial values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncoderReport {
    /// `loaded` / `missing` over the encoder parameters; `unused` lists every file key that did
    /// not fill an encoder parameter (SSL heads, the reconstruction decoder, the SSL final norm).
    pub report: LoadReport,
    /// Parameters outside `swinViT.` (CNN encoder/decoder, output head) left as initialised.
    pub not_encoder: Vec<String>,
}

impl std::fmt::Display for EncoderReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.report;
        writeln!(
            f,
            "encoder: loaded {} of {} swinViT tensors ({} missing), {} file tensors unused, \
             {} index buffers checked, {} parameters outside the encoder left initialised",
            r.loaded.len(),
            r.loaded.len() + r.missing.len(),
            r.missing.len(),
            r.unused.len(),
            r.buffers_checked,
            self.not_encoder.len()
        )?;
        if let Some(m) = r.merge_order {
            writeln!(f, "  merge_order recorded in the file: {m:?}")?;
        }
        for m in &r.missing {
            writeln!(f, "  missing: {m}")?;
        }
        for u in &r.unused {
            writeln!(f, "  unused: {u}")?;
        }
        Ok(())
    }
}

/// Loads only the Swin encoder (`swinViT.*`) of `varmap` from a checkpoint: a medseg pretraining
/// checkpoint (SSLHead keys), MONAI's released `model_swinvit.pt` (`state_dict`, `module.`, no
/// `swinViT.` prefix, `fc1`/`fc2`, final `norm.*`), research pretraining runs (`module.swinViT.*`),
/// the DAE weights, or any Swin UNETR / Swin SMT checkpoint. Keys go through [`rename`].
///
/// A shape mismatch is an error naming the key; a file that fills no encoder parameter at all is
/// [`Error::Missing`] (research-contributions#268 loaded nothing silently).
pub fn load_encoder(varmap: &VarMap, path: &Path) -> Result<EncoderReport> {
    let ckpt = read_checkpoint(path)?;
    let mut enc_ckpt = Checkpoint { tensors: BTreeMap::new(), merge_order: ckpt.merge_order };
    let mut unused = Vec::new();
    for (k, t) in ckpt.tensors {
        match rename(&k) {
            Some(m) if m.starts_with(ENCODER_PREFIX) => {
                enc_ckpt.tensors.insert(k, t);
            }
            _ => unused.push(k),
        }
    }
    let enc_vars = VarMap::new();
    let mut not_encoder = Vec::new();
    {
        let src =
            varmap.data().lock().map_err(|_| candle::Error::Msg("varmap lock poisoned".into()))?;
        let mut dst = enc_vars
            .data()
            .lock()
            .map_err(|_| candle::Error::Msg("varmap lock poisoned".into()))?;
        for (k, v) in src.iter() {
            if k.starts_with(ENCODER_PREFIX) {
                // `Var` clones share storage: setting them fills `varmap`.
                dst.insert(k.clone(), v.clone());
            } else {
                not_encoder.push(k.clone());
            }
        }
    }
    not_encoder.sort();
    let mut report = load_into_varmap(&enc_vars, &enc_ckpt)?;
    if report.loaded.is_empty() {
        return Err(Error::Missing { missing: report.missing });
    }
    report.unused.extend(unused);
    report.unused.sort();
    Ok(EncoderReport { report, not_encoder })
}

#[cfg(test)]
mod tests {
    use super::rename;

    #[test]
    fn rename_table() {
        let cases: [(&str, Option<&str>); 14] = [
            (
                "swinViT.layers1.0.blocks.0.norm1.weight",
                Some("swinViT.layers1.0.blocks.0.norm1.weight"),
            ),
            ("module.swinViT.patch_embed.proj.weight", Some("swinViT.patch_embed.proj.weight")),
            ("module.patch_embed.proj.bias", Some("swinViT.patch_embed.proj.bias")),
            (
                "module.layers2.0.blocks.1.mlp.fc1.weight",
                Some("swinViT.layers2.0.blocks.1.mlp.linear1.weight"),
            ),
            (
                "layers4.0.blocks.0.mlp.fc2.bias",
                Some("swinViT.layers4.0.blocks.0.mlp.linear2.bias"),
            ),
            ("module.norm.weight", None),
            ("norm.bias", None),
            (
                "swin_vit.layers3.0.downsample.reduction.weight",
                Some("swinViT.layers3.0.downsample.reduction.weight"),
            ),
            ("module.encoder1.layer.conv1.conv.weight", Some("encoder1.layer.conv1.conv.weight")),
            ("encoder.patch_embed.proj.weight", Some("swinViT.patch_embed.proj.weight")),
            (
                "encoder.layers1.0.0.blocks.0.attn.qkv.weight",
                Some("swinViT.layers1.0.blocks.0.attn.qkv.weight"),
            ),
            ("encoder.mask_token", None),
            (
                "layers2c.0.layer.conv1.conv.weight",
                Some("swinViT.layers2c.0.layer.conv1.conv.weight"),
            ),
            (
                "swinViT.layers3.0.blocks.0.mlp.experts.3.0.weight",
                Some("swinViT.layers3.0.blocks.0.mlp.experts.3.0.weight"),
            ),
        ];
        for (k, want) in cases {
            assert_eq!(rename(k).as_deref(), want, "rename({k})");
        }
    }
}
