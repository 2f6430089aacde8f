//! Direct weight gradient of the 3-D convolution on AVX-512 CPUs, `dW[o, c, t] = Σ_p dy[o, p] ·
//! x[c, p + tap t]`, where the direct forward applies (W stride 1, one group, output rows of at
//! least 16 positions): no column matrix and no GEMM packing.
//!
//! `x` is copied once per call to channels-last (`[N, D, H, W, Ci']`, `Ci'` = `Ci` rounded up
//! to 16, zero-filled), so one input position's channels are whole vectors. The kernel is then an
//! outer product per output row: for a block of [`MR`] output channels × up to [`CV`] channel
//! vectors and one tap, it broadcasts `dy[o, p]` and multiplies it into the channel vectors of
//! `x` at `p + tap`, over the row's positions whose tap lies inside the image (no masks), with
//! the `MR × CV` accumulators in zmm registers. Output rows are dealt in order to a fixed number
//! of groups ([`GROUPS`], one rayon task each, with its own `[Co', K, Ci']` accumulator), and the
//! groups are summed in order, so the result does not depend on the thread count.
use rayon::prelude::*;

use super::cpu::ConvGeom;
use crate::storage::SyncPtr;

/// Output channels per kernel call (rows past `Co` read a zero row).
const MR: usize = 8;
/// Channel vectors (16 input channels each) per kernel call: `MR × CV` = 24 accumulators.
const CV: usize = 3;
/// Lanes of one vector.
const LANES: usize = 16;
/// Accumulation groups: fixed, so the summation order is too.
const GROUPS: usize = 8;

/// `dW` `[Co, Ci, K]` from `x` `[N, Ci, img]` and `dy` `[N, Co, out]`, or `None` where the
/// direct kernels do not apply ([`super::direct::applies`]).
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Option<Vec<f32>> {
    if !super::direct::applies(g) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        Some(backward_weight_avx512(g, x, dy))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, dy);
        None
    }
}

/// `x` `[N, Ci, S]` → `[N, S, cip]` (channels past `Ci` zero), one task per (item, D plane).
fn channels_last(g: &ConvGeom, x: &[f32], cip: usize) -> Vec<f32> {
    let plane = g.img[1] * g.img[2];
    let img_len = g.img[0] * plane;
    let mut out = vec![0f32; g.n * img_len * cip];
    out.par_chunks_mut(plane * cip).enumerate().for_each(|(task, dst)| {
        let (b, d) = (task / g.img[0], task % g.img[0]);
        for c in 0..g.ci {
            let src = &x[(b * g.ci + c) * img_len + d * plane..][..plane];
            for (s, &v) in src.iter().enumerate() {
                dst[s * cip + c] = v;
            }
        }
    });
    out
}

