//! Argument contract of `kernels/attention.cu`: fused `softmax(q·kᵀ·scale + bias + mask)·v`,
//! forward (with the row log-sum-exp) and backward, per (batch item, head).
//!
//! One kernel family serves two callers:
//! - Swin window attention: batch = `B·nW` windows, `nq = nk = N ≤ 343` tokens, `bias` `[H, N, N]`
//!   (relative-position bias, shared by all windows), `mask` `[nW, N, N]` (shifted-window mask,
//!   window `b` uses `mask[b % nW]`).
//! - Soft MoE: dispatch is attention with queries = slots, keys = values = tokens (softmax over
//!   tokens per slot), combine is attention with queries = tokens, keys = slots, values = expert
//!   outputs (softmax over slots per token); `scale = 1`, `H = 1`, and keys at index ≥ `n_valid`
//!   (zero padding of the token sequence) get probability 0.
//!
//! The forward writes the log-sum-exp of every query row; the backward recomputes the
//! probabilities (flash-attention style), so no `[nq, nk]` matrix is ever kept.
use crate::{KernelError, check_len};

/// Sizes and constants of one attention call. The `.cu` kernels take contiguous row-major
/// `q` `[batch, heads, nq, d]`, `k` `[batch, heads, nk, d]`, `v` `[batch, heads, nk, dv]`,
/// `bias` `[heads, nq, nk]`, `mask` `[mask_windows, nq, nk]` and write `out`
/// `[batch, heads, nq, dv]`, `lse` `[batch, heads, nq]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionGeom {
    /// Batch (windows × images for window attention).
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Queries per (batch, head).
    pub nq: usize,
    /// Keys (and values) per (batch, head).
    pub nk: usize,
    /// Query/key feature size.
    pub d: usize,
    /// Value feature size.
    pub dv: usize,
    /// Number of distinct masks (`nW`); batch item `b` uses mask `b % mask_windows`.
    pub mask_windows: usize,
    /// Keys `≥ n_valid` are excluded from every softmax (set `n_valid = nk` for none).
    pub n_valid: usize,
    /// Multiplies `q·kᵀ` before bias and mask are added.
    pub scale: f32,
}

impl AttentionGeom {
    /// Elements of `q`.
    pub fn q_len(&self) -> usize {
        self.batch * self.heads * self.nq * self.d
    }
    /// Elements of `k`.
    pub fn k_len(&self) -> usize {
        self.batch * self.heads * self.nk * self.d
    }
    /// Elements of `v`.
    pub fn v_len(&self) -> usize {
        self.batch * self.heads * self.nk * self.dv
    }
    /// Elements of `out`.
    pub fn out_len(&self) -> usize {
        self.batch * self.heads * self.nq * self.dv
    }
    /// Elements of `lse` (one per query row).
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads * self.nq
    }
    /// Elements of `bias`.
    pub fn bias_len(&self) -> usize {
        self.heads * self.nq * self.nk
    }
    /// Elements of `mask`.
    pub fn mask_len(&self) -> usize {
        self.mask_windows * self.nq * self.nk
    }

    /// Checks the sizes themselves (non-empty, `n_valid ≤ nk`, masks dividing the batch).
    pub fn check(&self) -> Result<(), KernelError> {
        if self.batch == 0 || self.heads == 0 || self.nq == 0 || self.nk == 0 || self.d == 0 {
            return Err(KernelError::Geometry(format!("empty attention geometry {self:?}")));
        }
        if self.dv == 0 || self.n_valid > self.nk {
            return Err(KernelError::Geometry(format!("invalid attention geometry {self:?}")));
        }
        if self.mask_windows == 0 || !self.batch.is_multiple_of(self.mask_windows) {
            return Err(KernelError::Geometry(format!(
                "mask windows {} must divide the batch {}",
                self.mask_windows, self.batch
            )));
        }
        Ok(())
    }

    /// Checks the geometry and the lengths of the optional `bias` and `mask` buffers.
    pub fn check_bias_mask(
        &self,
        bias: Option<usize>,
        mask: Option<usize>,
    ) -> Result<(), KernelError> {
        self.check()?;
        if let Some(len) = bias {
            check_len("bias", len, self.bias_len())?;
        }
        if let Some(len) = mask {
            check_len("mask", len, self.mask_len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom() -> AttentionGeom {
        AttentionGeom {
            batch: 4,
            heads: 2,
            nq: 5,
            nk: 6,
            d: 4,
            dv: 3,
            mask_windows: 2,
            n_valid: 5,
            scale: 0.7,
        }
    }

    #[test]
    fn lengths_follow_the_layouts() {
        let g = geom();
        assert_eq!((g.q_len(), g.k_len(), g.v_len()), (160, 192, 144));
        assert_eq!((g.out_len(), g.lse_len(), g.bias_len(), g.mask_len()), (120, 40, 60, 60));
    }

    #[test]
    fn rejects_inconsistent_sizes() {
        let g = geom();
        assert_eq!(g.check_bias_mask(Some(60), Some(60)), Ok(()));
        assert_eq!(
            g.check_bias_mask(Some(59), None),
            Err(KernelError::Length { name: "bias", got: 59, want: 60 })
        );
        let bad = AttentionGeom { mask_windows: 3, ..g };
        assert!(matches!(bad.check(), Err(KernelError::Geometry(_))));
        let bad = AttentionGeom { n_valid: 7, ..g };
        assert!(matches!(bad.check(), Err(KernelError::Geometry(_))));
        let bad = AttentionGeom { d: 0, ..g };
        assert!(matches!(bad.check(), Err(KernelError::Geometry(_))));
    }
}
