//! MONAI transform and inferer entries of a bundle config turned into medseg settings: the
//! preprocessing ([`Step`]s), the sliding window, and the postprocessing's resampling mode.
//! Every argument is checked against the ones medseg implements; anything else is an error
//! naming the transform, the argument and the file.
use serde_json::{Map, Value};

use medseg_data::spatial::{Interp, Padding};

use super::config::MonaiConfig;
use crate::Result;
use crate::invert::Resample;
use crate::sliding_window::{BlendMode, SlidingWindowConfig};
use crate::steps::Step;

/// Keys every transform entry may carry.
const COMMON: &[&str] =
    &["_target_", "_disabled_", "_desc_", "_requires_", "keys", "allow_missing_keys", "lazy"];

/// One `{"_target_": …}` entry, resolved.
pub(super) struct Entry<'a> {
    cfg: &'a MonaiConfig,
    /// Config id of the entry (`preprocessing::transforms::3`).
    pub id: String,
    /// `_target_` without its module path (`Spacingd`).
    pub target: String,
    map: Map<String, Value>,
}

impl<'a> Entry<'a> {
    /// Resolves the entry at `id` (an object with `_target_`).
    pub fn read(cfg: &'a MonaiConfig, id: &str) -> Result<Self> {
        let v = cfg.require(id)?;
        let Value::Object(map) = v else {
            return Err(cfg.error(id, "expected an object with `_target_`"));
        };
        let target = match map.get("_target_") {
            Some(Value::String(t)) => t.rsplit('.').next().unwrap_or(t).to_string(),
            _ => return Err(cfg.error(id, "expected a string `_target_`")),
        };
        Ok(Entry { cfg, id: id.to_string(), target, map })
    }

    /// An error about this entry.
    pub fn error(&self, reason: impl std::fmt::Display) -> crate::Error {
        self.cfg.error(&self.id, format!("{}: {reason}", self.target))
    }

    /// `_disabled_: true`.
    pub fn disabled(&self) -> bool {
        matches!(self.map.get("_disabled_"), Some(Value::Bool(true)))
    }

    /// Errors on any argument outside `COMMON` and `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<()> {
        for k in self.map.keys() {
            if !COMMON.contains(&k.as_str()) && !allowed.contains(&k.as_str()) {
                return Err(self.error(format!(
                    "argument `{k}` is not supported (medseg reads {})",
                    if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                )));
            }
        }
        Ok(())
    }

    /// The raw (resolved) argument; JSON `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A number argument.
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64().ok_or_else(|| self.error(format!("`{key}` must be a number, got {v}")))
            })
            .transpose()
    }

    /// A boolean argument.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.error(format!("`{key}` must be true or false, got {v}")))
            })
            .transpose()
    }

    /// A string argument.
    pub fn str(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.error(format!("`{key}` must be a string, got {v}")))
            })
            .transpose()
    }

    /// A number or a list of 3 numbers.
    pub fn f64x3(&self, key: &str) -> Result<Option<[f64; 3]>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let bad = || self.error(format!("`{key}` must be a number or 3 numbers, got {v}"));
        match v {
            Value::Number(n) => Ok(Some([n.as_f64().ok_or_else(bad)?; 3])),
            Value::Array(a) if a.len() == 3 => {
                let mut out = [0.0; 3];
                for (o, x) in out.iter_mut().zip(a) {
                    *o = x.as_f64().ok_or_else(bad)?;
                }
                Ok(Some(out))
            }
            _ => Err(bad()),
        }
    }

    /// A non-negative integer or a list of 3.
    pub fn usize3(&self, key: &str) -> Result<Option<[usize; 3]>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let bad = || self.error(format!("`{key}` must be an integer ≥ 0 or 3 of them, got {v}"));
        let one = |x: &Value| x.as_u64().and_then(|u| usize::try_from(u).ok()).ok_or_else(bad);
        match v {
            Value::Array(a) if a.len() == 3 => Ok(Some([one(&a[0])?, one(&a[1])?, one(&a[2])?])),
            Value::Array(_) => Err(bad()),
            x => Ok(Some([one(x)?; 3])),
        }
    }

    /// Errors unless `key` is absent or equals `want`.
    pub fn must_be(&self, key: &str, want: &Value) -> Result<()> {
        match self.get(key) {
            Some(v) if v != want => {
                Err(self.error(format!("`{key}` {v} is not supported (only {want})")))
            }
            _ => Ok(()),
        }
    }

    /// Errors unless the dictionary transform's `keys` include `image_key`.
    pub fn keys_include(&self, image_key: &str) -> Result<()> {
        let ok = match self.get("keys") {
            None => !self.target.ends_with('d'),
            Some(Value::String(s)) => s == image_key,
            Some(Value::Array(a)) => a.iter().any(|k| k.as_str() == Some(image_key)),
            Some(_) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(self.error(format!("`keys` must include the image key {image_key:?}")))
        }
    }
}

