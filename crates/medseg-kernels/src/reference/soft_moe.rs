//! Soft MoE dispatch and combine (Puigcerver et al. 2024) as fused attention calls: the CPU twin of
//! the `attention_*` kernels used with Soft MoE geometries.
//!
//! With tokens `x` `[B, n, d]`, slots `[B, m, d]` (`m = E·S`) and `logits = x·slotsᵀ` `[B, n, m]`:
//! - dispatch: `slots_in = softmax_over_tokens(logits)ᵀ·x` `[B, m, d]` is attention with
//!   queries = slots, keys = values = tokens (tokens `≥ n_valid` are zero padding and excluded);
//! - combine: `out = softmax_over_slots(logits)·y` `[B, n, dv]` is attention with queries = tokens,
//!   keys = slots, values = the expert outputs `y` `[B, m, dv]`.
//!
//! Neither materialises the `[B, n, m]` logits (for dynamic slots `m ≈ n`, 32 768² floats at
//! stage 2 of a 128³ input).
use super::AttentionGeom;

/// Sizes of one Soft MoE layer call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeGeom {
    /// Batch.
    pub batch: usize,
    /// Tokens (after padding to a multiple of the expert count, for dynamic slots).
    pub tokens: usize,
    /// Real tokens; the rest is zero padding excluded from the dispatch softmax.
    pub valid_tokens: usize,
    /// Slots over all experts (`E·S`).
    pub slots: usize,
    /// Token/slot feature size.
    pub dim: usize,
    /// Expert output feature size.
    pub out_dim: usize,
}

/// Dispatch geometry: `attention_fwd(g, q = slots, k = x, v = x)` gives `slots_in` `[B, m, d]`.
pub fn soft_moe_dispatch_geom(m: &MoeGeom) -> AttentionGeom {
    AttentionGeom {
        batch: m.batch,
        heads: 1,
        nq: m.slots,
        nk: m.tokens,
        d: m.dim,
        dv: m.dim,
        mask_windows: 1,
        n_valid: m.valid_tokens,
        scale: 1.0,
    }
}

/// Combine geometry: `attention_fwd(g, q = x, k = slots, v = y)` gives `out` `[B, n, dv]`.
pub fn soft_moe_combine_geom(m: &MoeGeom) -> AttentionGeom {
    AttentionGeom {
        batch: m.batch,
        heads: 1,
        nq: m.tokens,
        nk: m.slots,
        d: m.dim,
        dv: m.out_dim,
        mask_windows: 1,
        n_valid: m.slots,
        scale: 1.0,
    }
}
