//! Differentiable, fast activations: `softmax_last_dim`, exact-erf `gelu`, `leaky_relu`.
//!
//! candle-nn's fast `softmax_last_dim` cuts the autograd graph; these ops keep it. Each has a
//! composed reference (`*_reference`) built from candle ops with candle's own backward.
use candle::{CustomOp1, D, Result, Tensor};

use super::cpu::{Softmax, Unary};
use crate::storage::{composed_in_f32, f32_contiguous};

/// Softmax over the last dimension, differentiable (`dx = y ⊙ (dy − Σ dy ⊙ y)`).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.rank() == 0 || !x.dtype().is_float() || x.dim(D::Minus1)? == 0 {
        candle::bail!(
            "softmax_last_dim: expected a float tensor with a non-empty last dim, got {:?} {:?}",
            x.dtype(),
            x.dims()
        )
    }
    if !x.device().is_cpu() {
        return composed_in_f32(x, softmax_last_dim_reference);
    }
    let len = x.dim(D::Minus1)?;
    let dtype = x.dtype();
    f32_contiguous(x)?.apply_op1(Softmax { len })?.to_dtype(dtype)
}

/// GELU with the exact erf form, `0.5·x·(1 + erf(x/√2))` (PyTorch's and MONAI's default).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed_in_f32(x, gelu_reference);
    }
    unary(x, Unary::Gelu)
}

/// `max(x, 0) + slope·min(x, 0)`; MONAI's CNN blocks use slope 0.01.
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed_in_f32(x, |x| leaky_relu_reference(x, negative_slope));
    }
    unary(x, Unary::LeakyRelu(negative_slope as f32))
}

/// Composed reference of [`softmax_last_dim`] (candle-nn's differentiable `softmax`).
pub fn softmax_last_dim_reference(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Composed reference of [`gelu`]: `0.5·x·(1 + erf(x/√2))` from candle's `erf`.
pub fn gelu_reference(x: &Tensor) -> Result<Tensor> {
    let e = (x / std::f64::consts::SQRT_2)?.erf()?;
    ((e + 1.0)? * 0.5)?.mul(x)
}

/// Composed reference of [`leaky_relu`]: `relu(x) − slope·relu(−x)`.
pub fn leaky_relu_reference(x: &Tensor, negative_slope: f64) -> Result<Tensor> {
    x.relu()? - (x.neg()?.relu()? * negative_slope)?
}

fn unary(x: &Tensor, op: Unary) -> Result<Tensor> {
    if !x.dtype().is_float() {
        candle::bail!("{}: expected a float tensor, got {:?}", op.name(), x.dtype())
    }
    let dtype = x.dtype();
    f32_contiguous(x)?.apply_op1(op)?.to_dtype(dtype)
}