/// MONAI transform names medseg reads in `preprocessing` (each also with the `d` suffix).
pub const PREPROCESSING: &[&str] = &[
    "LoadImage",
    "EnsureChannelFirst",
    "EnsureType",
    "Orientation",
    "Spacing",
    "ScaleIntensityRange",
    "CropForeground",
    "NormalizeIntensity",
];

/// The transform name without a dictionary `d` suffix, when medseg knows it.
fn base_name<'n>(target: &'n str, known: &[&str]) -> Option<&'n str> {
    if known.contains(&target) {
        return Some(target);
    }
    target.strip_suffix('d').filter(|b| known.contains(b))
}

/// What one preprocessing entry is for medseg.
pub(super) enum Pre {
    /// A step that changes the image.
    Step(Step),
    /// Reading, channel and type handling: done by medseg's reader (the note says how).
    NoOp(String),
}

/// Turns a preprocessing entry into a [`Pre`]; `allow_smaller` is the `CropForeground` default
/// of the bundle's MONAI version.
pub(super) fn preprocessing(e: &Entry<'_>, image_key: &str, allow_smaller: bool) -> Result<Pre> {
    let Some(name) = base_name(&e.target, PREPROCESSING) else {
        return Err(e.error(format!(
            "transform not supported in preprocessing (medseg reads {}, each also with the `d` \
             suffix)",
            PREPROCESSING.join(", ")
        )));
    };
    e.keys_include(image_key)?;
    Ok(match name {
        "LoadImage" => {
            e.only(&[
                "reader",
                "image_only",
                "ensure_channel_first",
                "dtype",
                "meta_keys",
                "meta_key_postfix",
                "overwriting",
                "simple_keys",
                "prune_meta_pattern",
                "prune_meta_sep",
                "expanduser",
            ])?;
            let reader = e.str("reader")?.unwrap_or_else(|| "default".into());
            Pre::NoOp(format!("LoadImage (reader {reader}): medseg's NIfTI/DICOM reader"))
        }
        "EnsureChannelFirst" => {
            e.only(&["channel_dim", "strict_check", "meta_keys", "meta_key_postfix"])?;
            if let Some(c) = e.get("channel_dim").filter(|c| c.as_str() != Some("no_channel")) {
                return Err(e.error(format!("`channel_dim` {c}: medseg reads 3-D images only")));
            }
            Pre::NoOp("EnsureChannelFirst: single-channel 3-D input".into())
        }
        "EnsureType" => {
            e.only(&["data_type", "dtype", "device", "wrap_sequence", "track_meta"])?;
            Pre::NoOp("EnsureType: float32 throughout".into())
        }
        "Orientation" => {
            e.only(&["axcodes", "as_closest_canonical", "labels"])?;
            e.must_be("as_closest_canonical", &Value::Bool(false))?;
            let ras = serde_json::json!([["L", "R"], ["P", "A"], ["I", "S"]]);
            e.must_be("labels", &ras)?;
            let axcodes =
                e.str("axcodes")?.ok_or_else(|| e.error("`axcodes` is required by medseg"))?;
            Pre::Step(Step::Orientation { axcodes })
        }
        "Spacing" => {
            e.only(&[
                "pixdim",
                "mode",
                "padding_mode",
                "align_corners",
                "diagonal",
                "scale_extent",
                "recompute_affine",
                "min_pixdim",
                "max_pixdim",
                "dtype",
                "ensure_same_shape",
            ])?;
            for flag in ["align_corners", "diagonal", "scale_extent", "recompute_affine"] {
                e.must_be(flag, &Value::Bool(false))?;
            }
            for absent in ["min_pixdim", "max_pixdim"] {
                if e.get(absent).is_some() {
                    return Err(e.error(format!("`{absent}` is not supported")));
                }
            }
            let pixdim = e.f64x3("pixdim")?.ok_or_else(|| e.error("`pixdim` is required"))?;
            let mode = match e.str("mode")?.as_deref() {
                None | Some("bilinear") => Interp::Linear,
                Some("nearest") => Interp::Nearest,
                Some(m) => return Err(e.error(format!("`mode` {m:?}: only bilinear or nearest"))),
            };
            let padding = padding(e)?;
            let step = Step::Spacing { pixdim, mode, padding };
            step.validate().map_err(|err| e.error(err))?;
            Pre::Step(step)
        }
        "ScaleIntensityRange" => {
            e.only(&["a_min", "a_max", "b_min", "b_max", "clip", "dtype"])?;
            let need = |k: &str| e.f64(k)?.ok_or_else(|| e.error(format!("`{k}` is required")));
            let (a_min, a_max) = (need("a_min")?, need("a_max")?);
            let clip = e.bool("clip")?.unwrap_or(false);
            let (b_min, b_max) = match (e.f64("b_min")?, e.f64("b_max")?) {
                (Some(lo), Some(hi)) => (lo, hi),
                // MONAI skips the output scaling: the same as [0, 1]; clipping needs both.
                (None, None) if !clip => (0.0, 1.0),
                _ => return Err(e.error("give both `b_min` and `b_max` (or neither, unclipped)")),
            };
            let step = Step::ScaleIntensityRange {
                a_min: a_min as f32,
                a_max: a_max as f32,
                b_min: b_min as f32,
                b_max: b_max as f32,
                clip,
            };
            step.validate().map_err(|err| e.error(err))?;
            Pre::Step(step)
        }
        "CropForeground" => {
            e.only(&[
                "source_key",
                "select_fn",
                "channel_indices",
                "margin",
                "allow_smaller",
                "k_divisible",
                "mode",
                "start_coord_key",
                "end_coord_key",
                "return_coords",
            ])?;
            if let Some(k) = e.str("source_key")?
                && k != image_key
            {
                return Err(e.error(format!("`source_key` {k:?} must be the image {image_key:?}")));
            }
            if e.get("select_fn").is_some() || e.get("channel_indices").is_some() {
                return Err(
                    e.error("only the default `select_fn` (x > 0) on the image is supported")
                );
            }
            e.must_be("mode", &Value::String("constant".into()))?;
            e.must_be("return_coords", &Value::Bool(false))?;
            let step = Step::CropForeground {
                margin: e.usize3("margin")?.unwrap_or([0; 3]),
                allow_smaller: e.bool("allow_smaller")?.unwrap_or(allow_smaller),
                k_divisible: e.usize3("k_divisible")?.unwrap_or([1; 3]),
            };
            step.validate().map_err(|err| e.error(err))?;
            Pre::Step(step)
        }
        "NormalizeIntensity" => {
            e.only(&["subtrahend", "divisor", "nonzero", "channel_wise", "dtype"])?;
            let step = Step::NormalizeIntensity {
                subtrahend: e.f64("subtrahend")?.map(|v| v as f32),
                divisor: e.f64("divisor")?.map(|v| v as f32),
                nonzero: e.bool("nonzero")?.unwrap_or(false),
            };
            step.validate().map_err(|err| e.error(err))?;
            Pre::Step(step)
        }
        other => return Err(e.error(format!("internal: unhandled transform {other}"))),
    })
}

