//! CPU twin of `kernels/attention.cu`: fused `softmax(q·kᵀ·scale + bias + mask)·v`, forward and
//! backward, one (batch, head) at a time.
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
//! The forward also returns the log-sum-exp of every query row; the backward recomputes the
//! probabilities from it (flash-attention style), so no `[nq, nk]` matrix is ever kept.
use super::KernelError;

/// Sizes and constants of one attention call. All tensors are contiguous row-major:
/// `q` `[batch, heads, nq, d]`, `k` `[batch, heads, nk, d]`, `v` `[batch, heads, nk, dv]`,
/// `bias` `[heads, nq, nk]`, `mask` `[mask_windows, nq, nk]`, `out` `[batch, heads, nq, dv]`,
/// `lse` `[batch, heads, nq]`.
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

    /// Checks the sizes of every buffer against the geometry.
    pub fn check(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        bias: Option<&[f32]>,
        mask: Option<&[f32]>,
    ) -> Result<(), KernelError> {
        if self.batch == 0 || self.heads == 0 || self.nq == 0 || self.nk == 0 || self.d == 0 {
            return Err(KernelError::Geometry(format!("empty attention geometry {self:?}")));
        }
        if self.dv == 0 || self.n_valid > self.nk {
            return Err(KernelError::Geometry(format!("invalid attention geometry {self:?}")));
        }
        if mask.is_some()
            && (self.mask_windows == 0 || !self.batch.is_multiple_of(self.mask_windows))
        {
            return Err(KernelError::Geometry(format!(
                "mask windows {} must divide the batch {}",
                self.mask_windows, self.batch
            )));
        }
        check_len("q", q.len(), self.q_len())?;
        check_len("k", k.len(), self.k_len())?;
        check_len("v", v.len(), self.v_len())?;
        if let Some(b) = bias {
            check_len("bias", b.len(), self.bias_len())?;
        }
        if let Some(m) = mask {
            check_len("mask", m.len(), self.mask_len())?;
        }
        Ok(())
    }
}

fn check_len(name: &'static str, got: usize, want: usize) -> Result<(), KernelError> {
    if got != want {
        return Err(KernelError::Length { name, got, want });
    }
    Ok(())
}

/// The logits of one (batch, head) row: `s[j] = scale·q_i·k_j + bias[h,i,j] + mask[b%nW,i,j]`,
/// `−∞` for keys `≥ n_valid`.
#[allow(clippy::too_many_arguments)] // reason: mirrors the kernel's argument list.
fn logits_row(
    g: &AttentionGeom,
    q: &[f32],
    k: &[f32],
    bias: Option<&[f32]>,
    mask: Option<&[f32]>,
    b: usize,
    h: usize,
    i: usize,
    s: &mut [f32],
) {
    let bh = b * g.heads + h;
    let qi = &q[(bh * g.nq + i) * g.d..][..g.d];
    for (j, sj) in s.iter_mut().enumerate() {
        if j >= g.n_valid {
            *sj = f32::NEG_INFINITY;
            continue;
        }
        let kj = &k[(bh * g.nk + j) * g.d..][..g.d];
        let mut acc = 0f32;
        for (a, c) in qi.iter().zip(kj) {
            acc += a * c;
        }
        let mut x = acc * g.scale;
        if let Some(bias) = bias {
            x += bias[(h * g.nq + i) * g.nk + j];
        }
        if let Some(mask) = mask {
            x += mask[((b % g.mask_windows) * g.nq + i) * g.nk + j];
        }
        *sj = x;
    }
}

/// Softmax of `s` in place; returns the log-sum-exp (`−∞` if every entry is `−∞`).
fn softmax_in_place(s: &mut [f32]) -> f32 {
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        s.iter_mut().for_each(|x| *x = 0.0);
        return f32::NEG_INFINITY;
    }
    let mut sum = 0f32;
    for x in s.iter_mut() {
        *x = (*x - m).exp();
        sum += *x;
    }
    s.iter_mut().for_each(|x| *x /= sum);
    m + sum.ln()
}

