//! The small building blocks every model file shares: MONAI's `nn.LayerNorm` and `MLPBlock`
//! ([`LayerNorm`], [`Mlp`]), `nn.Linear` with PyTorch's init ([`linear`], [`apply_linear`]),
//! dropout and stochastic depth, and the [`Params`] trait that lists a module's parameters in a
//! fixed order and rebuilds it from new tensors (used by gradient checkpointing).
//!
//! Second in the crate's import order (config → layers → soft_moe → swin_transformer →
//! {swin_unetr, ssl_head}): this module imports no other module of the crate.
use candle::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// LayerNorm epsilon of every MONAI norm (PyTorch default).
pub(crate) const LN_EPS: f64 = 1e-5;

/// `nn.LayerNorm(dim)` (eps 1e-5, affine) on the last dim, differentiable (medseg-ops).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// `weight` (init 1) and `bias` (init 0) of shape `[dim]`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        medseg_ops::layer_norm(xs, Some(&self.weight), Some(&self.bias), LN_EPS)
    }
}

/// `nn.Linear` with PyTorch's default init, applied to any rank (flattened to 2-D).
pub(crate) fn linear(cin: usize, cout: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let init = kaiming_uniform(cin);
    let w = vb.get_with_hints((cout, cin), "weight", init)?;
    let b = if bias { Some(vb.get_with_hints(cout, "bias", init)?) } else { None };
    Ok(Linear::new(w, b))
}

/// Applies a Linear to the last dim of a tensor of any rank ([`medseg_ops::linear`]: candle's
/// matmul in f32, bf16 products under `Precision::Bf16`).
pub(crate) fn apply_linear(l: &Linear, xs: &Tensor) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let c = dims[dims.len() - 1];
    // [.., C] -> [M, C]
    let y = medseg_ops::linear(&xs.reshape(((), c))?, l.weight(), l.bias())?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = y.dim(1)?;
    // [M, C'] -> [.., C']
    y.reshape(out)
}

/// Inverted dropout in training mode (identity otherwise).
pub(crate) fn dropout(xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !train || p == 0.0 {
        return Ok(xs.clone());
    }
    candle_nn::ops::dropout(xs, p as f32)
}

/// Stochastic depth (`DropPath`): one Bernoulli per sample, scaled by 1/keep.
pub(crate) fn drop_path(xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !train || p == 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 - p;
    let mut shape = vec![1usize; xs.rank()];
    shape[0] = xs.dim(0)?;
    let u = Tensor::rand(0f32, 1f32, shape, xs.device())?;
    let mask = (u.lt(keep)?.to_dtype(xs.dtype())? / keep)?;
    xs.broadcast_mul(&mask)
}

/// MONAI `MLPBlock` with `dropout_mode="swin"`: Linear → GELU(erf) → Dropout → Linear → Dropout.
#[derive(Debug, Clone)]
pub struct Mlp {
    linear1: Linear,
    linear2: Linear,
    drop: f64,
}

impl Mlp {
    /// `mlp.linear1` `[hidden, dim]`, `mlp.linear2` `[dim, hidden]`.
    pub fn new(dim: usize, hidden: usize, drop: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear1: linear(dim, hidden, true, vb.pp("linear1"))?,
            linear2: linear(hidden, dim, true, vb.pp("linear2"))?,
            drop,
        })
    }

    /// Position-wise on `[.., dim]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let h = medseg_ops::gelu(&apply_linear(&self.linear1, xs)?)?;
        let h = dropout(&h, self.drop, train)?;
        dropout(&apply_linear(&self.linear2, &h)?, self.drop, train)
    }
}

/// PyTorch's default Linear/Conv init: kaiming-uniform with a = √5, i.e. U(±1/√fan_in).
pub(crate) fn kaiming_uniform(fan_in: usize) -> candle_nn::Init {
    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
    candle_nn::Init::Uniform { lo: -b, up: b }
}

/// Parameters of a module in a fixed order, and the same module rebuilt from new tensors.
pub(crate) trait Params: Sized {
    /// The parameter tensors, in a fixed order.
    fn params(&self, out: &mut Vec<Tensor>);
    /// A copy of `self` whose parameters are taken, in the same order, from `it`.
    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self>;
}

/// Takes the next tensor of a parameter stream.
pub(crate) fn next(it: &mut dyn Iterator<Item = Tensor>) -> Result<Tensor> {
    match it.next() {
        Some(t) => Ok(t),
        None => candle::bail!("checkpoint: parameter stream exhausted"),
    }
}

impl Params for candle_nn::Linear {
    fn params(&self, out: &mut Vec<Tensor>) {
        out.push(self.weight().clone());
        if let Some(b) = self.bias() {
            out.push(b.clone());
        }
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        let w = next(it)?;
        let b = if self.bias().is_some() { Some(next(it)?) } else { None };
        Ok(candle_nn::Linear::new(w, b))
    }
}

impl Params for LayerNorm {
    fn params(&self, out: &mut Vec<Tensor>) {
        out.push(self.weight.clone());
        out.push(self.bias.clone());
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(Self { weight: next(it)?, bias: next(it)? })
    }
}

impl Params for Mlp {
    fn params(&self, out: &mut Vec<Tensor>) {
        self.linear1.params(out);
        self.linear2.params(out);
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(Self {
            linear1: self.linear1.with_params(it)?,
            linear2: self.linear2.with_params(it)?,
            drop: self.drop,
        })
    }
}
