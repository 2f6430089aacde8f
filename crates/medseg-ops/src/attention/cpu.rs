//! CPU kernel of the fused attention `softmax(q·kᵀ·scale + bias + mask)·v`, keys `≥ n_valid`
//! excluded: forward (with the row log-sum-exp on request) and backward, one batch item per rayon
//! task, every head of the item in cache.
//!
//! The arguments are those of `kernels/attention.cu` ([`AttentionGeom`]: sizes, `n_valid`, scale,
//! `bias` `[H, nq, nk]`, `mask` `[nW, nq, nk]`, `lse` `[B, H, nq]`); q, k and v come in one buffer
//! whose layout is a [`QkvLayout`]: the kernels' packed `q ‖ k ‖ v`, or MONAI's raw `qkv`
//! projection, read in place (no permute copy on the models' path).
//!
//! Per head the kernel copies `q·scale`, `kᵀ`, `v` (and for the backward `k`, `vᵀ`, `dO`) into
//! zero-padded row-major buffers, then walks blocks of query rows, each step a register-tiled
//! matrix product ([`gemm`]) or a row operation on the block (`P` and `dS` stay in L2):
//! - forward: `S = q·kᵀ`, `p = softmax(S + bias + mask)` over the valid keys, `lse = log Σ exp(…)`,
//!   `out = p·v`;
//! - backward (with `dO`): `p` recomputed (as flash-attention does), `dP = dO·vᵀ`,
//!   `dS = p ⊙ (dP − rowsum(p ⊙ dP))`, `dq = scale·dS·k`, `dk += dSᵀ·(q·scale)`, `dv += pᵀ·dO`,
//!   `dbias += dS`.
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
    forward_with(g, layout, qkv, (bias, mask), lse, dispatch)
}

/// The per-item kernel [`forward`] and [`backward`] run: [`dispatch`], or one instance of
/// [`item_kernel`] in the tests.
type Kernel = for<'a> fn(Item<'a>);