/// Forward: `out = softmax(logits)·v` and `lse` per query row. Returns `(out, lse)`.
pub fn attention_fwd(
    g: &AttentionGeom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    mask: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<f32>), KernelError> {
    g.check(q, k, v, bias, mask)?;
    let mut out = vec![0f32; g.out_len()];
    let mut lse = vec![0f32; g.lse_len()];
    let mut s = vec![0f32; g.nk];
    for b in 0..g.batch {
        for h in 0..g.heads {
            let bh = b * g.heads + h;
            for i in 0..g.nq {
                logits_row(g, q, k, bias, mask, b, h, i, &mut s);
                lse[bh * g.nq + i] = softmax_in_place(&mut s);
                let oi = &mut out[(bh * g.nq + i) * g.dv..][..g.dv];
                for (j, p) in s.iter().enumerate() {
                    let vj = &v[(bh * g.nk + j) * g.dv..][..g.dv];
                    for (o, x) in oi.iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
            }
        }
    }
    Ok((out, lse))
}

/// Gradients of one attention call. `dbias` is summed over the batch (the bias is shared);
/// the mask is a constant and gets none.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionGrads {
    /// `∂L/∂q`, shaped like `q`.
    pub dq: Vec<f32>,
    /// `∂L/∂k`, shaped like `k`.
    pub dk: Vec<f32>,
    /// `∂L/∂v`, shaped like `v`.
    pub dv: Vec<f32>,
    /// `∂L/∂bias` `[heads, nq, nk]`, present when a bias was given.
    pub dbias: Option<Vec<f32>>,
}

/// Backward from the forward's `out`, `lse` and the output gradient `dout`:
/// `p = exp(s − lse)`, `δ_i = Σ_c dout_ic·out_ic`, `ds_ij = p_ij·(dout_i·v_j − δ_i)`,
/// `dq_i = scale·Σ_j ds_ij k_j`, `dk_j = scale·Σ_i ds_ij q_i`, `dv_j = Σ_i p_ij dout_i`,
/// `dbias_hij = Σ_b ds_bhij`.
#[allow(clippy::too_many_arguments)] // reason: mirrors the kernel's argument list.
pub fn attention_bwd(
    g: &AttentionGeom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    mask: Option<&[f32]>,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
) -> Result<AttentionGrads, KernelError> {
    g.check(q, k, v, bias, mask)?;
    check_len("out", out.len(), g.out_len())?;
    check_len("dout", dout.len(), g.out_len())?;
    check_len("lse", lse.len(), g.lse_len())?;
    let mut dq = vec![0f32; g.q_len()];
    let mut dk = vec![0f32; g.k_len()];
    let mut dvv = vec![0f32; g.v_len()];
    let mut dbias = bias.map(|_| vec![0f32; g.bias_len()]);
    let mut s = vec![0f32; g.nk];
    for b in 0..g.batch {
        for h in 0..g.heads {
            let bh = b * g.heads + h;
            for i in 0..g.nq {
                logits_row(g, q, k, bias, mask, b, h, i, &mut s);
                let l = lse[bh * g.nq + i];
                let row = bh * g.nq + i;
                let doi = &dout[row * g.dv..][..g.dv];
                let oi = &out[row * g.dv..][..g.dv];
                let delta: f32 = doi.iter().zip(oi).map(|(a, c)| a * c).sum();
                let qi = &q[row * g.d..][..g.d];
                for (j, &sj) in s.iter().enumerate() {
                    let p = if l == f32::NEG_INFINITY { 0.0 } else { (sj - l).exp() };
                    if p == 0.0 {
                        continue;
                    }
                    let col = bh * g.nk + j;
                    let vj = &v[col * g.dv..][..g.dv];
                    let dp: f32 = doi.iter().zip(vj).map(|(a, c)| a * c).sum();
                    let ds = p * (dp - delta);
                    for (x, o) in dvv[col * g.dv..][..g.dv].iter_mut().zip(doi) {
                        *x += p * o;
                    }
                    let kj = &k[col * g.d..][..g.d];
                    for (x, c) in dq[row * g.d..][..g.d].iter_mut().zip(kj) {
                        *x += g.scale * ds * c;
                    }
                    for (x, c) in dk[col * g.d..][..g.d].iter_mut().zip(qi) {
                        *x += g.scale * ds * c;
                    }
                    if let Some(db) = dbias.as_mut() {
                        db[(h * g.nq + i) * g.nk + j] += ds;
                    }
                }
            }
        }
    }
    Ok(AttentionGrads { dq, dk, dv: dvv, dbias })
}
