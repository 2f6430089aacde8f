//! The fused path of the Soft MoE layers (feature `cuda`): dispatch and combine through
//! medseg-ops' fused attention op, so the `[B, n, E·S]` logits are never stored (for dynamic
//! slots `E·S ≈ n`: 32 768² floats per image at stage 2 of a 128³ input). On CUDA the op runs the
//! kernels, on the CPU their reference twin.
//!
//! Same mathematics as the composed path in `moe.rs` (`dispatch_combine` +
//! `experts_and_combine`). Padding tokens are excluded from the dispatch softmax by `n_valid`
//! instead of a `−f32::MAX` logit, which gives them exactly zero weight either way; the official
//! Swin SMT semantics pass every padded token as valid. The experts come in as a closure, so
//! this file imports nothing from the rest of the module.
use candle::{Result, Tensor};

/// Slot inputs → `experts` → combine. `x` `[B, n, d]` (normalised, padded), `slots`
/// `[B, E·S, d]` or `[E·S, d]` (normalised), the first `n_valid` tokens dispatched;
/// `experts` maps the slot inputs `[B, E, S, d]` to the slot outputs `[B, E·S, d]`.
/// Returns `[B, n, d]`.
pub(super) fn dispatch_experts_combine(
    x: &Tensor,
    slots: &Tensor,
    n_valid: usize,
    slots_per_expert: usize,
    experts: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, _n, d) = x.dims3()?;
    let m = slots.dim(slots.rank() - 2)?;
    if slots_per_expert == 0 || m % slots_per_expert != 0 {
        candle::bail!("soft MoE: {m} slots do not split into {slots_per_expert} per expert")
    }
    let e = m / slots_per_expert;
    // [B, E·S, d] -> [B, E, S, d]
    let slots_in =
        medseg_ops::soft_moe_dispatch(x, slots, n_valid)?.reshape((b, e, slots_per_expert, d))?;
    let y = experts(&slots_in)?;
    medseg_ops::soft_moe_combine(x, slots, &y)
}