/// [`forward`] with `kernel` for each batch item.
fn forward_with(
    g: &AttentionGeom,
    layout: QkvLayout,
    qkv: &[f32],
    (bias, mask): (Option<&[f32]>, Option<&[f32]>),
    lse: Option<&mut [f32]>,
    kernel: Kernel,
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
            kernel(Item {
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
    backward_with(g, layout, qkv, (bias, mask), dout, dispatch)
}

/// [`backward`] with `kernel` for each batch item.
fn backward_with(
    g: &AttentionGeom,
    layout: QkvLayout,
    qkv: &[f32],
    (bias, mask): (Option<&[f32]>, Option<&[f32]>),
    dout: &[f32],
    kernel: Kernel,
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
                kernel(Item {
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

/// Runs [`item_kernel`] compiled for the best vector ISA of the running CPU, with tiles sized for
/// its register file (see [`item_kernel`]).
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
    item_kernel::<1, 3, false>(item)
}

/// 32 zmm registers: 8×32 tiles (16 accumulators) for the key-wide products, 8×16 (8) for the
/// head-dim-wide ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
unsafe fn item_kernel_avx512(item: Item<'_>) {
    item_kernel::<8, 8, true>(item)
}

/// 16 ymm registers: 3×32 and 6×16 tiles (12 accumulators each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn item_kernel_avx2(item: Item<'_>) {
    item_kernel::<3, 6, true>(item)
}

/// Columns of a tile of the key-wide products (`S = q·kᵀ`, `dP = dO·vᵀ`); the key count is
/// padded to a multiple of it.
const WIDE: usize = 32;
/// Columns of a tile of the head-dim-wide products (`p·v`, `dS·k`, `dSᵀ·q`, `pᵀ·dO`); head dims
/// are padded to a multiple of it.
const NARROW: usize = 16;
/// Terms of the inner sums accumulated in registers before they are added to the result
/// ([`gemm`]): the rounding error grows like `K_BLOCK + k/K_BLOCK`, least near `√k` (≈ 19 for
/// the 343 keys of a 7³ window); 32 costs ≈ 3 % more time than 64.
const K_BLOCK: usize = 32;
/// Query rows per block: the block's `S`/`P` (and `dP`/`dS`) rows stay in L2.
const ROW_BLOCK: usize = 64;

/// One batch item, every head (see the module documentation for the mathematics), as blocked
/// matrix products ([`gemm`]) on per-head copies: `q·scale` `[nq, dp]`, `kᵀ` `[d, nkp]`, `v`
/// `[nkp, dvp]` (and for the backward `k` `[nkp, dp]`, `vᵀ` `[dv, nkp]`, `dO` `[nq, dvp]`), the
/// key count padded to `nkp` (a multiple of [`WIDE`]) and the head dims to `dp`, `dvp`
/// (multiples of [`NARROW`]) with zeros. `WM`, `NM`: tile rows of the wide and narrow products;
/// `FMA`: fused multiply-add. Each product element is a fixed blocked sum over its inner index, so
/// the tile sizes do not change the results.
#[inline(always)]
fn item_kernel<const WM: usize, const NM: usize, const FMA: bool>(item: Item<'_>) {
    let Item { g, offsets: o, b, qkv, bias, mask_b, mut out_b, mut lse_b, mut bwd } = item;
    let (nq, nk, d, dv, nv, scale) = (g.nq, g.nk, g.d, g.dv, g.n_valid, g.scale);
    let nkp = nk.next_multiple_of(WIDE);
    let (dp, dvp) = (d.next_multiple_of(NARROW), dv.next_multiple_of(NARROW));
    let mb = ROW_BLOCK.min(nq);
    let back = bwd.is_some();
    let if_back = |n: usize| if back { n } else { 0 };
    let mut qs = vec![0f32; nq * dp];
    let mut kt = vec![0f32; d * nkp];
    let mut vr = vec![0f32; nkp * dvp];
    // The block's probabilities, and its output (forward) or `dq` (backward) rows.
    let mut pb = vec![0f32; mb * nkp];
    let mut ob = vec![0f32; mb * dp.max(dvp)];
    let mut kr = vec![0f32; if_back(nkp * dp)];
    let mut vt = vec![0f32; if_back(dv * nkp)];
    let mut dob = vec![0f32; if_back(nq * dvp)];
    let mut dsb = vec![0f32; if_back(mb * nkp)];
    let mut dka = vec![0f32; if_back(nkp * dp)];
    let mut dva = vec![0f32; if_back(nkp * dvp)];
    for h in 0..g.heads {
        for i in 0..nq {
            let row = &qkv[o.q.at(b, h, i)..][..d];
            for (x, &y) in qs[i * dp..][..d].iter_mut().zip(row) {
                *x = y * scale;
            }
        }
        for j in 0..nk {
            let krow = &qkv[o.k.at(b, h, j)..][..d];
            let vrow = &qkv[o.v.at(b, h, j)..][..dv];
            for (e, &y) in krow.iter().enumerate() {
                kt[e * nkp + j] = y;
            }
            vr[j * dvp..][..dv].copy_from_slice(vrow);
            if back {
                kr[j * dp..][..d].copy_from_slice(krow);
                for (e, &y) in vrow.iter().enumerate() {
                    vt[e * nkp + j] = y;
                }
            }
        }
        let bias_h = bias.map(|x| &x[h * nq * nk..(h + 1) * nq * nk]);
        let extra = |i: usize| {
            (bias_h.map(|x| &x[i * nk..(i + 1) * nk]), mask_b.map(|m| &m[i * nk..(i + 1) * nk]))
        };
        if let Some(bw) = bwd.as_ref() {
            for i in 0..nq {
                dob[i * dvp..][..dv].copy_from_slice(&bw.dout[o.out.at(b, h, i)..][..dv]);
            }
            dka.fill(0.0);
            dva.fill(0.0);
        }
        for i0 in (0..nq).step_by(mb) {
            let rows = mb.min(nq - i0);
            // S = (q·scale)·kᵀ, then the probabilities in place.
            gemm::<WM, WIDE, FMA>(
                (rows, nkp, d),
                (&qs[i0 * dp..], dp, 1),
                (&kt, nkp),
                (&mut pb, nkp),
                1.0,
                false,
            );
            for r in 0..rows {
                let (bias_row, mask_row) = extra(i0 + r);
                let l = softmax_row::<FMA>(&mut pb[r * nkp..(r + 1) * nkp], bias_row, mask_row, nv);
                if let Some(lse) = lse_b.as_deref_mut() {
                    lse[h * nq + i0 + r] = l;
                }
            }
            if let Some(bw) = bwd.as_mut() {
                // dP = dO·vᵀ, then dS = p ⊙ (dP − rowsum(p ⊙ dP)) in place.
                gemm::<WM, WIDE, FMA>(
                    (rows, nkp, dv),
                    (&dob[i0 * dvp..], dvp, 1),
                    (&vt, nkp),
                    (&mut dsb, nkp),
                    1.0,
                    false,
                );
                for r in 0..rows {
                    let p = &pb[r * nkp..(r + 1) * nkp];
                    let ds = &mut dsb[r * nkp..(r + 1) * nkp];
                    let dsum = simd::dot(&p[..nv], &ds[..nv]);
                    for (s, &pj) in ds.iter_mut().zip(p) {
                        *s = pj * (*s - dsum);
                    }
                    if let Some(db) = bw.dbias.as_deref_mut() {
                        let i = i0 + r;
                        for (x, &s) in db[(h * nq + i) * nk..][..nk].iter_mut().zip(ds.iter()) {
                            *x += s;
                        }
                    }
                }
                // dq = scale·dS·k.
                gemm::<NM, NARROW, FMA>(
                    (rows, dp, nv),
                    (&dsb, nkp, 1),
                    (&kr, dp),
                    (&mut ob, dp),
                    scale,
                    false,
                );
                for r in 0..rows {
                    // SAFETY: row i0 + r of head h of this item's q; no other slice of it is held.
                    let dq = unsafe { grad_row(bw.grads, o.q.at(b, h, i0 + r), d) };
                    dq.copy_from_slice(&ob[r * dp..][..d]);
                }
                // dk += dSᵀ·(q·scale), dv += pᵀ·dO (the transposes read in place).
                gemm::<NM, NARROW, FMA>(
                    (nv, dp, rows),
                    (&dsb, 1, nkp),
                    (&qs[i0 * dp..], dp),
                    (&mut dka, dp),
                    1.0,
                    true,
                );
                gemm::<NM, NARROW, FMA>(
                    (nv, dvp, rows),
                    (&pb, 1, nkp),
                    (&dob[i0 * dvp..], dvp),
                    (&mut dva, dvp),
                    1.0,
                    true,
                );
            } else if let Some(out) = out_b.as_deref_mut() {
                // out = p·v.
                gemm::<NM, NARROW, FMA>(
                    (rows, dvp, nv),
                    (&pb, nkp, 1),
                    (&vr, dvp),
                    (&mut ob, dvp),
                    1.0,
                    false,
                );
                for r in 0..rows {
                    out[o.out.at(0, h, i0 + r)..][..dv].copy_from_slice(&ob[r * dvp..][..dv]);
                }
            }
        }
        if let Some(bw) = bwd.as_ref() {
            // Keys ≥ n_valid have zero gradients: their rows keep the buffer's zeros.
            for j in 0..nv {
                // SAFETY: rows j of head h of this item's k and v, one at a time.
                let dk = unsafe { grad_row(bw.grads, o.k.at(b, h, j), d) };
                dk.copy_from_slice(&dka[j * dp..][..d]);
                // SAFETY: as above.
                let dvr = unsafe { grad_row(bw.grads, o.v.at(b, h, j), dv) };
                dvr.copy_from_slice(&dva[j * dvp..][..dv]);
            }
        }
    }
}

/// Lanes of the softmax's running maximum and sum.
const LANES: usize = 16;

/// In place on the row `s` of scores (`nkp` long): `p = softmax(s + bias_row + mask_row)` over the
/// first `nv` keys, `p = 0` for the others (padding included); returns the row's log-sum-exp
/// (`−∞` when `nv = 0`). The maximum and the sum run over [`LANES`] lanes, the exponentials in
/// the same pass as the sum.
#[inline(always)]
fn softmax_row<const FMA: bool>(
    s: &mut [f32],
    bias_row: Option<&[f32]>,
    mask_row: Option<&[f32]>,
    nv: usize,
) -> f32 {
    let (pv, excluded) = s.split_at_mut(nv);
    excluded.fill(0.0);
    if nv == 0 {
        return f32::NEG_INFINITY;
    }
    if let Some(b) = bias_row {
        for (o, &x) in pv.iter_mut().zip(b) {
            *o += x;
        }
    }
    if let Some(m) = mask_row {
        for (o, &x) in pv.iter_mut().zip(m) {
            *o += x;
        }
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = pv.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mx = chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0f32; LANES];
    let mut chunks = pv.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (acc, x) in lanes.iter_mut().zip(c) {
            *x = exp_nonpositive::<FMA>(*x - mx);
            *acc += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp_nonpositive::<FMA>(*x - mx);
        sum += *x;
    }
    let sum = lanes.iter().sum::<f32>() + sum;
    let inv = 1.0 / sum;
    for v in pv.iter_mut() {
        *v *= inv;
    }
    mx + sum.ln()
}

/// `a·b + c`, fused when `FMA` (callers enable the `fma` target feature then).
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x` for `x ≤ 0` (softmax arguments `s − max`): ≈ 2 ulp, 0 below −87.3 (so that masked keys
/// get exact zeros), NaN kept. [`simd::exp`]'s range reduction and polynomial (with fused
/// multiply-adds when `FMA`), but `2^n` is read from the bits of the rounding sum
/// `x·log2(e) + 1.5·2²³` (whose last bits hold `n ∈ [−126, 0]`): a float → int cast compiles to
/// one scalar conversion per lane, and `n ≤ 0` needs no split of the scale.
#[inline(always)]
fn exp_nonpositive<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0;
    const LOW: f32 = -87.336_55;
    let x0 = x;
    // Not `max`: a NaN must stay NaN.
    let x = if x < LOW { LOW } else { x };
    let t = mul_add::<FMA>(x, LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = mul_add::<FMA>(n, -LN2_LO, mul_add::<FMA>(n, -LN2_HI, x));
    let p = 1.987_569_1e-4_f32;
    let p = mul_add::<FMA>(p, r, 1.398_199_9e-3);
    let p = mul_add::<FMA>(p, r, 8.333_452e-3);
    let p = mul_add::<FMA>(p, r, 4.166_579_6e-2);
    let p = mul_add::<FMA>(p, r, 0.166_666_66);
    let p = mul_add::<FMA>(p, r, 0.5);
    let e = mul_add::<FMA>(p, r * r, r) + 1.0;
    // t ∈ [2²³, 2²⁴) has an ulp of 1, so its bits are MAGIC's plus n.
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let y = e * f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    if x0 < LOW { 0.0 } else { y }
}

/// `c[i·c_rs + j] (+)= alpha·Σ_kk a[i·a_rs + kk·a_cs]·b[kk·b_rs + j]` for `i < m`, `j < n`
/// (`n` a multiple of `NR`), in `MR × NR` register tiles ([`tile`]). The strides of `a` make a
/// transposed operand free; `b` is row-major. The sum over `kk` runs in blocks of [`K_BLOCK`]
/// terms, each added to `c` in turn (rounding error ∝ `K_BLOCK + k/K_BLOCK` rather than `k` for
/// the long sums over keys); the blocks do not depend on `MR` and `NR`.
#[allow(clippy::type_complexity)]
#[inline(always)]
fn gemm<const MR: usize, const NR: usize, const FMA: bool>(
    (m, n, k): (usize, usize, usize),
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs): (&[f32], usize),
    (c, c_rs): (&mut [f32], usize),
    alpha: f32,
    accumulate: bool,
) {
    assert!(n % NR == 0, "gemm: {n} columns are not a multiple of {NR}");
    if m == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: nothing to read from a or b.
        if !accumulate {
            for i in 0..m {
                c[i * c_rs..][..n].fill(0.0);
            }
        }
        return;
    }
    let store = |c: &mut [f32], acc: &[[f32; NR]; MR], row0, rows, j0, add| {
        store_tile::<MR, NR>((c, c_rs), acc, row0, rows, j0, (alpha, add))
    };
    if m < MR {
        // Fewer rows than a tile: copy them into a zero-padded `MR × k` operand.
        let mut t = vec![0f32; MR * k];
        for i in 0..m {
            for kk in 0..k {
                t[i * k + kk] = a[i * a_rs + kk * a_cs];
            }
        }
        for j0 in (0..n).step_by(NR) {
            for k0 in (0..k).step_by(K_BLOCK) {
                let kb = K_BLOCK.min(k - k0);
                let acc = tile::<MR, NR, FMA>((&t[k0..], k, 1), (&b[k0 * b_rs + j0..], b_rs), kb);
                store(c, &acc, 0, 0..m, j0, accumulate || k0 > 0);
            }
        }
        return;
    }
    for i0 in (0..m).step_by(MR) {
        // The last tile is moved up to end at row m; its rows before i0 are not stored again.
        let start = i0.min(m - MR);
        for j0 in (0..n).step_by(NR) {
            for k0 in (0..k).step_by(K_BLOCK) {
                let kb = K_BLOCK.min(k - k0);
                let a_tile = &a[start * a_rs + k0 * a_cs..];
                let acc =
                    tile::<MR, NR, FMA>((a_tile, a_rs, a_cs), (&b[k0 * b_rs + j0..], b_rs), kb);
                store(c, &acc, start, i0 - start..MR, j0, accumulate || k0 > 0);
            }
        }
    }
}

/// Rows `rows` of the tile `acc` into `c` from row `row0`, column `j0`: `c = alpha·acc`, or
/// `c += alpha·acc` when `add`.
#[inline(always)]
fn store_tile<const MR: usize, const NR: usize>(
    (c, c_rs): (&mut [f32], usize),
    acc: &[[f32; NR]; MR],
    row0: usize,
    rows: std::ops::Range<usize>,
    j0: usize,
    (alpha, add): (f32, bool),
) {
    // Every row, skipping those outside `rows`: a constant index keeps `acc` in registers.
    for (r, acc_r) in acc.iter().enumerate() {
        if !rows.contains(&r) {
            continue;
        }
        let out = &mut c[(row0 + r) * c_rs + j0..][..NR];
        // Whole rows loaded before anything is stored, so that the row compiles to vector
        // operations (LLVM does not always see that `c` and `acc` are apart).
        let mut row = [0f32; NR];
        if add {
            row.copy_from_slice(out);
        }
        for (x, &y) in row.iter_mut().zip(acc_r) {
            *x += alpha * y;
        }
        out.copy_from_slice(&row);
    }
}

/// The `MR × NR` product `acc[r][l] = Σ_kk a[r·a_rs + kk·a_cs]·b[kk·b_rs + l]`, `kk < k`, in
/// registers: per `kk`, one `NR`-wide row of `b` and `MR` broadcasts of `a`.
#[inline(always)]
fn tile<const MR: usize, const NR: usize, const FMA: bool>(
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs): (&[f32], usize),
    k: usize,
) -> [[f32; NR]; MR] {
    let mut acc = [[0f32; NR]; MR];
    if k == 0 {
        return acc;
    }
    let a_last = (MR - 1)
        .checked_mul(a_rs)
        .zip((k - 1).checked_mul(a_cs))
        .and_then(|(x, y)| x.checked_add(y));
    assert!(a_last.is_some_and(|l| l < a.len()), "tile: a operand out of bounds");
    let b_end = (k - 1).checked_mul(b_rs).and_then(|x| x.checked_add(NR));
    assert!(b_end.is_some_and(|e| e <= b.len()), "tile: b operand out of bounds");
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for kk in 0..k {
        // SAFETY: kk < k, so kk·b_rs + NR ≤ b_end ≤ b.len() (asserted above, no overflow); an
        // `[f32; NR]` has the alignment of `f32`.
        let bv = unsafe { &*bp.add(kk * b_rs).cast::<[f32; NR]>() };
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: r < MR and kk < k, so the offset is at most a_last < a.len().
            let av = unsafe { *ap.add(r * a_rs + kk * a_cs) };
            for (x, &y) in acc_r.iter_mut().zip(bv) {
                *x = if FMA { av.mul_add(y, *x) } else { *x + av * y };
            }
        }
    }
    acc
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

    /// `gemm` against a plain f64 triple loop: sizes below, at and above a tile, `k = 0`, row-major
    /// and transposed `a`, overwrite and accumulate.
    fn check_gemm<const MR: usize, const NR: usize, const FMA: bool>() {
        for m in [1, 2, MR, MR + 1, 2 * MR + 3, 37] {
            for n in [NR, 2 * NR] {
                for k in [0, 1, 5, 16, 37] {
                    for transposed in [false, true] {
                        for accumulate in [false, true] {
                            let seed = (m * 7 + n * 3 + k) as u64;
                            // a is m × k; stored transposed (k × m, padded rows) on request.
                            let a_ld = m + 3;
                            let a_store =
                                values(if transposed { k * a_ld } else { m * k } + 1, seed);
                            let (a_rs, a_cs) = if transposed { (1, a_ld) } else { (k, 1) };
                            let b_rs = n + 5;
                            let b = values(k * b_rs + 1, seed + 1);
                            let c_rs = n + 2;
                            let c0 = values(m * c_rs, seed + 2);
                            let mut c = c0.clone();
                            gemm::<MR, NR, FMA>(
                                (m, n, k),
                                (&a_store, a_rs, a_cs),
                                (&b, b_rs),
                                (&mut c, c_rs),
                                0.75,
                                accumulate,
                            );
                            for i in 0..m {
                                for j in 0..c_rs {
                                    let got = c[i * c_rs + j];
                                    if j >= n {
                                        assert_eq!(got, c0[i * c_rs + j], "column {j} ≥ n written");
                                        continue;
                                    }
                                    let dot: f64 = (0..k)
                                        .map(|kk| {
                                            f64::from(a_store[i * a_rs + kk * a_cs])
                                                * f64::from(b[kk * b_rs + j])
                                        })
                                        .sum();
                                    let base =
                                        if accumulate { f64::from(c0[i * c_rs + j]) } else { 0.0 };
                                    let want = base + 0.75 * dot;
                                    assert!(
                                        (f64::from(got) - want).abs() < 1e-5,
                                        "MR {MR} NR {NR} m {m} n {n} k {k} transposed {transposed} \
                                         ({i}, {j}): {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_matches_a_triple_loop() {
        check_gemm::<8, 32, true>();
        check_gemm::<8, 16, false>();
        check_gemm::<3, 16, true>();
        check_gemm::<1, 32, false>();
    }

    #[test]
    fn exp_nonpositive_matches_f64() {
        for fma in [false, true] {
            let f =
                |x: f32| if fma { exp_nonpositive::<true>(x) } else { exp_nonpositive::<false>(x) };
            let mut worst = 0f64;
            for i in 0..=87_300 {
                let x = -(i as f32) * 1e-3;
                let want = f64::from(x).exp();
                worst = worst.max((f64::from(f(x)) - want).abs() / want);
            }
            assert!(worst < 3e-7, "fma {fma}: worst relative error {worst}");
            assert_eq!(f(0.0), 1.0);
            assert_eq!(f(-87.4), 0.0);
            assert_eq!(f(-100.0), 0.0);
            assert_eq!(f(f32::NEG_INFINITY), 0.0);
            assert!(f(f32::NAN).is_nan());
        }
    }

    /// Forward and backward on several row blocks, padded keys and head dims, bias, mask and
    /// `n_valid < nk`, against a plain f64 evaluation of the formulas.
    #[test]
    fn forward_and_backward_with_excluded_keys_match_plain_formulas() {
        let g = AttentionGeom {
            batch: 3,
            heads: 2,
            nq: ROW_BLOCK + 9,
            nk: 37,
            d: 5,
            dv: 18,
            mask_windows: 3,
            n_valid: 30,
            scale: 0.6,
        };
        let qkv = values(QkvLayout::Packed.qkv_len(&g), 6);
        let bias = values(g.bias_len(), 7);
        let mask = values(g.mask_len(), 8);
        let dout = values(g.out_len(), 9);
        let mut lse = vec![0f32; g.lse_len()];
        let out = forward(&g, QkvLayout::Packed, &qkv, Some(&bias), Some(&mask), Some(&mut lse));
        let grads = backward(&g, QkvLayout::Packed, &qkv, Some(&bias), Some(&mask), &dout);
        let (q, rest) = qkv.split_at(g.q_len());
        let (k, v) = rest.split_at(g.k_len());
        let (nq, nk, d, dv, nv) = (g.nq, g.nk, g.d, g.dv, g.n_valid);
        let f = |x: f32| f64::from(x);
        let close = |got: f32, want: f64, what: &str| {
            assert!((f(got) - want).abs() < 2e-5 * (1.0 + want.abs()), "{what}: {got} vs {want}");
        };
        let mut dbias = vec![0f64; g.bias_len()];
        for b in 0..g.batch {
            for h in 0..g.heads {
                let bh = b * g.heads + h;
                let (qo, ko, vo) = (bh * nq * d, bh * nk * d, bh * nk * dv);
                let mut p = vec![vec![0f64; nk]; nq];
                for (i, pi) in p.iter_mut().enumerate() {
                    let s: Vec<f64> = (0..nv)
                        .map(|j| {
                            let dot: f64 =
                                (0..d).map(|e| f(q[qo + i * d + e]) * f(k[ko + j * d + e])).sum();
                            dot * f(g.scale)
                                + f(bias[(h * nq + i) * nk + j])
                                + f(mask[((b % 3) * nq + i) * nk + j])
                        })
                        .collect();
                    let l = s.iter().map(|x| x.exp()).sum::<f64>().ln();
                    close(lse[bh * nq + i], l, "lse");
                    for j in 0..nv {
                        pi[j] = (s[j] - l).exp();
                    }
                    for e in 0..dv {
                        let want: f64 = (0..nk).map(|j| pi[j] * f(v[vo + j * dv + e])).sum();
                        close(out[(bh * nq + i) * dv + e], want, "out");
                    }
                }
                let go = bh * nq * dv;
                let mut dk = vec![0f64; nk * d];
                let mut dvv = vec![0f64; nk * dv];
                for i in 0..nq {
                    let dp: Vec<f64> = (0..nk)
                        .map(|j| {
                            (0..dv).map(|e| f(dout[go + i * dv + e]) * f(v[vo + j * dv + e])).sum()
                        })
                        .collect();
                    let dsum: f64 = (0..nk).map(|j| p[i][j] * dp[j]).sum();
                    let ds: Vec<f64> = (0..nk).map(|j| p[i][j] * (dp[j] - dsum)).collect();
                    for j in 0..nk {
                        dbias[(h * nq + i) * nk + j] += ds[j];
                        for e in 0..d {
                            dk[j * d + e] += ds[j] * f(q[qo + i * d + e]) * f(g.scale);
                        }
                        for e in 0..dv {
                            dvv[j * dv + e] += p[i][j] * f(dout[go + i * dv + e]);
                        }
                    }
                    for e in 0..d {
                        let want: f64 =
                            (0..nk).map(|j| ds[j] * f(k[ko + j * d + e])).sum::<f64>() * f(g.scale);
                        close(grads[qo + i * d + e], want, "dq");
                    }
                }
                for j in 0..nk {
                    for e in 0..d {
                        close(grads[g.q_len() + ko + j * d + e], dk[j * d + e], "dk");
                    }
                    for e in 0..dv {
                        close(
                            grads[g.q_len() + g.k_len() + vo + j * dv + e],
                            dvv[j * dv + e],
                            "dv",
                        );
                    }
                }
            }
        }
        let db = &grads[qkv.len()..];
        assert_eq!(db.len(), g.bias_len());
        for (&got, &want) in db.iter().zip(&dbias) {
            close(got, want, "dbias");
        }
    }

    /// Every tile configuration (the AVX-512, AVX2 and plain instances, run here without their
    /// target features) gives the dispatched kernel's results bit for bit when it fuses the
    /// multiply-adds as the dispatched one does (the tiles do not change the sums), and the same
    /// within rounding without fusing.
    #[test]
    fn tile_configurations_agree() {
        for layout in [QkvLayout::Packed, QkvLayout::Interleaved] {
            let g = AttentionGeom {
                batch: 4,
                heads: 3,
                nq: 41,
                nk: 41,
                d: 6,
                dv: 6,
                mask_windows: 2,
                n_valid: 41,
                scale: 0.4,
            };
            let qkv = values(layout.qkv_len(&g), 11);
            let bias = values(g.bias_len(), 12);
            let mask = values(g.mask_len(), 13);
            let dout = values(g.out_len(), 14);
            let extra = (Some(bias.as_slice()), Some(mask.as_slice()));
            let run = |kernel: Kernel| {
                let mut lse = vec![0f32; g.lse_len()];
                let mut all = forward_with(&g, layout, &qkv, extra, Some(&mut lse), kernel);
                all.extend(lse);
                all.extend(backward_with(&g, layout, &qkv, extra, &dout, kernel));
                all
            };
            let want = run(dispatch);
            #[cfg(target_arch = "x86_64")]
            let fused = std::arch::is_x86_feature_detected!("fma");
            #[cfg(not(target_arch = "x86_64"))]
            let fused = false;
            for (kernel, fma) in [
                (item_kernel::<8, 8, true> as Kernel, true),
                (item_kernel::<3, 6, true>, true),
                (item_kernel::<1, 3, false>, false),
            ] {
                let got = run(kernel);
                assert_eq!(got.len(), want.len());
                for (i, (&x, &y)) in got.iter().zip(&want).enumerate() {
                    if fma == fused {
                        assert_eq!(x.to_bits(), y.to_bits(), "{layout:?} fma {fma} element {i}");
                    } else {
                        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{layout:?} {i}: {x} {y}");
                    }
                }
            }
        }
    }
}
