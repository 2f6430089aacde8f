//! Direct 3-D convolution on AVX-512 CPUs (the forward product of `conv3d` when the W stride is 1
//! and there is one group): no column matrix and no GEMM packing, the input rows are read in
//! place.
//!
//! The output is cut into tiles of [`NV`] vectors, each 16 consecutive positions of one output
//! row (a row whose length is not a multiple of 16 ends in a partial vector; a tile may span rows
//! and planes). For a
//! tile, a table lists the kernel taps that touch the image and, per vector, the input offset and
//! the lane mask of that tap (lanes that fall into the W padding are masked off; taps whose D or
//! H row falls into the padding are left out). The micro-kernel keeps `MR × NV` accumulators in
//! registers — `MR` output channels times the tile's vectors — and for every input channel and
//! listed tap loads the `NV` input vectors (masked loads, read straight from the image) and
//! broadcasts `MR` weights from a panel packed once per call (`[Co/MR][Ci][K][MR]`: 62 k weights
//! against 110 GFLOP for 48 channels at 96³). The reduction runs in `gemm`'s k-chunks (see
//! [`KC_TARGET`]), each in index order (input channels, then taps), so results do not depend on
//! the thread count.
//!
//! The bf16 twin ([`forward_bf16`], for `Precision::Bf16`) runs the same tiles on channel pairs:
//! the image is converted once per call to 32-bit words holding two channels' bf16 values, the
//! weights to pair panels, and each `vdpbf16ps` adds two channels' products per lane in f32 —
//! twice the multiply-adds of an f32 FMA per instruction.
use rayon::prelude::*;

use super::cpu::ConvGeom;
use crate::precision::{bf16_bits, pair_into_words};
use crate::storage::SyncPtr;

/// Vectors per tile (16 output positions each).
const NV: usize = 3;
/// Output channels per micro-kernel call: `MR × NV` = 24 accumulators of the 32 zmm registers.
const MR: usize = 8;
/// Lanes of one vector.
const LANES: usize = 16;
/// Longest reduction chunk: `gemm` 0.19 cuts its k dimension into `⌈k / ⌈k / 512⌉⌉`-long blocks
/// on CPUs with a 32 KiB 8-way L1 (its `kernel_params`); using the same chunks, each summed in
/// index order, makes this kernel give the im2col + GEMM path's bits there (forward, and the data
/// gradient that runs as a forward), so every golden and tolerance keeps its meaning.
const KC_TARGET: usize = 512;

/// Whether [`forward`] handles `g` on this CPU: AVX-512F present, W stride 1, one group, and
/// output rows of at least 16 positions (shorter rows would leave most lanes idle; the im2col +
/// GEMM path serves them).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.stride[2] == 1 && g.groups == 1 && g.out[2] >= LANES && has_avx512()
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One vector of a tile: its first output position (flat index in `[Do·Ho·Wo]`), its coordinates
/// and the number of valid lanes.
#[derive(Debug, Clone, Copy, Default)]
struct Vector {
    out: usize,
    od: usize,
    oh: usize,
    ow: usize,
    lanes: usize,
}

/// One listed tap of a tile: the weight tap index and, per vector, the input offset (relative to
/// the channel's image) and lane mask.
#[derive(Debug, Clone, Copy, Default)]
struct Tap {
    t: usize,
    off: [isize; NV],
    mask: [u16; NV],
}

/// The tiles of `g`'s output: `NV` consecutive vectors each, in output order (a tile may span
/// rows and planes; the last one may hold fewer).
fn tiles(g: &ConvGeom) -> Vec<([Vector; NV], usize)> {
    let [od_n, oh_n, ow_n] = g.out;
    let mut tiles = Vec::new();
    let mut cur = [Vector::default(); NV];
    let mut n = 0;
    for od in 0..od_n {
        for oh in 0..oh_n {
            let mut ow = 0;
            while ow < ow_n {
                let lanes = LANES.min(ow_n - ow);
                cur[n] = Vector { out: (od * oh_n + oh) * ow_n + ow, od, oh, ow, lanes };
                n += 1;
                ow += lanes;
                if n == NV {
                    tiles.push((cur, n));
                    n = 0;
                }
            }
        }
    }
    if n > 0 {
        tiles.push((cur, n));
    }
    tiles
}

