//! AdamW with decoupled weight decay and two parameter groups, gradient clipping and
//! gradient accumulation helpers.
//!
//! Matches `torch.optim.AdamW` (non-amsgrad, non-fused) step for step:
//! `p ← p − lr·wd·p; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
//! p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε)`.
//! candle-nn's `AdamW` decays every variable; here biases, normalisation weights and relative
//! position bias tables are excluded ([`no_decay`]), as the Swin/MONAI recipes do.
use std::collections::HashMap;
use std::path::Path;

use candle::{DType, Device, Tensor, Var, backprop::GradStore};
use candle_nn::VarMap;
use medseg_models::loader::ENCODER_PREFIX;

use crate::{Error, Result};

/// AdamW hyper-parameters (`torch.optim.AdamW` argument names).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
    /// Decoupled weight decay of the decay group (the no-decay group uses 0).
    pub weight_decay: f64,
    /// `(β1, β2)`.
    pub betas: [f64; 2],
    /// ε added to the denominator.
    pub eps: f64,
    /// Multiplier of the learning rate (and so of the decoupled decay) for the encoder's
    /// parameters, those named [`ENCODER_PREFIX`]`*` (the Swin transformer of Swin UNETR and
    /// Swin SMT). 1 = one learning rate for everything; 0.1 is the usual choice when fine-tuning
    /// from a pretrained encoder; 0 freezes it (no update; its moments stay zero).
    #[serde(default = "unit_scale")]
    pub encoder_lr_scale: f64,
}

fn unit_scale() -> f64 {
    1.0
}

impl AdamWConfig {
    /// `lr`, `weight_decay`, `betas`, `eps` as given and one learning rate for every parameter.
    pub fn new(lr: f64, weight_decay: f64, betas: [f64; 2], eps: f64) -> Self {
        AdamWConfig { lr, weight_decay, betas, eps, encoder_lr_scale: 1.0 }
    }
}

/// Every variable of `varmap` with its name (any optimiser's parameter list).
pub fn varmap_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    Ok(varmap
        .data()
        .lock()
        .map_err(|_| Error::Config("variable map lock poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

/// True for parameters that get no weight decay: rank ≤ 1 tensors (biases, norm weights) and
/// anything named like a bias, a norm or a relative position bias table.
pub fn no_decay(name: &str, rank: usize) -> bool {
    rank <= 1
        || name.ends_with(".bias")
        || name.contains("norm")
        || name.contains("relative_position_bias_table")
}

/// One optimised parameter and its moments.
#[derive(Debug)]
struct Param {
    name: String,
    var: Var,
    decay: bool,
    /// Multiplier of the group learning rate ([`AdamWConfig::encoder_lr_scale`] or 1).
    lr_scale: f64,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named variables with a decay and a no-decay group.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    step: u64,
    lr: f64,
}

impl AdamW {
    /// Optimises `vars` (name → variable); the group of each is chosen by [`no_decay`].
    /// Parameters are kept in name order so every run updates them identically.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let mut vars = vars;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let decay = !no_decay(&name, var.rank());
                let lr_scale =
                    if name.starts_with(ENCODER_PREFIX) { cfg.encoder_lr_scale } else { 1.0 };
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Param { name, var, decay, lr_scale, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        let lr = cfg.lr;
        Ok(AdamW { cfg, params, step: 0, lr })
    }

    /// All variables of a [`VarMap`], named as the map names them.
    pub fn from_varmap(varmap: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        AdamW::new(varmap_vars(varmap)?, cfg)
    }

    /// The learning rate of the next step.
    pub fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate of the next step (the schedule calls this).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the parameters in the (decay, no-decay) groups.
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let mut d = Vec::new();
        let mut n = Vec::new();
        for p in &self.params {
            if p.decay { d.push(p.name.as_str()) } else { n.push(p.name.as_str()) }
        }
        (d, n)
    }

    /// One AdamW step with the gradients in `grads` (parameters without a gradient are skipped,
    /// as PyTorch skips `p.grad is None`).
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let [b1, b2] = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for p in &mut self.params {
            // a frozen parameter (scale 0) would be rewritten unchanged: skip its update
            let (Some(g), true) = (grads.get(&p.var), p.lr_scale != 0.0) else { continue };
            let lr = self.lr * p.lr_scale;
            let step_size = lr / bc1;
            let mut theta = p.var.as_tensor().detach();
            if p.decay && self.cfg.weight_decay != 0.0 {
                theta = (&theta * (1.0 - lr * self.cfg.weight_decay))?;
            }
            p.m = ((&p.m * b1)? + (g * (1.0 - b1))?)?;
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((p.v.sqrt()? / bc2.sqrt())? + self.cfg.eps)?;
            let upd = ((&p.m / denom)? * step_size)?;
            p.var.set(&(theta - upd)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.<name>`, `v.<name>`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.clone()));
            out.push((format!("v.{}", p.name), p.v.clone()));
        }
        out
    }

    /// Restores moments and step count saved by [`AdamW::state_tensors`]; every parameter must
    /// be present with its shape.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
        path: &Path,
    ) -> Result<()> {
        for p in &mut self.params {
            for (which, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{which}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!("optimiser state {key:?} missing"),
                })?;
                if t.dims() != p.var.dims() {
                    return Err(Error::Checkpoint {
                        path: path.to_path_buf(),
                        reason: format!(
                            "optimiser state {key:?} has shape {:?}, parameter has {:?}",
                            t.dims(),
                            p.var.dims()
                        ),
                    });
                }
                *slot = t.to_device(p.var.device())?.to_dtype(p.var.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// The optimised variables (name order).
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }
}

/// Gradients keyed by variable, accumulated over micro-batches.
#[derive(Debug, Default)]
pub struct Grads {
    map: HashMap<candle::TensorId, Tensor>,
}

impl Grads {
    /// Empty.
    pub fn new() -> Self {
        Grads::default()
    }

    /// Adds the gradients of `vars` from one backward pass, scaled by `scale`.
    pub fn accumulate<'a>(
        &mut self,
        store: &GradStore,
        vars: impl Iterator<Item = &'a Var>,
        scale: f64,
    ) -> Result<()> {
        for v in vars {
            let Some(g) = store.get(v.as_tensor()) else { continue };
            let g = if scale == 1.0 { g.clone() } else { (g * scale)? };
            let e = match self.map.remove(&v.id()) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            self.map.insert(v.id(), e);
        }
        Ok(())
    }

    /// Inserts a gradient directly (tests, custom loops).
    pub fn insert(&mut self, var: &Var, grad: Tensor) {
        self.map.insert(var.id(), grad);
    }

    /// The gradient of `var`.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        self.map.get(&var.id())
    }

    /// True when no gradient is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Global L2 norm of all gradients (f64 accumulation).
    pub fn global_norm(&self) -> Result<f64> {
        let mut s = 0f64;
        for g in self.map.values() {
            s += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok(s.sqrt())
    }

    /// `torch.nn.utils.clip_grad_norm_`: scales every gradient by `max_norm / (norm + 1e-6)` when
    /// that is below 1; returns the norm before clipping. A non-finite norm is returned as is.
    pub fn clip_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        let coef = max_norm / (norm + 1e-6);
        if norm.is_finite() && coef < 1.0 {
            for g in self.map.values_mut() {
                *g = (&*g * coef)?;
            }
        }
        Ok(norm)
    }
}

/// Loads every tensor of a safetensors file onto `device`.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(medseg_run::checkpoint::load_tensors(path, device)?)
}
