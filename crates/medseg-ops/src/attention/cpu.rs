//! CPU kernel of the fused attention `softmax(q·kᵀ·scale + bias + mask)·v`, keys `≥ n_valid`
//! excluded: forward (with the row log-sum-exp on request) and backward, one batch item per rayon
//! task, every head of the item in cache.
//!
//! The arguments are those of `kernels/attention.cu` ([`AttentionGeom`]: sizes, `n_valid`, scale,
//! `bias` `[H, nq, nk]`, `mask` `[nW, nq, nk]`, `lse` `[B, H, nq]`); q, k and v come in one buffer
//! whose layout is a [`QkvLayout`]: the kernels' packed `q ‖ k ‖ v`, or MONAI's raw `qkv`
//! projection, read in place (no permute copy on the models' path).
//!
//! Per head the kernel gathers `q·scale` (`[nq, d]`), `kᵀ` (`[d, nk]`) and `vᵀ` (`[dv, nk]`),
//! then walks the rows of the attention matrix, never storing it:
//! - forward: `p = softmax(q_i·kᵀ + bias_i + mask_i)`, `out_i = p·v`, `lse_i = log Σ exp(…)`;
//! - backward (with `dO`): `dp = dO_i·vᵀ`, `ds = p ⊙ (dp − p·dp)`, `dq_i = scale·ds·k`,
//!   `dk += ds ⊗ q_i·scale`, `dv += p ⊗ dO_i`, `dbias_i += ds` (probabilities recomputed, as
//!   flash-attention does).
use medseg_kernels::AttentionGeom;
use rayon::prelude::*;

use crate::simd;
use crate::storage::SyncPtr;

/// Batch groups of the backward, each with its own bias-gradient accumulator (fixed, so the sum
/// order is too).
const BIAS_GROUPS: usize = 8;

/// Where the rows of `q`, `k`, `v` (one input buffer) and of `out` live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QkvLayout {
    /// `q ‖ k ‖ v`, each contiguous `[B, H, n, d]`; `out` `[B, H, nq, dv]`: the `.cu` convention.
    Packed,
    /// MONAI's raw projection `[B, N, 3, H, hd]` (`nq = nk = N`, `d = dv = hd`); `out`
    /// `[B, N, H·hd]`, heads concatenated into channels.
    Interleaved,
}

/// Element offsets of row `i` of head `h` of batch item `b`: `base + b·batch + h·head + i·row`.
#[derive(Debug, Clone, Copy)]
struct Rows {
    base: usize,
    batch: usize,
    head: usize,
    row: usize,
}

impl Rows {
    #[inline(always)]
    fn at(&self, b: usize, h: usize, i: usize) -> usize {
        self.base + b * self.batch + h * self.head + i * self.row
    }
}

/// The row offsets of the four tensors under one layout.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    q: Rows,
    k: Rows,
    v: Rows,
    out: Rows,
}

impl QkvLayout {
    /// Elements of the `qkv` buffer.
    pub(crate) fn qkv_len(self, g: &AttentionGeom) -> usize {
        g.q_len() + g.k_len() + g.v_len()
    }

    /// Checks that the geometry fits the layout and the buffer; the message names what does not.
    pub(crate) fn check(self, g: &AttentionGeom, qkv_len: usize) -> Result<(), String> {
        g.check().map_err(|e| e.to_string())?;
        if self == QkvLayout::Interleaved && (g.nq != g.nk || g.d != g.dv) {
            return Err(format!("an interleaved qkv needs nq = nk and d = dv, got {g:?}"));
        }
        if qkv_len != self.qkv_len(g) {
            return Err(format!("qkv has {qkv_len} elements, {g:?} needs {}", self.qkv_len(g)));
        }
        Ok(())
    }

