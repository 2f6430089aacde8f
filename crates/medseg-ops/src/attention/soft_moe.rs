//! Soft MoE dispatch and combine (Puigcerver et al. 2024) as fused attention calls.
//!
//! With tokens `x` `[B, n, d]`, slots `[B, m, d]` (`m = E·S`) and `logits = x·slotsᵀ` `[B, n, m]`:
//! - dispatch: `slots_in = softmax_over_tokens(logits)ᵀ·x` `[B, m, d]` is attention with
//!   queries = slots, keys = values = tokens (tokens `≥ n_valid` are zero padding and excluded);
//! - combine: `out = softmax_over_slots(logits)·y` `[B, n, dv]` is attention with queries = tokens,
//!   keys = slots, values = the expert outputs `y` `[B, m, dv]`.
//!
//! Neither materialises the `[B, n, m]` logits (for dynamic slots `m ≈ n`: 32 768² floats at
//! stage 2 of a 128³ input). Both run on CPU and CUDA ([`fused_attention`]); medseg-models uses
//! them on CUDA and keeps its composed path on CPU.
use candle::{Result, Tensor};

use super::op::fused_attention;

/// Soft MoE dispatch: `softmax_over_tokens(x·slotsᵀ)ᵀ·x`, tokens `≥ n_valid` excluded.
///
/// # Shapes
/// `x` `[B, n, d]`, `slots` `[B, m, d]` (or `[m, d]`, broadcast) → slot inputs `[B, m, d]`.
pub fn soft_moe_dispatch(x: &Tensor, slots: &Tensor, n_valid: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let slots = broadcast_slots(slots, b, d)?;
    if n_valid > n {
        candle::bail!("soft_moe_dispatch: {n_valid} valid tokens of {n}")
    }
    let x4 = x.unsqueeze(1)?;
    // queries = slots [B, 1, m, d], keys = values = tokens [B, 1, n, d]
    fused_attention(&slots.unsqueeze(1)?, &x4, &x4, 1.0, None, None, Some(n_valid))?.squeeze(1)
}

/// Soft MoE combine: `softmax_over_slots(x·slotsᵀ)·y`.
///
/// # Shapes
/// `x` `[B, n, d]`, `slots` `[B, m, d]` (or `[m, d]`), `y` `[B, m, dv]` → `[B, n, dv]`.
pub fn soft_moe_combine(x: &Tensor, slots: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (b, _n, d) = x.dims3()?;
    let slots = broadcast_slots(slots, b, d)?;
    // queries = tokens [B, 1, n, d], keys = slots [B, 1, m, d], values = y [B, 1, m, dv]
    fused_attention(
        &x.unsqueeze(1)?,
        &slots.unsqueeze(1)?,
        &y.unsqueeze(1)?,
        1.0,
        None,
        None,
        None,
    )?
    .squeeze(1)
}

/// `[m, d]` → `[B, m, d]` (differentiable broadcast); `[B, m, d]` is checked and kept.
fn broadcast_slots(slots: &Tensor, b: usize, d: usize) -> Result<Tensor> {
    match slots.rank() {
        2 if slots.dim(1)? == d => slots.unsqueeze(0)?.broadcast_as((b, slots.dim(0)?, d)),
        3 if slots.dim(0)? == b && slots.dim(2)? == d => Ok(slots.clone()),
        _ => candle::bail!("soft MoE: slots {:?} must be [m, {d}] or [{b}, m, {d}]", slots.dims()),
    }
}
