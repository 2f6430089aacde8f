//! [`linear`] and its reference.
use candle::{DType, Result, Tensor};

use super::cpu::LinearBf16;
use crate::precision::{Precision, bf16_dot_available, precision};
use crate::storage::f32_contiguous;

/// `nn.Linear` on rows: `x` `[M, K]`, `w` `[N, K]`, `b` `[N]` → `[M, N]`.
///
/// In f32 (the default) this is candle's `x.matmul(wᵀ) + b`, bit for bit what `candle_nn::Linear`
/// computes. Inside [`crate::with_precision`]`(Precision::Bf16, …)`, for f32 CPU tensors on a CPU
/// with AVX-512 BF16, the product rounds `x` and `w` to bf16 (nearest even) and accumulates in
/// f32 with `vdpbf16ps`; the bias is added in f32 and the gradients are those of the f32 product.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let bf16 = precision() == Precision::Bf16
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && bf16_dot_available();
    let y = if bf16 {
        let (m, k) = x.dims2()?;
        let (n, kw) = w.dims2()?;
        if k != kw {
            candle::bail!("linear: x is [{m}, {k}] but the weight is [{n}, {kw}]")
        }
        f32_contiguous(x)?.apply_op2(&f32_contiguous(w)?, LinearBf16)?
    } else {
        x.matmul(&w.t()?)?
    };
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// [`linear`] in f32 by candle's matmul, whatever the precision setting (the test oracle).
pub fn linear_reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}