    fn offsets(self, g: &AttentionGeom) -> Offsets {
        let (h, nq, nk, d, dv) = (g.heads, g.nq, g.nk, g.d, g.dv);
        match self {
            QkvLayout::Packed => Offsets {
                q: Rows { base: 0, batch: h * nq * d, head: nq * d, row: d },
                k: Rows { base: g.q_len(), batch: h * nk * d, head: nk * d, row: d },
                v: Rows { base: g.q_len() + g.k_len(), batch: h * nk * dv, head: nk * dv, row: dv },
                out: Rows { base: 0, batch: h * nq * dv, head: nq * dv, row: dv },
            },
            QkvLayout::Interleaved => {
                let c = h * d;
                let row = |base| Rows { base, batch: nq * 3 * c, head: d, row: 3 * c };
                Offsets {
                    q: row(0),
                    k: row(c),
                    v: row(2 * c),
                    out: Rows { base: 0, batch: nq * c, head: d, row: c },
                }
            }
        }
    }
}

/// Forward: `out` (in the layout's `out` order) and, when `lse` is given (`[B, H, nq]`), the row
/// log-sum-exp (`−∞` for a row whose keys are all excluded). Callers check the geometry
/// ([`QkvLayout::check`]) and the lengths of `bias` and `mask` first.
pub(crate) fn forward(
    g: &AttentionGeom,
    layout: QkvLayout,
    qkv: &[f32],
    bias: Option<&[f32]>,
    mask: Option<&[f32]>,
    lse: Option<&mut [f32]>,
) -> Vec<f32> {
    let offsets = layout.offsets(g);
    let per_item = g.out_len() / g.batch;
    let mut out = vec![0f32; g.out_len()];
    let mut lse_chunks: Vec<Option<&mut [f32]>> = match lse {
        Some(l) => l.chunks_mut(g.heads * g.nq).map(Some).collect(),
        None => (0..g.batch).map(|_| None).collect(),
    };
    out.par_chunks_mut(per_item).zip(lse_chunks.par_iter_mut()).enumerate().for_each(
        |(b, (out_b, lse_b))| {
            dispatch(Item {
                g,
                offsets: &offsets,
                b,
                qkv,
                bias,
                mask_b: mask_of(g, mask, b),
                out_b: Some(out_b),
                lse_b: lse_b.as_deref_mut(),
                bwd: None,
            })
        },
    );
    out
}

/// Backward from the output gradient `dout` (in the layout's `out` order): returns
/// `[dqkv ‖ dbias]` flat, `dqkv` in the layout of `qkv`, `dbias` `[H, nq, nk]` summed over the
/// batch (absent without a bias). The sum runs over a fixed number of batch groups in a fixed
/// order, so the result does not depend on thread count or scheduling (a resumed run repeats the
/// uninterrupted one bit for bit).
pub(crate) fn backward(
    g: &AttentionGeom,
    layout: QkvLayout,
    qkv: &[f32],
    bias: Option<&[f32]>,
    mask: Option<&[f32]>,
    dout: &[f32],
) -> Vec<f32> {
    let offsets = layout.offsets(g);
    let nb = if bias.is_some() { g.bias_len() } else { 0 };
    let mut out = vec![0f32; qkv.len() + nb];
    let (dqkv, dbias_out) = out.split_at_mut(qkv.len());
    let grads = SyncPtr(dqkv.as_mut_ptr());
    let per_group = g.batch.div_ceil(BIAS_GROUPS.min(g.batch).max(1));
    let partial: Vec<Vec<f32>> = (0..g.batch.div_ceil(per_group))
        .into_par_iter()
        .map(|gi| {
            let mut acc = vec![0f32; nb];
            for b in gi * per_group..((gi + 1) * per_group).min(g.batch) {
                dispatch(Item {
                    g,
                    offsets: &offsets,
                    b,
                    qkv,
                    bias,
                    mask_b: mask_of(g, mask, b),
                    out_b: None,
                    lse_b: None,
                    bwd: Some(Backward {
                        dout,
                        grads,
                        dbias: (nb > 0).then_some(acc.as_mut_slice()),
                    }),
                });
            }
            acc
        })
        .collect();
    for p in &partial {
        for (x, y) in dbias_out.iter_mut().zip(p) {
            *x += y;
        }
    }
    out
}

/// The `[nq, nk]` mask of batch item `b` (`b mod nW`).
fn mask_of<'a>(g: &AttentionGeom, mask: Option<&'a [f32]>, b: usize) -> Option<&'a [f32]> {
    let len = g.nq * g.nk;
    mask.map(|m| &m[(b % g.mask_windows) * len..][..len])
}