#[cfg(target_arch = "x86_64")]
fn backward_weight_avx512(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let [k0, k1, k2] = g.k;
    let kvol = k0 * k1 * k2;
    let [_, ho, wo] = g.out;
    let [_, hi, wi] = g.img;
    let out_len = g.out.iter().product::<usize>();
    let cip = g.ci.div_ceil(LANES) * LANES;
    let cop = g.co.div_ceil(MR) * MR;
    let xcl = channels_last(g, x, cip);
    let zeros = vec![0f32; wo];
    let rows_total = g.n * g.out[0] * ho;
    let groups = GROUPS.min(rows_total).max(1);
    // Per group: `[Co', K, Ci']`, row m of a block at `m · K · Ci'`.
    let acc_len = cop * kvol * cip;
    let partial: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let mut acc = vec![0f32; acc_len];
            let accp = SyncPtr(acc.as_mut_ptr());
            for r in gi * rows_total / groups..(gi + 1) * rows_total / groups {
                let (b, od, oh) = (r / (g.out[0] * ho), (r / ho) % g.out[0], r % ho);
                for kd in 0..k0 {
                    let id = (od * g.stride[0] + kd * g.dil[0]) as isize - g.pad[0] as isize;
                    if id < 0 || id >= g.img[0] as isize {
                        continue;
                    }
                    for kh in 0..k1 {
                        let ih = (oh * g.stride[1] + kh * g.dil[1]) as isize - g.pad[1] as isize;
                        if ih < 0 || ih >= hi as isize {
                            continue;
                        }
                        let x_row = (b * g.img[0] + id as usize) * hi + ih as usize;
                        for kw in 0..k2 {
                            // Positions whose tap column lies in the image: iw = ow + s.
                            let s = (kw * g.dil[2]) as isize - g.pad[2] as isize;
                            let lo = (-s).max(0) as usize;
                            let hi_w = (wi as isize - s).clamp(0, wo as isize) as usize;
                            if hi_w <= lo {
                                continue;
                            }
                            let t = (kd * k1 + kh) * k2 + kw;
                            let x_at = (x_row * wi) as isize + lo as isize + s;
                            for co0 in (0..g.co).step_by(MR) {
                                let dys: [*const f32; MR] = std::array::from_fn(|m| {
                                    if co0 + m < g.co {
                                        let row =
                                            (b * g.co + co0 + m) * out_len + (od * ho + oh) * wo;
                                        dy[row + lo..].as_ptr()
                                    } else {
                                        zeros.as_ptr()
                                    }
                                });
                                for c0 in (0..cip).step_by(CV * LANES) {
                                    let cvs = CV.min((cip - c0) / LANES);
                                    let xp = xcl[x_at as usize * cip + c0..].as_ptr();
                                    // SAFETY: block rows co0.. of tap t, channels c0..c0+16·cvs
                                    // of this group's accumulator (co0 + MR ≤ Co', c0 + 16·cvs
                                    // ≤ Ci').
                                    let ap = unsafe { accp.ptr().add((co0 * kvol + t) * cip + c0) };
                                    let call = avx512::Row {
                                        dys,
                                        x: xp,
                                        cip,
                                        n: hi_w - lo,
                                        acc: ap,
                                        acc_stride: kvol * cip,
                                    };
                                    // SAFETY: AVX-512F is present (`applies`); the `n` positions
                                    // from `lo` lie inside dy's row (or the zero row, `n ≤ Wo`)
                                    // and their taps inside x's channels-last row (lo..hi_w).
                                    unsafe {
                                        match cvs {
                                            3 => avx512::row::<3>(&call),
                                            2 => avx512::row::<2>(&call),
                                            _ => avx512::row::<1>(&call),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; g.co * g.ci * kvol];
    for p in &partial {
        for o in 0..g.co {
            for c in 0..g.ci {
                for t in 0..kvol {
                    out[(o * g.ci + c) * kvol + t] += p[(o * kvol + t) * cip + c];
                }
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LANES, MR};

    /// One kernel call: `n` positions of `MR` output-channel rows (`dys`), the channels-last
    /// input rows at their tap (`x`, `cip` floats per position), accumulated into `acc`
    /// (row m at `m · acc_stride`).
    pub(super) struct Row {
        pub dys: [*const f32; MR],
        pub x: *const f32,
        pub cip: usize,
        pub n: usize,
        pub acc: *mut f32,
        pub acc_stride: usize,
    }

    /// `acc[m, v] += Σ_p dy_m[p] · x[p, v]` for `MR` rows and `CV2` channel vectors.
    ///
    /// # Safety
    /// AVX-512F must be present; `dys[m]` has `n` readable floats, `x` has `n` positions of
    /// `cip ≥ 16·CV2` floats, `acc` has `MR` rows of `16·CV2` floats `acc_stride` apart.
    #[target_feature(enable = "avx512f")]
    // Indexed loops over the constant-size register blocks: LLVM unrolls them into named zmm
    // registers.
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn row<const CV2: usize>(c: &Row) {
        // SAFETY: the caller's contract covers every pointer and the CPU feature.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); CV2]; MR];
            for p in 0..c.n {
                let xp = c.x.add(p * c.cip);
                let mut xv = [_mm512_setzero_ps(); CV2];
                for v in 0..CV2 {
                    xv[v] = _mm512_loadu_ps(xp.add(v * LANES));
                }
                for m in 0..MR {
                    let d = _mm512_set1_ps(*c.dys[m].add(p));
                    for v in 0..CV2 {
                        acc[m][v] = _mm512_fmadd_ps(d, xv[v], acc[m][v]);
                    }
                }
            }
            for m in 0..MR {
                for v in 0..CV2 {
                    let dst = c.acc.add(m * c.acc_stride + v * LANES);
                    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), acc[m][v]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in `[-1, 1)`.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u64 + 7) * (seed * 2654435761 + 1)) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn geom(
        n: usize,
        ci: usize,
        co: usize,
        img: [usize; 3],
        k: [usize; 3],
        pad: usize,
    ) -> ConvGeom {
        let out = [0, 1, 2].map(|a| img[a] + 2 * pad - k[a] + 1);
        ConvGeom { n, ci, co, groups: 1, img, out, k, stride: [1; 3], pad: [pad; 3], dil: [1; 3] }
    }

    /// Against the im2col + GEMM path: channel blocks and pair blocks with tails (co 13, pairs
    /// 4·1 and 5·3), partial vectors, W padding, batch 2, and model widths.
    #[test]
    fn matches_the_im2col_path() {
        let cases = [
            geom(2, 4, 13, [3, 4, 21], [1, 1, 1], 0),
            geom(1, 5, 9, [3, 3, 18], [3, 3, 3], 1),
            geom(1, 48, 24, [4, 5, 20], [3, 3, 3], 1),
            geom(2, 3, 8, [3, 4, 35], [3, 3, 3], 0),
        ];
        if !crate::conv::direct::applies(&cases[0]) {
            eprintln!("skipped: no AVX-512F on this CPU, the direct weight gradient never runs");
            return;
        }
        for (i, g) in cases.iter().enumerate() {
            let x = values(g.n * g.ci * g.img.iter().product::<usize>(), 2 * i as u64 + 1);
            let dy = values(g.n * g.co * g.out.iter().product::<usize>(), 2 * i as u64 + 2);
            let direct = backward_weight(g, &x, &dy).expect("direct applies");
            let want = super::super::cpu::backward_weight_im2col(g, &x, &dy);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (k, (a, b)) in direct.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * scale, "case {i} index {k}: {a} vs {b}");
            }
        }
    }
}