/// `padding_mode` of a spacing.
fn padding(e: &Entry<'_>) -> Result<Padding> {
    Ok(match e.str("padding_mode")?.as_deref() {
        None | Some("border") => Padding::Border,
        Some("zeros") => Padding::Zeros,
        Some("reflection") => Padding::Reflection,
        Some(m) => {
            return Err(e.error(format!("`padding_mode` {m:?}: only border, zeros or reflection")));
        }
    })
}

/// The `SlidingWindowInferer` entry.
pub(super) fn inferer(e: &Entry<'_>) -> Result<SlidingWindowConfig> {
    if e.target != "SlidingWindowInferer" {
        return Err(e.error("inferer not supported (medseg runs SlidingWindowInferer)"));
    }
    e.only(&[
        "roi_size",
        "sw_batch_size",
        "overlap",
        "mode",
        "sigma_scale",
        "padding_mode",
        "cval",
        "sw_device",
        "device",
        "progress",
        "cache_roi_weight_map",
        "cpu_thresh",
        "buffer_steps",
        "buffer_dim",
        "with_coord",
    ])?;
    e.must_be("padding_mode", &Value::String("constant".into()))?;
    e.must_be("with_coord", &Value::Bool(false))?;
    if let Some(c) = e.f64("cval")?
        && c != 0.0
    {
        return Err(e.error(format!("`cval` {c}: only 0")));
    }
    let roi = e.usize3("roi_size")?.ok_or_else(|| e.error("`roi_size` is required"))?;
    let equal = |key: &str, default: f64| -> Result<f64> {
        match e.f64x3(key)? {
            None => Ok(default),
            Some([a, b, c]) if a == b && b == c => Ok(a),
            Some(v) => Err(e.error(format!("`{key}` {v:?}: only one value for all axes"))),
        }
    };
    let cfg = SlidingWindowConfig {
        roi,
        sw_batch_size: match e.get("sw_batch_size") {
            None => 1,
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .ok_or_else(|| e.error(format!("`sw_batch_size` must be an integer, got {v}")))?,
        },
        overlap: equal("overlap", 0.25)?,
        mode: match e.str("mode")?.as_deref() {
            None | Some("constant") => BlendMode::Constant,
            Some("gaussian") => BlendMode::Gaussian,
            Some(m) => return Err(e.error(format!("`mode` {m:?}: only constant or gaussian"))),
        },
        sigma_scale: equal("sigma_scale", 0.125)?,
    };
    cfg.validate().map_err(|err| e.error(err))?;
    Ok(cfg)
}