/// The inputs of one batch item's forward (`out_b`, `lse_b`) or backward (`bwd`) over all heads.
struct Item<'a> {
    g: &'a AttentionGeom,
    offsets: &'a Offsets,
    b: usize,
    /// The whole `qkv` buffer.
    qkv: &'a [f32],
    /// `[H, nq, nk]`.
    bias: Option<&'a [f32]>,
    /// `[nq, nk]` of this item.
    mask_b: Option<&'a [f32]>,
    /// This item's output rows (`out` offsets with `b = 0`).
    out_b: Option<&'a mut [f32]>,
    /// This item's `[H, nq]` log-sum-exps.
    lse_b: Option<&'a mut [f32]>,
    bwd: Option<Backward<'a>>,
}

struct Backward<'a> {
    /// The whole output gradient (`out` offsets).
    dout: &'a [f32],
    /// The whole `dqkv` buffer; this item writes only its own rows of q, k and v.
    grads: SyncPtr,
    /// `[H, nq, nk]` accumulator, when the bias needs a gradient.
    dbias: Option<&'a mut [f32]>,
}

/// The `len` gradient elements from `at` of the `dqkv` buffer behind `grads`.
///
/// # Safety
/// `at + len` lies inside `dqkv`, the row belongs to the calling batch item (no other task
/// writes it), and the caller holds no other slice of it while this one lives.
#[inline(always)]
unsafe fn grad_row<'a>(grads: SyncPtr, at: usize, len: usize) -> &'a mut [f32] {
    // SAFETY: guaranteed by the caller (see above).
    unsafe { std::slice::from_raw_parts_mut(grads.ptr().add(at), len) }
}

/// Runs [`item_kernel`] compiled for the best vector ISA of the running CPU.
fn dispatch(item: Item<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features enabled on `item_kernel_avx512`.
            return unsafe { item_kernel_avx512(item) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above, for AVX2 + FMA.
            return unsafe { item_kernel_avx2(item) };
        }
    }
    item_kernel(item)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
