//! bf16 product of [`super::linear`] on AVX-512 BF16 CPUs: `y = x·Wᵀ` with both operands rounded to
//! bf16 and f32 accumulation by `vdpbf16ps`.
//!
//! `x` `[M, K]` is converted once per call to rows of K/2 32-bit words (elements `2k`, `2k + 1`
//! in the low and high halves), `W` `[N, K]` to a panel `[K/2][N']` (`N'` = `N` rounded up to
//! 16, zeros past `N` and past an odd `K`). The kernel keeps [`MR`] rows × up to [`NV`] column
//! vectors of `y` in registers, broadcasts a row's word and multiplies it into the panel's
//! vectors: each instruction adds two products per lane. Rows are cut into tasks of [`ROWS`] for
//! rayon; every output element is one register sum in `k` order, so the result does not depend
//! on the thread count.
use candle::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::precision::{bf16_bits, pair_into_words};
use crate::storage::f32_slice;

/// Rows per kernel call.
const MR: usize = 8;
/// Column vectors (16 columns each) per kernel call: `MR × NV` = 24 accumulators.
const NV: usize = 3;
/// Lanes of one vector.
const LANES: usize = 16;
/// Rows per rayon task.
const ROWS: usize = 64;

/// `y = x·Wᵀ` in bf16 products (callers check that the CPU has AVX-512 BF16).
pub(crate) struct LinearBf16;

impl CustomOp2 for LinearBf16 {
    fn name(&self) -> &'static str {
        "linear_bf16"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(self.name(), s1, l1)?, f32_slice(self.name(), s2, l2)?);
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        Ok((CpuStorage::F32(product(x, w, m, n, k)?), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The gradients of the f32 product.
        Ok((Some(dy.matmul(w)?), Some(dy.t()?.matmul(x)?)))
    }
}

#[cfg(target_arch = "x86_64")]
fn product(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    if !crate::precision::bf16_dot_available() {
        candle::bail!("linear_bf16: this CPU has no AVX-512 BF16")
    }
    let (k2, np) = (k.div_ceil(2), n.div_ceil(LANES) * LANES);
    let mut panel = vec![0u32; k2 * np];
    for c in 0..n {
        for kk in 0..k {
            panel[(kk / 2) * np + c] |= bf16_bits(w[c * k + kk]) << (16 * (kk % 2));
        }
    }
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        // Empty sums (k = 0) are zero; no rows or columns, no work.
        return Ok(y);
    }
    y.par_chunks_mut(ROWS * n).zip(x.par_chunks(ROWS * k)).for_each(|(yc, xc)| {
        let rows = xc.len() / k.max(1);
        let pairs = pair_rows(xc, rows, k);
        // SAFETY: the CPU has AVX-512 BF16 (checked above); `pairs` holds `rows` rows of k2
        // words, the panel k2 rows of np words, `yc` `rows` rows of n floats.
        unsafe { product_block(&pairs, k2, rows, &panel, np, n, yc.as_mut_ptr(), n) }
    });
    Ok(y)
}

/// `rows` rows of `k` floats → rows of `⌈k/2⌉` words, elements `2j` and `2j + 1` in bf16 in the
/// low and high halves (0 past `k`): the row operand of [`product_block`].
pub(crate) fn pair_rows(x: &[f32], rows: usize, k: usize) -> Vec<u32> {
    let k2 = k.div_ceil(2);
    let mut pairs = vec![0u32; rows * k2];
    crate::simd::vectorized(
        #[inline(always)]
        || {
            for (pr, xr) in pairs.chunks_mut(k2).zip(x.chunks(k)) {
                for (p, two) in pr.iter_mut().zip(xr.chunks(2)) {
                    let hi = if two.len() == 2 { bf16_bits(two[1]) << 16 } else { 0 };
                    *p = bf16_bits(two[0]) | hi;
                }
            }
        },
    );
    pairs
}