/// What the postprocessing does, in order.
#[derive(Debug, Clone, Default)]
pub(super) struct Post {
    /// One line per entry.
    pub summary: Vec<String>,
    softmax: bool,
    /// `nearest_interp` of the `Invertd` seen before the argmax.
    invert_before_argmax: Option<bool>,
    invert_after_argmax: bool,
    argmax: bool,
}

impl Post {
    /// The resampling the postprocessing implies: probabilities when the softmax is inverted
    /// with `nearest_interp: false` before the argmax, else labels.
    pub fn resample(&self) -> Resample {
        match self.invert_before_argmax {
            Some(false) => Resample::Probabilities,
            _ => Resample::Labels,
        }
    }
}

/// MONAI transform names medseg reads in `postprocessing` (each also with the `d` suffix).
pub const POSTPROCESSING: &[&str] =
    &["Activations", "Invert", "AsDiscrete", "SaveImage", "EnsureType"];

/// Adds one postprocessing entry to `post`. `raw_transform` is the `transform` argument of an
/// `Invertd` as written (it must be `@preprocessing`).
pub(super) fn postprocessing(
    cfg: &MonaiConfig,
    id: &str,
    image_key: &str,
    post: &mut Post,
) -> Result<()> {
    let target = match cfg.get(&format!("{id}::_target_"))? {
        Some(Value::String(t)) => t.rsplit('.').next().unwrap_or(&t).to_string(),
        _ => return Err(cfg.error(id, "expected an object with a string `_target_`")),
    };
    let Some(name) = base_name(&target, POSTPROCESSING) else {
        return Err(cfg.error(
            id,
            format!(
                "{target}: transform not supported in postprocessing (medseg reads {}; \
                 connected-component clean-up is `medseg predict --largest-component`)",
                POSTPROCESSING.join(", ")
            ),
        ));
    };
    if name == "SaveImage" {
        // medseg writes its own outputs; the writer's arguments are not even resolved.
        post.summary.push(format!("{target}: replaced by medseg's writer"));
        return Ok(());
    }
    let e = Entry::read(cfg, id)?;
    if e.disabled() {
        return Ok(());
    }
    match name {
        "EnsureType" => {
            e.only(&["data_type", "dtype", "device", "wrap_sequence", "track_meta"])?;
        }
        "Activations" => {
            e.only(&["softmax", "sigmoid", "dim"])?;
            e.must_be("sigmoid", &Value::Bool(false))?;
            e.must_be("dim", &Value::from(0))?;
            if e.bool("softmax")? == Some(true) {
                post.softmax = true;
                post.summary.push(format!("{target} softmax"));
            }
        }
        "Invert" => {
            if target != "Invertd" {
                return Err(e.error("only the dictionary form Invertd is supported"));
            }
            e.only(&[
                "transform",
                "orig_keys",
                "nearest_interp",
                "to_tensor",
                "device",
                "post_func",
                "meta_keys",
                "orig_meta_keys",
                "meta_key_postfix",
            ])?;
            match cfg.raw(&format!("{id}::transform")) {
                Some(Value::String(s)) if s == "@preprocessing" => {}
                other => {
                    return Err(e.error(format!(
                        "`transform` must be \"@preprocessing\", got {}",
                        other.map_or("nothing".to_string(), |v| v.to_string())
                    )));
                }
            }
            if let Some(k) = e.str("orig_keys")?
                && k != image_key
            {
                return Err(e.error(format!("`orig_keys` {k:?} must be the image {image_key:?}")));
            }
            if e.get("post_func").is_some() {
                return Err(e.error("`post_func` is not supported"));
            }
            let nearest = e.bool("nearest_interp")?.unwrap_or(true);
            if post.argmax {
                post.invert_after_argmax = true;
            } else {
                if !nearest && !post.softmax {
                    return Err(e.error(
                        "inverting the raw network output (no Activations softmax before \
                         Invertd) is not supported: medseg resamples softmax probabilities",
                    ));
                }
                post.invert_before_argmax = Some(nearest);
            }
            post.summary.push(format!("Invertd (nearest_interp {nearest})"));
        }
        "AsDiscrete" => {
            e.only(&["argmax", "to_onehot", "threshold", "rounding", "dim", "keepdim"])?;
            if e.bool("argmax")? != Some(true) {
                return Err(e.error("only `argmax: true` is supported (label maps)"));
            }
            for absent in ["to_onehot", "threshold", "rounding"] {
                if e.get(absent).is_some() {
                    return Err(e.error(format!("`{absent}` is not supported")));
                }
            }
            e.must_be("dim", &Value::from(0))?;
            post.argmax = true;
            post.summary.push(format!("{target} argmax"));
        }
        other => return Err(e.error(format!("internal: unhandled transform {other}"))),
    }
    Ok(())
}

/// Checks that the postprocessing ends in labels.
pub(super) fn finish_post(cfg: &MonaiConfig, post: &Post) -> Result<()> {
    if !post.argmax {
        return Err(
            cfg.error("postprocessing", "no AsDiscreted(argmax=True): medseg writes label maps")
        );
    }
    Ok(())
}