unsafe fn item_kernel_avx512(item: Item<'_>) {
    item_kernel(item)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn item_kernel_avx2(item: Item<'_>) {
    item_kernel(item)
}

/// One batch item, every head (see the module documentation for the mathematics).
#[inline(always)]
fn item_kernel(item: Item<'_>) {
    let Item { g, offsets: o, b, qkv, bias, mask_b, mut out_b, mut lse_b, mut bwd } = item;
    let (nq, nk, d, dv, nv, scale) = (g.nq, g.nk, g.d, g.dv, g.n_valid, g.scale);
    let mut q = vec![0f32; nq * d];
    let mut kt = vec![0f32; d * nk];
    let mut vt = vec![0f32; dv * nk];
    let mut p = vec![0f32; nk];
    let back = bwd.is_some();
    let mut ds = vec![0f32; if back { nk } else { 0 }];
    let mut dkt = vec![0f32; if back { d * nk } else { 0 }];
    let mut dvt = vec![0f32; if back { dv * nk } else { 0 }];
    for h in 0..g.heads {
        for i in 0..nq {
            let row = &qkv[o.q.at(b, h, i)..][..d];
            for (x, &y) in q[i * d..(i + 1) * d].iter_mut().zip(row) {
                *x = y * scale;
            }
        }
        for j in 0..nk {
            for (e, &y) in qkv[o.k.at(b, h, j)..][..d].iter().enumerate() {
                kt[e * nk + j] = y;
            }
            for (e, &y) in qkv[o.v.at(b, h, j)..][..dv].iter().enumerate() {
                vt[e * nk + j] = y;
            }
        }
        let bias_h = bias.map(|x| &x[h * nq * nk..(h + 1) * nq * nk]);
        let extra = |i: usize| {
            (bias_h.map(|x| &x[i * nk..(i + 1) * nk]), mask_b.map(|m| &m[i * nk..(i + 1) * nk]))
        };
        if let Some(bw) = bwd.as_mut() {
            dkt.fill(0.0);
            dvt.fill(0.0);
            for i in 0..nq {
                let qi = &q[i * d..(i + 1) * d];
                let (bias_row, mask_row) = extra(i);
                probability_row(qi, &kt, bias_row, mask_row, nv, &mut p);
                let doi = &bw.dout[o.out.at(b, h, i)..][..dv];
                ds.fill(0.0);
                for (e, &a) in doi.iter().enumerate() {
                    axpy(&mut ds, a, &vt[e * nk..(e + 1) * nk]);
                }
                let dsum = simd::dot(&p, &ds);
                for (s, &pj) in ds.iter_mut().zip(&p) {
                    *s = pj * (*s - dsum);
                }
                if let Some(db) = bw.dbias.as_deref_mut() {
                    let row = &mut db[(h * nq + i) * nk..(h * nq + i + 1) * nk];
                    for (r, &s) in row.iter_mut().zip(&ds) {
                        *r += s;
                    }
                }
                // SAFETY: row i of head h of this item's q; no other slice of it is held.
                let dq = unsafe { grad_row(bw.grads, o.q.at(b, h, i), d) };
                for (e, x) in dq.iter_mut().enumerate() {
                    *x = scale * simd::dot(&ds, &kt[e * nk..(e + 1) * nk]);
                }
                for (e, &a) in qi.iter().enumerate() {
                    axpy(&mut dkt[e * nk..(e + 1) * nk], a, &ds);
                }
                for (e, &a) in doi.iter().enumerate() {
                    axpy(&mut dvt[e * nk..(e + 1) * nk], a, &p);
                }
            }
            for j in 0..nk {
                // SAFETY: rows j of head h of this item's k and v, one at a time.
                let dk = unsafe { grad_row(bw.grads, o.k.at(b, h, j), d) };
                for (e, x) in dk.iter_mut().enumerate() {
                    *x = dkt[e * nk + j];
                }
                // SAFETY: as above.
                let dvr = unsafe { grad_row(bw.grads, o.v.at(b, h, j), dv) };
                for (e, x) in dvr.iter_mut().enumerate() {
                    *x = dvt[e * nk + j];
                }
            }
        }
        if out_b.is_some() || lse_b.is_some() {
            for i in 0..nq {
                let (bias_row, mask_row) = extra(i);
                let l =
                    probability_row(&q[i * d..(i + 1) * d], &kt, bias_row, mask_row, nv, &mut p);
                if let Some(lse) = lse_b.as_deref_mut() {
                    lse[h * nq + i] = l;
                }
                if let Some(out) = out_b.as_deref_mut() {
                    let row = &mut out[o.out.at(0, h, i)..][..dv];
                    for (e, x) in row.iter_mut().enumerate() {
                        *x = simd::dot(&p, &vt[e * nk..(e + 1) * nk]);
                    }
                }
            }
        }
    }
}

/// `p = softmax(q_i·kᵀ + bias_row + mask_row)` over the first `nv` keys (`kt` is `[d, nk]`),
/// `p = 0` for the others; returns the row's log-sum-exp (`−∞` when `nv = 0`).
#[inline(always)]
fn probability_row(
    qi: &[f32],
    kt: &[f32],
    bias_row: Option<&[f32]>,
    mask_row: Option<&[f32]>,
    nv: usize,
    p: &mut [f32],
) -> f32 {
    let nk = p.len();
    let (pv, excluded) = p.split_at_mut(nv);
    excluded.fill(0.0);
    if nv == 0 {
        return f32::NEG_INFINITY;
    }
    match (bias_row, mask_row) {
        (Some(b), Some(m)) => {
            for ((o, &b), &m) in pv.iter_mut().zip(b).zip(m) {
                *o = b + m;
            }
        }
        (Some(b), None) => pv.copy_from_slice(&b[..nv]),
        (None, Some(m)) => pv.copy_from_slice(&m[..nv]),
        (None, None) => pv.fill(0.0),
    }
    for (e, &a) in qi.iter().enumerate() {
        axpy(pv, a, &kt[e * nk..e * nk + nv]);
    }
    let mx = simd::max(pv);
    for v in pv.iter_mut() {
        *v = simd::exp(*v - mx);
    }
    let sum = simd::sum_f32(pv) as f32;
    let inv = 1.0 / sum;
    for v in pv.iter_mut() {
        *v *= inv;
    }
    mx + sum.ln()
}

/// `y += a·x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in `[-1, 1)`.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u64 + 1) * (seed * 2654435761 + 1)) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn packed_forward_writes_out_and_log_sum_exp_of_the_valid_keys() {
        let g = AttentionGeom {
            batch: 4,
            heads: 2,
            nq: 5,
            nk: 6,
            d: 4,
            dv: 3,
            mask_windows: 2,
            n_valid: 5,
            scale: 0.7,
        };
        let qkv = values(QkvLayout::Packed.qkv_len(&g), 1);
        let bias = values(g.bias_len(), 2);
        let mask = values(g.mask_len(), 3);
        assert_eq!(QkvLayout::Packed.check(&g, qkv.len()), Ok(()));
        let mut lse = vec![0f32; g.lse_len()];
        let out = forward(&g, QkvLayout::Packed, &qkv, Some(&bias), Some(&mask), Some(&mut lse));
        let (q, rest) = qkv.split_at(g.q_len());
        let (k, v) = rest.split_at(g.k_len());
        for b in 0..g.batch {
            for h in 0..g.heads {
                for i in 0..g.nq {
                    let bh = b * g.heads + h;
                    let s: Vec<f64> = (0..g.n_valid)
                        .map(|j| {
                            let dot: f64 = (0..g.d)
                                .map(|e| {
                                    f64::from(q[(bh * g.nq + i) * g.d + e])
                                        * f64::from(k[(bh * g.nk + j) * g.d + e])
                                })
                                .sum();
                            dot * f64::from(g.scale)
                                + f64::from(bias[(h * g.nq + i) * g.nk + j])
                                + f64::from(mask[((b % 2) * g.nq + i) * g.nk + j])
                        })
                        .collect();
                    let want_lse = s.iter().map(|x| x.exp()).sum::<f64>().ln();
                    let got_lse = f64::from(lse[bh * g.nq + i]);
                    assert!((got_lse - want_lse).abs() < 1e-5, "lse {got_lse} vs {want_lse}");
                    for e in 0..g.dv {
                        let want: f64 = s
                            .iter()
                            .enumerate()
                            .map(|(j, x)| {
                                (x - want_lse).exp() * f64::from(v[(bh * g.nk + j) * g.dv + e])
                            })
                            .sum();
                        let got = f64::from(out[(bh * g.nq + i) * g.dv + e]);
                        assert!((got - want).abs() < 1e-5, "out {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn no_valid_key_gives_zero_rows_and_minus_infinity() {
        let g = AttentionGeom {
            batch: 1,
            heads: 1,
            nq: 2,
            nk: 3,
            d: 2,
            dv: 2,
            mask_windows: 1,
            n_valid: 0,
            scale: 1.0,
        };
        let qkv = values(QkvLayout::Packed.qkv_len(&g), 4);
        let mut lse = vec![0f32; g.lse_len()];
        let out = forward(&g, QkvLayout::Packed, &qkv, None, None, Some(&mut lse));
        assert!(out.iter().all(|x| *x == 0.0));
        assert!(lse.iter().all(|x| *x == f32::NEG_INFINITY));
        let grads = backward(&g, QkvLayout::Packed, &qkv, None, None, &values(g.out_len(), 5));
        assert!(grads.iter().all(|x| *x == 0.0));
    }

    #[test]
    fn interleaved_layout_needs_square_heads() {
        let g = AttentionGeom {
            batch: 1,
            heads: 1,
            nq: 2,
            nk: 3,
            d: 2,
            dv: 2,
            mask_windows: 1,
            n_valid: 3,
            scale: 1.0,
        };
        assert!(QkvLayout::Interleaved.check(&g, 18).is_err());
        assert!(QkvLayout::Packed.check(&g, 17).is_err());
        assert_eq!(QkvLayout::Packed.check(&g, 16), Ok(()));
    }
}