/// The taps of a tile that touch the image, with per-vector offsets and masks.
fn tap_table(g: &ConvGeom, vs: &[Vector], out: &mut Vec<Tap>) {
    out.clear();
    let [di, hi, wi] = g.img.map(|v| v as isize);
    let [k0, k1, k2] = g.k;
    for kd in 0..k0 {
        for kh in 0..k1 {
            for kw in 0..k2 {
                let mut tap = Tap { t: (kd * k1 + kh) * k2 + kw, ..Tap::default() };
                let mut any = false;
                for (v, vec) in vs.iter().enumerate() {
                    let id = (vec.od * g.stride[0] + kd * g.dil[0]) as isize - g.pad[0] as isize;
                    let ih = (vec.oh * g.stride[1] + kh * g.dil[1]) as isize - g.pad[1] as isize;
                    if id < 0 || id >= di || ih < 0 || ih >= hi {
                        continue;
                    }
                    // Input column of lane l: ow + l + kw·d − p (W stride 1); the lanes with
                    // 0 ≤ iw < Wi are first..end.
                    let iw0 = (vec.ow + kw * g.dil[2]) as isize - g.pad[2] as isize;
                    let first = (-iw0).clamp(0, vec.lanes as isize) as u32;
                    let end = (wi - iw0).clamp(0, vec.lanes as isize) as u32;
                    let below = |n: u32| ((1u32 << n) - 1) as u16;
                    let mask = if end > first { below(end) & !below(first) } else { 0 };
                    if mask != 0 {
                        tap.off[v] = (id * hi + ih) * wi + iw0;
                        tap.mask[v] = mask;
                        any = true;
                    }
                }
                if any {
                    out.push(tap);
                }
            }
        }
    }
}

/// `w` `[Co, Ci, K]` → panels `[⌈Co/MR⌉][Ci][K][MR]` (zero rows past `Co`).
fn pack_weights(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (ci, co, kvol) = (g.ci, g.co, g.k.iter().product::<usize>());
    let blocks = co.div_ceil(MR);
    let mut p = vec![0f32; blocks * ci * kvol * MR];
    for o in 0..co {
        let (b, m) = (o / MR, o % MR);
        for c in 0..ci {
            for t in 0..kvol {
                p[((b * ci + c) * kvol + t) * MR + m] = w[(o * ci + c) * kvol + t];
            }
        }
    }
    p
}

/// `y = W ⋆ x`: `x` `[N, Ci, img]`, `w` `[Co, Ci, K]` → `y` `[N, Co, out]`, or `None` where
/// [`applies`] does not hold.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Option<Vec<f32>> {
    if !applies(g) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        Some(forward_avx512(g, x, w))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w);
        None
    }
}

#[cfg(target_arch = "x86_64")]
fn forward_avx512(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (img_len, out_len) = (g.img.iter().product::<usize>(), g.out.iter().product::<usize>());
    let kvol = g.k.iter().product::<usize>();
    let packed = pack_weights(g, w);
    // The reduction (length `k = Ci·K`) runs in chunks of `kc`, each summed in registers from
    // zero and then added to the output, exactly like `gemm`'s k-blocking on the im2col path.
    let k = g.ci * kvol;
    let kc = k.div_ceil(k.div_ceil(KC_TARGET));
    tile_blocks(g, |taps, b, vs, blk, y| {
        let xb = &x[b * g.ci * img_len..(b + 1) * g.ci * img_len];
        let rows = MR.min(g.co - blk * MR);
        let panel = &packed[blk * g.ci * kvol * MR..(blk + 1) * g.ci * kvol * MR];
        for (i, k0) in (0..k).step_by(kc).enumerate() {
            // SAFETY: AVX-512F is present (`applies`); every unmasked load lies inside `xb`
            // (tap_table masks the lanes outside the image rows); the stores write rows
            // co0..co0+rows of batch b at this tile's positions, which no other task writes.
            unsafe {
                avx512::kernel(
                    xb.as_ptr(),
                    img_len,
                    k0..(k0 + kc).min(k),
                    i == 0,
                    kvol,
                    taps,
                    panel.as_ptr(),
                    y.ptr(),
                    out_len,
                    vs,
                    rows,
                );
            }
        }
    })
}