/// `[k, n]` floats (row-major, `k` rows) → the panel operand of [`product_block`] in `panel`:
/// `⌈k/2⌉` rows of `np` words (`np`, returned, is `n` rounded up to 16), word `(j, c)` holding
/// rows `2j` and `2j + 1` of column `c` in bf16 (zeros past `n` and past `k`).
pub(crate) fn pair_panel(b: &[f32], k: usize, n: usize, panel: &mut Vec<u32>) -> usize {
    let np = n.div_ceil(LANES) * LANES;
    panel.clear();
    panel.resize(k.div_ceil(2) * np, 0);
    for (j, row) in panel.chunks_mut(np).enumerate() {
        let lo = &b[2 * j * n..(2 * j + 1) * n];
        let hi = (2 * j + 1 < k).then(|| &b[(2 * j + 1) * n..(2 * j + 2) * n]);
        pair_into_words(row, lo, hi);
    }
    np
}

/// `y[r, c] = Σ_j pairs[r, j] · panel[j, c]` (pairwise bf16 products, f32 sums in `j` order) for
/// `rows` rows and `n` columns, row `r` of `y` at `y + r·ldy`; single-threaded.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16; `pairs` holds `rows` rows of `k2` words, `panel`
/// `k2` rows of `np ≥ n` words (`np` a multiple of 16), and `y` `rows` rows of `n` writable
/// floats `ldy` apart that nothing else accesses meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product_block(
    pairs: &[u32],
    k2: usize,
    rows: usize,
    panel: &[u32],
    np: usize,
    n: usize,
    y: *mut f32,
    ldy: usize,
) {
    for m0 in (0..rows).step_by(MR) {
        let mr = MR.min(rows - m0);
        for n0 in (0..np).step_by(NV * LANES) {
            let call = avx512::Block {
                x: pairs[m0 * k2..].as_ptr(),
                k2,
                rows: mr,
                panel: panel[n0..].as_ptr(),
                np,
                // SAFETY: row m0 of `y` (the caller's contract).
                y: unsafe { y.add(m0 * ldy) },
                ldy,
                n,
                n0,
            };
            // SAFETY: the caller's contract; stores are masked to columns < n.
            unsafe {
                match ((np - n0) / LANES).min(NV) {
                    3 => avx512::block::<3>(&call),
                    2 => avx512::block::<2>(&call),
                    _ => avx512::block::<1>(&call),
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn product(_: &[f32], _: &[f32], _: usize, _: usize, _: usize) -> Result<Vec<f32>> {
    candle::bail!("linear_bf16: needs an x86-64 CPU with AVX-512 BF16")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LANES, MR};

    /// One kernel call: `rows` (≤ MR) rows of word pairs `x` (`k2` per row), the panel from
    /// column `n0` (`np` words per row), `y` rows of `n` floats `ldy` apart.
    pub(super) struct Block {
        pub x: *const u32,
        pub k2: usize,
        pub rows: usize,
        pub panel: *const u32,
        pub np: usize,
        pub y: *mut f32,
        pub ldy: usize,
        pub n: usize,
        pub n0: usize,
    }

    /// `y[r, n0 + 16v + l] = Σ_j x[r, j] · panel[j, 16v + l]` (pairwise bf16 products).
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16 must be present; the pointers as [`Block`] describes.
    #[target_feature(enable = "avx512f,avx512bf16")]
    // Indexed loops over the constant-size register blocks: LLVM unrolls them into named zmm
    // registers.
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn block<const V: usize>(c: &Block) {
        // SAFETY: the caller's contract; `__m512i` and `__m512bh` are both 512-bit vectors.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; MR];
            // Rows past `rows` repeat the last row (their sums are not stored).
            let xr: [*const u32; MR] = std::array::from_fn(|r| c.x.add(r.min(c.rows - 1) * c.k2));
            for j in 0..c.k2 {
                let mut wv = [std::mem::transmute::<__m512, __m512bh>(_mm512_setzero_ps()); V];
                for v in 0..V {
                    let p = c.panel.add(j * c.np + v * LANES) as *const i32;
                    wv[v] = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_epi32(p));
                }
                for r in 0..MR {
                    let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        *xr[r].add(j) as i32,
                    ));
                    for v in 0..V {
                        acc[r][v] = _mm512_dpbf16_ps(acc[r][v], b, wv[v]);
                    }
                }
            }
            for r in 0..c.rows {
                for v in 0..V {
                    let col = c.n0 + v * LANES;
                    let lanes = c.n.saturating_sub(col).min(LANES);
                    let mask = ((1u32 << lanes) - 1) as u16;
                    _mm512_mask_storeu_ps(c.y.add(r * c.ldy + col), mask, acc[r][v]);
                }
            }
        }
    }
}