/// The tile loop of both direct kernels: one rayon task per (batch item, tile), its tap table,
/// then `block(taps, b, vectors, blk, y)` for each block `blk` of [`MR`] output channels, `y`
/// pointing at row `blk·MR` of item `b` of the output. Every block must store all its rows'
/// elements at the tile's positions (the kernels do, in their first reduction chunk): the output
/// is not zero-filled first (at 96³ with 48 channels that was a 170 MB memset per call).
#[cfg(target_arch = "x86_64")]
fn tile_blocks(
    g: &ConvGeom,
    block: impl Fn(&[Tap], usize, &[Vector], usize, SyncPtr) + Sync + Send,
) -> Vec<f32> {
    let out_len = g.out.iter().product::<usize>();
    let tiles = tiles(g);
    let nt = tiles.len();
    let len = g.n * g.co * out_len;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.n * nt).into_par_iter().for_each_init(Vec::new, |taps: &mut Vec<Tap>, task| {
        let (b, (vs, nv)) = (task / nt, &tiles[task % nt]);
        tap_table(g, &vs[..*nv], taps);
        for blk in 0..g.co.div_ceil(MR) {
            // SAFETY: row blk·MR of item b lies inside y (blk·MR < Co).
            let y_blk = SyncPtr(unsafe { yp.ptr().add((b * g.co + blk * MR) * out_len) });
            block(taps, b, &vs[..*nv], blk, y_blk);
        }
    });
    // SAFETY: the tiles cover every output position and the channel blocks every channel, and
    // each block stores its rows there (the contract above): all `len` elements are initialised.
    unsafe { y.set_len(len) };
    y
}

/// Images `[N][C][len]` (f32) → channel pairs `[N][⌈C/2⌉][len]`, each element one 32-bit word
/// holding channel `2j` (low half) and `2j + 1` (high half, 0 past `C`) in bf16: the operand
/// layout of `vdpbf16ps`, which sums the products of the two halves into one f32 lane.
#[cfg(target_arch = "x86_64")]
fn pair_channels(x: &[f32], n: usize, c: usize, len: usize) -> Vec<u32> {
    let c2 = c.div_ceil(2);
    let mut out = vec![0u32; n * c2 * len];
    out.par_chunks_mut(len.max(1)).enumerate().for_each(|(i, o)| {
        let (b, j) = (i / c2, i % c2);
        let lo = &x[(b * c + 2 * j) * len..(b * c + 2 * j + 1) * len];
        let hi = (2 * j + 1 < c).then(|| &x[(b * c + 2 * j + 1) * len..(b * c + 2 * j + 2) * len]);
        pair_into_words(o, lo, hi)
    });
    out
}

/// `w` `[Co, Ci, K]` → bf16 pair panels `[⌈Co/MR⌉][⌈Ci/2⌉][K][MR]` (zeros past `Co` and `Ci`).
fn pack_weights_bf16(g: &ConvGeom, w: &[f32]) -> Vec<u32> {
    let (ci, co, kvol) = (g.ci, g.co, g.k.iter().product::<usize>());
    let ci2 = ci.div_ceil(2);
    let mut p = vec![0u32; co.div_ceil(MR) * ci2 * kvol * MR];
    for o in 0..co {
        let (b, m) = (o / MR, o % MR);
        for c in 0..ci {
            for t in 0..kvol {
                let at = ((b * ci2 + c / 2) * kvol + t) * MR + m;
                p[at] |= bf16_bits(w[(o * ci + c) * kvol + t]) << (16 * (c % 2));
            }
        }
    }
    p
}

/// [`forward`] with bf16 operands and f32 accumulation (AVX-512 BF16 `vdpbf16ps`), or `None`
/// where [`applies`] does not hold or the CPU lacks AVX-512 BF16.
pub(crate) fn forward_bf16(g: &ConvGeom, x: &[f32], w: &[f32]) -> Option<Vec<f32>> {
    if !applies(g) || !crate::precision::bf16_dot_available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        Some(forward_avx512_bf16(g, x, w))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w);
        None
    }
}

#[cfg(target_arch = "x86_64")]
fn forward_avx512_bf16(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (img_len, out_len) = (g.img.iter().product::<usize>(), g.out.iter().product::<usize>());
    let kvol = g.k.iter().product::<usize>();
    let ci2 = g.ci.div_ceil(2);
    let packed = pack_weights_bf16(g, w);
    let xp = pair_channels(x, g.n, g.ci, img_len);
    tile_blocks(g, |taps, b, vs, blk, y| {
        let xb = &xp[b * ci2 * img_len..(b + 1) * ci2 * img_len];
        let panel = &packed[blk * ci2 * kvol * MR..(blk + 1) * ci2 * kvol * MR];
        // SAFETY: AVX-512F and AVX-512 BF16 are present (`forward_bf16`); loads and stores as in
        // `forward_avx512`, on the paired image (one word per position and pair).
        unsafe {
            avx512::kernel_bf16(
                xb.as_ptr(),
                img_len,
                ci2,
                kvol,
                taps,
                panel.as_ptr(),
                y.ptr(),
                out_len,
                vs,
                MR.min(g.co - blk * MR),
            );
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NV, Tap, Vector};

    /// `acc += W[·, c, t] · x_c[tap]` over the listed taps of one input channel `c`.
    ///
    /// # Safety
    /// As [`kernel`], for the channel's image `xc` and weight panel `wc` (`MR` per tap).
    #[inline(always)]
    // Indexed loops over the constant-size register blocks: LLVM unrolls them into named zmm
    // registers (checked in the disassembly).
    #[allow(clippy::needless_range_loop)]
    unsafe fn channel(
        mut acc: [[__m512; NV]; MR],
        xc: *const f32,
        wc: *const f32,
        taps: &[Tap],
    ) -> [[__m512; NV]; MR] {
        // SAFETY: the caller's contract.
        unsafe {
            for tap in taps {
                let mut xv = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    // Masked-off lanes are not read, so an offset outside the image is harmless.
                    xv[v] = _mm512_maskz_loadu_ps(tap.mask[v], xc.wrapping_offset(tap.off[v]));
                }
                let wt = wc.add(tap.t * MR);
                for m in 0..MR {
                    let b = _mm512_set1_ps(*wt.add(m));
                    for v in 0..NV {
                        acc[m][v] = _mm512_fmadd_ps(b, xv[v], acc[m][v]);
                    }
                }
            }
        }
        acc
    }

    /// Accumulates `MR` output channels × the tile's vectors over the reduction indices
    /// `k_range` (index `c·K + t`: input channel `c`, tap `t`; only listed taps), then stores
    /// them (`first`) or adds them to `y`, masked to the valid lanes and the first `rows`
    /// channels.
    ///
    /// # Safety
    /// AVX-512F must be present. `x` points at the images of `img_len` elements of every channel
    /// that `k_range` reaches and every
    /// (offset, mask) of `taps` selects lanes inside one image; `panel` holds `MR` weights per
    /// reduction index; `y` has `rows` rows of `out_len` elements reaching every vector's positions.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        x: *const f32,
        img_len: usize,
        k_range: std::ops::Range<usize>,
        first: bool,
        kvol: usize,
        taps: &[Tap],
        panel: *const f32,
        y: *mut f32,
        out_len: usize,
        vs: &[Vector],
        rows: usize,
    ) {
        // SAFETY: the caller's contract (see above) covers every pointer and the CPU feature.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            for c in k_range.start / kvol..k_range.end.div_ceil(kvol) {
                // The taps of channel c inside the chunk: a contiguous run, as `taps` is sorted
                // by tap index (only the chunk's first and last channel are cut).
                let t_lo = k_range.start.saturating_sub(c * kvol);
                let t_hi = (k_range.end - c * kvol).min(kvol);
                let lo = taps.partition_point(|tap| tap.t < t_lo);
                let hi = taps.partition_point(|tap| tap.t < t_hi);
                acc = channel(acc, x.add(c * img_len), panel.add(c * kvol * MR), &taps[lo..hi]);
            }
            for (m, row) in acc.iter().enumerate().take(rows) {
                for (v, vec) in vs.iter().enumerate() {
                    let mask = ((1u32 << vec.lanes) - 1) as u16;
                    let dst = y.add(m * out_len + vec.out);
                    let sum = if first {
                        row[v]
                    } else {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), row[v])
                    };
                    _mm512_mask_storeu_ps(dst, mask, sum);
                }
            }
        }
    }

    /// [`kernel`] on bf16 channel pairs: `acc += W[·, 2j..2j+2, t] · x_pair_j[tap]` by
    /// `vdpbf16ps` over every pair `j < ci2` and listed tap, then stores `acc` (f32).
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16 must be present; `x` holds `ci2` paired images of `img_len`
    /// words, `panel` `ci2·kvol·MR` words; otherwise as [`kernel`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_bf16(
        x: *const u32,
        img_len: usize,
        ci2: usize,
        kvol: usize,
        taps: &[Tap],
        panel: *const u32,
        y: *mut f32,
        out_len: usize,
        vs: &[Vector],
        rows: usize,
    ) {
        // SAFETY: the caller's contract covers every pointer and the CPU features.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            for c in 0..ci2 {
                acc = pair_channel(acc, x.add(c * img_len), panel.add(c * kvol * MR), taps);
            }
            for (m, row) in acc.iter().enumerate().take(rows) {
                for (v, vec) in vs.iter().enumerate() {
                    let mask = ((1u32 << vec.lanes) - 1) as u16;
                    _mm512_mask_storeu_ps(y.add(m * out_len + vec.out), mask, row[v]);
                }
            }
        }
    }

    /// One channel pair of [`kernel_bf16`].
    ///
    /// # Safety
    /// As [`kernel_bf16`], for the pair's image `xc` and panel `wc` (`MR` words per tap).
    #[inline(always)]
    // As in `channel`: indexed loops over the register blocks.
    #[allow(clippy::needless_range_loop)]
    unsafe fn pair_channel(
        mut acc: [[__m512; NV]; MR],
        xc: *const u32,
        wc: *const u32,
        taps: &[Tap],
    ) -> [[__m512; NV]; MR] {
        // SAFETY: the caller's contract; `__m512i` and `__m512bh` are both 512-bit vectors.
        unsafe {
            for tap in taps {
                let mut xv =
                    [_mm512_setzero_ps(); NV].map(|z| std::mem::transmute::<__m512, __m512bh>(z));
                for v in 0..NV {
                    let p = xc.wrapping_offset(tap.off[v]) as *const i32;
                    xv[v] = std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi32(
                        tap.mask[v],
                        p,
                    ));
                }
                let wt = wc.add(tap.t * MR);
                for m in 0..MR {
                    let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        *wt.add(m) as i32
                    ));
                    for v in 0..NV {
                        acc[m][v] = _mm512_dpbf16_ps(acc[m][v], b, xv[v]);
                    }
                }
            }
        }
        acc
    }
}
