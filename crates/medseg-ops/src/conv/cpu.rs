//! CPU kernels of 3-D convolution: tiled im2col + GEMM, shared by `conv3d` and `conv_transpose3d`,
//! their candle custom ops (`Conv3dOp`, `ConvTranspose3dOp`, the backward `Product`s), and whole-volume
//! `im2col` / `col2im` (the CPU side of the `Im2col` / `Col2im` ops of `im2col.rs`).
//!
//! Geometry is always stated in *convolution* terms: the "image" side `x` `[N, Ci, Di, Hi, Wi]`,
//! the "column" side `y` `[N, Co, Do, Ho, Wo]` and the weight `[Co, Ci/groups, Kd, Kh, Kw]`.
//! Three products cover every case:
//! - [`forward`]: `y = W ⋆ x` (conv3d forward; data gradient of conv_transpose3d),
//! - [`backward_data`]: `x = Wᵀ ⋆ y`, i.e. GEMM then col2im (data gradient of conv3d; forward of
//!   conv_transpose3d, whose weight `[Ci_t, Co_t/groups, K]` is exactly a conv weight read this way),
//! - [`backward_weight`]: `dW = y ⋆ x` (weight gradient of both).
//!
//! The column matrix is never materialised whole (at 96³ with 48 channels it would be 4.6 GB):
//! work is cut into tiles of whole output rows, each tile is unfolded into a per-thread buffer that
//! is reused, and multiplied with `gemm` single-threaded while rayon spreads tiles over cores.
use candle::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use medseg_kernels::Im2colGeom;

use crate::precision::Precision;
use crate::storage::{SyncPtr, f32_slice};

/// Target number of output positions per tile for the forward and data products (columns of one
/// GEMM): small enough that the unfolded tile of a 48-channel k3 conv (1296 rows) stays in L2.
/// Measured at 96³ on a loaded machine (`bench_ops --filter conv3d`, separate runs):
/// 256 → 40 GFLOP/s, 1024 → 28, 4096 → 13.
const TILE_POSITIONS: usize = 256;
/// The weight product reduces over positions (the GEMM's k), which wants longer tiles.
const WEIGHT_TILE_POSITIONS: usize = 1024;

/// Shapes and hyper-parameters of one 3-D convolution, in convolution terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub groups: usize,
    /// Spatial size of the image side (conv input, or conv_transpose output).
    pub img: [usize; 3],
    /// Spatial size of the column side (conv output, or conv_transpose input).
    pub out: [usize; 3],
    pub k: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub dil: [usize; 3],
}

/// One tile: output plane `od`, output rows `oh0..oh1`, all of `Wo`.
#[derive(Debug, Clone, Copy)]
struct Tile {
    od: usize,
    oh0: usize,
    oh1: usize,
}

impl ConvGeom {
    fn ci_g(&self) -> usize {
        self.ci / self.groups
    }
    fn co_g(&self) -> usize {
        self.co / self.groups
    }
    fn kvol(&self) -> usize {
        self.k.iter().product()
    }
    fn img_len(&self) -> usize {
        self.img.iter().product()
    }
    fn out_len(&self) -> usize {
        self.out.iter().product()
    }
    /// Rows of the unfolded matrix of one group: `Ci/groups · Kd·Kh·Kw`.
    fn rows(&self) -> usize {
        self.ci_g() * self.kvol()
    }
    pub(crate) fn weight_len(&self) -> usize {
        self.co * self.rows()
    }
    pub(crate) fn image_numel(&self) -> usize {
        self.n * self.ci * self.img_len()
    }
    pub(crate) fn column_numel(&self) -> usize {
        self.n * self.co * self.out_len()
    }

    fn tiles_of_plane(&self, od: usize, target: usize, out: &mut Vec<Tile>) {
        let [_, ho, wo] = self.out;
        let rows = (target / wo.max(1)).clamp(1, ho.max(1));
        let mut oh0 = 0;
        while oh0 < ho {
            let oh1 = (oh0 + rows).min(ho);
            out.push(Tile { od, oh0, oh1 });
            oh0 = oh1;
        }
    }

    fn tiles(&self, target: usize) -> Vec<Tile> {
        let mut tiles = Vec::new();
        for od in 0..self.out[0] {
            self.tiles_of_plane(od, target, &mut tiles);
        }
        tiles
    }

    fn tile_len(&self, t: &Tile) -> usize {
        (t.oh1 - t.oh0) * self.out[2]
    }

    fn tile_start(&self, t: &Tile) -> usize {
        (t.od * self.out[1] + t.oh0) * self.out[2]
    }

    /// Output columns `[lo, hi)` along W whose input column `ow·s + off` lies inside the image.
    fn valid_w(&self, off: isize) -> (usize, usize) {
        let (s, wi, wo) = (self.stride[2] as isize, self.img[2] as isize, self.out[2] as isize);
        let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
        let hi = if wi - 1 - off < 0 { 0 } else { ((wi - 1 - off) / s + 1).min(wo) };
        (lo.min(wo) as usize, hi.max(lo.min(wo)) as usize)
    }

    /// Visits every (row `r`, segment of output row, input row) of a tile's unfolded matrix for
    /// the channels `c0..c0 + cb` of the image `x` (already offset to channel `c0`).
    /// `f(r, j, input_row_start, lo, hi, off)` is called for in-image rows; `zero(r, j)` for rows
    /// that fall into the padding entirely.
    #[inline]
    fn visit_tile(
        &self,
        cb: usize,
        t: &Tile,
        mut f: impl FnMut(usize, usize, usize, usize, usize, isize),
        mut zero: impl FnMut(usize, usize),
    ) {
        let [di, hi, wi] = self.img.map(|v| v as isize);
        let [k0, k1, k2] = self.k;
        let img_len = self.img_len();
        for c in 0..cb {
            for kd in 0..k0 {
                let id = (t.od * self.stride[0] + kd * self.dil[0]) as isize - self.pad[0] as isize;
                for kh in 0..k1 {
                    for kw in 0..k2 {
                        let r = ((c * k0 + kd) * k1 + kh) * k2 + kw;
                        let off = (kw * self.dil[2]) as isize - self.pad[2] as isize;
                        let (lo, hi_w) = self.valid_w(off);
                        for (j, oh) in (t.oh0..t.oh1).enumerate() {
                            let ih = (oh * self.stride[1] + kh * self.dil[1]) as isize
                                - self.pad[1] as isize;
                            if id < 0 || id >= di || ih < 0 || ih >= hi || lo >= hi_w {
                                zero(r, j);
                            } else {
                                let start = c * img_len + ((id * hi + ih) * wi) as usize;
                                f(r, j, start, lo, hi_w, off);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Unfolds channels `0..cb` of `x` for tile `t` into `buf` (`[cb·K, T]`, row-major).
    fn im2col(&self, x: &[f32], cb: usize, t: &Tile, buf: &mut [f32]) {
        self.im2col_strided(x, cb, t, buf, self.tile_len(t), 0)
    }

    /// [`Self::im2col`] into rows of `row_len` elements, the tile's columns starting at `col0`
    /// (`row_len = T`, `col0 = 0`: a tile buffer; `row_len = Do·Ho·Wo`, `col0` = the tile's start:
    /// the whole-volume column matrix).
    fn im2col_strided(
        &self,
        x: &[f32],
        cb: usize,
        t: &Tile,
        buf: &mut [f32],
        row_len: usize,
        col0: usize,
    ) {
        let wo = self.out[2];
        let s = self.stride[2];
        let (bufp, buf_len) = (SyncPtr(buf.as_mut_ptr()), buf.len());
        // SAFETY (both closures): the segment `r·row_len + col0 + j·Wo .. + Wo` lies inside `buf`,
        // which has `cb·K·row_len` elements (the tile's columns end at or before `row_len`), and
        // the closures never run concurrently.
        let seg = move |r: usize, j: usize| {
            let at = r * row_len + col0 + j * wo;
            debug_assert!(at + wo <= buf_len);
            unsafe { std::slice::from_raw_parts_mut(bufp.ptr().add(at), wo) }
        };
        self.visit_tile(
            cb,
            t,
            |r, j, start, lo, hi, off| {
                let out = seg(r, j);
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                // Input index of output column ow is start + ow·s + off (≥ 0 for ow ≥ lo).
                let first = (start as isize + (lo * s) as isize + off) as usize;
                if s == 1 {
                    out[lo..hi].copy_from_slice(&x[first..first + (hi - lo)]);
                } else {
                    for (i, o) in out[lo..hi].iter_mut().enumerate() {
                        *o = x[first + i * s];
                    }
                }
            },
            |r, j| seg(r, j).fill(0.0),
        );
    }

    /// Adds the unfolded tile `buf` (`[cb·K, T]`) back into channels `0..cb` of `x` (col2im).
    fn col2im(&self, buf: &[f32], cb: usize, t: &Tile, x: &mut [f32]) {
        self.col2im_strided(buf, cb, t, x, self.tile_len(t), 0)
    }

    /// [`Self::col2im`] from rows of `row_len` elements, the tile's columns starting at `col0`.
    fn col2im_strided(
        &self,
        buf: &[f32],
        cb: usize,
        t: &Tile,
        x: &mut [f32],
        row_len: usize,
        col0: usize,
    ) {
        let wo = self.out[2];
        let s = self.stride[2];
        self.visit_tile(
            cb,
            t,
            |r, j, start, lo, hi, off| {
                let at = r * row_len + col0 + j * wo;
                let seg = &buf[at..at + wo];
                let first = (start as isize + (lo * s) as isize + off) as usize;
                if s == 1 {
                    for (o, v) in x[first..first + (hi - lo)].iter_mut().zip(&seg[lo..hi]) {
                        *o += v;
                    }
                } else {
                    for (i, v) in seg[lo..hi].iter().enumerate() {
                        x[first + i * s] += v;
                    }
                }
            },
            |_, _| {},
        );
    }
}

/// `y = W ⋆ x`: `x` `[N, Ci, img]`, `w` `[Co, Ci/g, K]` → `y` `[N, Co, out]`.
///
/// The direct AVX-512 kernel of `direct.rs` where it applies, else tiled im2col + GEMM.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    if let Some(y) = super::direct::forward(g, x, w) {
        return y;
    }
    forward_im2col(g, x, w)
}

/// The tiled forward product shared by the f32 and bf16 paths: one task per (item, group,
/// tile), the tile unfolded into a per-thread buffer (`rows × tl`), then
/// `product(state, group, columns, tl, dst)` writes the `co_g × tl` block of `y` at `dst` (row
/// stride `out_len`), which belongs to that task alone. `state` is per-thread scratch.
fn tiled_forward<S>(
    g: &ConvGeom,
    x: &[f32],
    state: impl Fn() -> S + Sync + Send,
    product: impl Fn(&mut S, usize, &[f32], usize, SyncPtr) + Sync + Send,
) -> Vec<f32> {
    let (ci_g, co_g, rows) = (g.ci_g(), g.co_g(), g.rows());
    let (img_len, out_len) = (g.img_len(), g.out_len());
    let tiles = g.tiles(TILE_POSITIONS);
    let nt = tiles.len();
    let mut y = vec![0f32; g.column_numel()];
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.n * g.groups * nt).into_par_iter().for_each_init(
        || (Vec::new(), state()),
        |(buf, st): &mut (Vec<f32>, S), task| {
            let tile = &tiles[task % nt];
            let (b, gi) = ((task / nt) / g.groups, (task / nt) % g.groups);
            let tl = g.tile_len(tile);
            buf.resize(rows * tl, 0.0);
            g.im2col(&x[(b * g.ci + gi * ci_g) * img_len..], ci_g, tile, buf);
            let dst_off = (b * g.co + gi * co_g) * out_len + g.tile_start(tile);
            // SAFETY: the block from dst_off (co_g rows of out_len) lies inside y.
            product(st, gi, buf, tl, SyncPtr(unsafe { yp.ptr().add(dst_off) }));
        },
    );
    y
}

/// [`forward`] through tiled im2col + GEMM (every geometry).
pub(crate) fn forward_im2col(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (co_g, rows, out_len) = (g.co_g(), g.rows(), g.out_len());
    tiled_forward(
        g,
        x,
        || (),
        |_, gi, cols, tl, dst| {
            // SAFETY: the destination block (co_g rows × tl columns, row stride out_len) belongs
            // to this task alone; lhs/rhs extents match their strides.
            unsafe {
                gemm(
                    co_g,
                    tl,
                    rows,
                    dst.ptr(),
                    1,
                    out_len as isize,
                    false,
                    w.as_ptr().add(gi * co_g * rows),
                    1,
                    rows as isize,
                    cols.as_ptr(),
                    1,
                    tl as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            }
        },
    )
}

/// [`forward_im2col`] with bf16 operands, for `Precision::Bf16` where the direct kernel does not
/// apply (the small deep levels): each tile's unfolded columns and the weight are rounded to bf16
/// and multiplied by the `linear` op's `vdpbf16ps` kernel (f32 sums). `None` without AVX-512 BF16.
pub(crate) fn forward_im2col_bf16(g: &ConvGeom, x: &[f32], w: &[f32]) -> Option<Vec<f32>> {
    if !crate::precision::bf16_dot_available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::linear::cpu::{pair_panel, pair_rows, product_block};
        let (co_g, rows, out_len) = (g.co_g(), g.rows(), g.out_len());
        let weights: Vec<Vec<u32>> = (0..g.groups)
            .map(|gi| pair_rows(&w[gi * co_g * rows..(gi + 1) * co_g * rows], co_g, rows))
            .collect();
        Some(tiled_forward(g, x, Vec::new, |panel: &mut Vec<u32>, gi, cols, tl, dst| {
            let np = pair_panel(cols, rows, tl, panel);
            // SAFETY: AVX-512 BF16 is present (checked above); the weight pairs hold co_g rows
            // of ⌈rows/2⌉ words, the panel ⌈rows/2⌉ rows of np words; the destination block
            // (co_g rows × tl columns, row stride out_len) belongs to this task alone.
            unsafe {
                product_block(
                    &weights[gi],
                    rows.div_ceil(2),
                    co_g,
                    panel,
                    np,
                    tl,
                    dst.ptr(),
                    out_len,
                )
            }
        }))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, x, w);
        None
    }
}

/// `dW = dy ⋆ x`: `x` `[N, Ci, img]`, `dy` `[N, Co, out]` → `dW` `[Co, Ci/g, K]`; the direct
/// AVX-512 kernel where it applies, else tiled im2col + GEMM.
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    super::direct_weight::backward_weight(g, x, dy)
        .unwrap_or_else(|| backward_weight_im2col(g, x, dy))
}

/// [`backward_weight`] by tiled im2col + GEMM (every geometry).
pub(crate) fn backward_weight_im2col(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (ci_g, co_g, rows) = (g.ci_g(), g.co_g(), g.rows());
    let (img_len, out_len) = (g.img_len(), g.out_len());
    let tiles = g.tiles(WEIGHT_TILE_POSITIONS);
    let nt = tiles.len();
    let tasks = g.n * g.groups * nt;
    let wlen = g.weight_len();
    // One accumulator per worker, not per task: the weight of a 768→768 k3 conv is 64 MB.
    let min_len = tasks.div_ceil(rayon::current_num_threads().max(1));
    (0..tasks)
        .into_par_iter()
        .with_min_len(min_len.max(1))
        .fold(
            || (vec![0f32; wlen], Vec::<f32>::new()),
            |(mut acc, mut buf), task| {
                let tile = &tiles[task % nt];
                let (b, gi) = ((task / nt) / g.groups, (task / nt) % g.groups);
                let tl = g.tile_len(tile);
                buf.resize(rows * tl, 0.0);
                g.im2col(&x[(b * g.ci + gi * ci_g) * img_len..], ci_g, tile, &mut buf);
                let dy_off = (b * g.co + gi * co_g) * out_len + g.tile_start(tile);
                // SAFETY: acc block [co_g × rows] of group gi is in bounds; dy block is
                // co_g rows × tl columns with row stride out_len; buf is rows × tl.
                unsafe {
                    gemm(
                        co_g,
                        rows,
                        tl,
                        acc.as_mut_ptr().add(gi * co_g * rows),
                        1,
                        rows as isize,
                        true,
                        dy.as_ptr().add(dy_off),
                        1,
                        out_len as isize,
                        buf.as_ptr(),
                        tl as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
                }
                (acc, buf)
            },
        )
        .map(|(acc, _)| acc)
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0f32; wlen])
}

/// `dx = Wᵀ ⋆ dy` (GEMM + col2im): `dy` `[N, Co, out]`, `w` `[Co, Ci/g, K]` → `dx` `[N, Ci, img]`.
///
/// Tasks own disjoint parts of `dx`: slabs of output planes far enough apart that their input
/// footprints cannot overlap (even slabs first, then odd ones), times input-channel blocks.
pub(crate) fn backward_data(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (ci_g, co_g, rows, kvol) = (g.ci_g(), g.co_g(), g.rows(), g.kvol());
    let (img_len, out_len) = (g.img_len(), g.out_len());
    let mut dx = vec![0f32; g.image_numel()];
    // Slabs of `sh` output planes; slabs two apart write disjoint input planes when
    // (sh + 1)·s > (k − 1)·d.
    let sh = ((g.k[0] - 1) * g.dil[0] / g.stride[0]).max(1);
    let n_slabs = g.out[0].div_ceil(sh);
    let per_phase = n_slabs.div_ceil(2);
    let want = 2 * rayon::current_num_threads().max(1);
    let outer = g.n * g.groups * per_phase;
    let n_cblk = if outer >= want { 1 } else { want.div_ceil(outer).min(ci_g) };
    let cblk = ci_g.div_ceil(n_cblk);
    let n_cblk = ci_g.div_ceil(cblk);
    let dxp = SyncPtr(dx.as_mut_ptr());
    for phase in 0..2 {
        let slabs: Vec<usize> = (phase..n_slabs).step_by(2).collect();
        let ns = slabs.len();
        (0..g.n * g.groups * n_cblk * ns).into_par_iter().for_each_init(
            || (Vec::<f32>::new(), Vec::<Tile>::new()),
            |(buf, tiles), task| {
                let slab = slabs[task % ns];
                let rest = task / ns;
                let cbi = rest % n_cblk;
                let (b, gi) = ((rest / n_cblk) / g.groups, (rest / n_cblk) % g.groups);
                let c0 = cbi * cblk;
                let cb = cblk.min(ci_g - c0);
                let m = cb * kvol;
                tiles.clear();
                for od in slab * sh..((slab + 1) * sh).min(g.out[0]) {
                    g.tiles_of_plane(od, TILE_POSITIONS, tiles);
                }
                let x_off = (b * g.ci + gi * ci_g + c0) * img_len;
                // SAFETY: this task is the only writer of channels c0..c0+cb of (b, gi) within
                // the input planes reached from its slab (see the slab spacing above).
                let dx_c =
                    unsafe { std::slice::from_raw_parts_mut(dxp.ptr().add(x_off), cb * img_len) };
                for tile in tiles.iter() {
                    let tl = g.tile_len(tile);
                    buf.resize(m * tl, 0.0);
                    let dy_off = (b * g.co + gi * co_g) * out_len + g.tile_start(tile);
                    // SAFETY: buf is m × tl; lhs reads w rows (gi·co_g + co) columns c0·K + r,
                    // in bounds for r < m; rhs reads co_g rows × tl columns of dy.
                    unsafe {
                        gemm(
                            m,
                            tl,
                            co_g,
                            buf.as_mut_ptr(),
                            1,
                            tl as isize,
                            false,
                            w.as_ptr().add(gi * co_g * rows + c0 * kvol),
                            rows as isize,
                            1,
                            dy.as_ptr().add(dy_off),
                            1,
                            out_len as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        )
                    }
                    g.col2im(buf, cb, tile, dx_c);
                }
            },
        );
    }
    dx
}

/// The single-channel convolution geometry of an im2col call (`volumes` images of one channel).
fn volume_geom(g: &Im2colGeom) -> ConvGeom {
    ConvGeom {
        n: g.volumes,
        ci: 1,
        co: 1,
        groups: 1,
        img: g.input,
        out: g.output,
        k: g.kernel,
        stride: g.stride,
        pad: g.padding,
        dil: g.dilation,
    }
}

/// Whole-volume im2col, the contract of `kernels/im2col.cu`: `x` `[volumes, D, H, W]` →
/// `cols` `[volumes, Kd·Kh·Kw, Do·Ho·Wo]` (0 where a tap falls into the padding).
pub(crate) fn im2col(g: &Im2colGeom, x: &[f32]) -> Vec<f32> {
    let cg = volume_geom(g);
    let (img_len, rows, positions) = (cg.img_len(), cg.rows(), cg.out_len());
    let tiles = cg.tiles(usize::MAX);
    let mut cols = vec![0f32; g.cols_len()];
    cols.par_chunks_mut((rows * positions).max(1)).enumerate().for_each(|(v, cv)| {
        for t in &tiles {
            cg.im2col_strided(&x[v * img_len..], 1, t, cv, positions, cg.tile_start(t));
        }
    });
    cols
}

/// The adjoint of [`im2col`] (col2im): `x[i] = Σ cols[j]` over every entry `j` that reads `x[i]`.
pub(crate) fn col2im(g: &Im2colGeom, cols: &[f32]) -> Vec<f32> {
    let cg = volume_geom(g);
    let (img_len, rows, positions) = (cg.img_len(), cg.rows(), cg.out_len());
    let tiles = cg.tiles(usize::MAX);
    let mut x = vec![0f32; g.x_len()];
    x.par_chunks_mut(img_len.max(1)).enumerate().for_each(|(v, xv)| {
        let cv = &cols[v * rows * positions..(v + 1) * rows * positions];
        for t in &tiles {
            cg.col2im_strided(cv, 1, t, xv, positions, cg.tile_start(t));
        }
    });
    x
}

/// For a stride-1, single-group convolution, the geometry of the forward convolution that
/// computes its data gradient: input `dy`, weight `flip(Wᵀ)`, padding `d·(k − 1) − p`.
fn data_grad_as_forward(g: &ConvGeom) -> Option<ConvGeom> {
    if g.groups != 1 || g.stride != [1; 3] {
        return None;
    }
    let [p0, p1, p2] = [0, 1, 2].map(|a| (g.dil[a] * (g.k[a] - 1)).checked_sub(g.pad[a]));
    let pad = [p0?, p1?, p2?];
    Some(ConvGeom { ci: g.co, co: g.ci, img: g.out, out: g.img, pad, ..*g })
}

/// `[Co, Ci, kd, kh, kw]` → `[Ci, Co, kd, kh, kw]` reversed along the three kernel axes.
fn flip_transpose(w: &Tensor) -> Result<Tensor> {
    let (co, ci, k0, k1, k2) = w.dims5()?;
    let v = w.flatten_all()?.to_vec1::<f32>()?;
    let kv = k0 * k1 * k2;
    let mut out = vec![0f32; v.len()];
    for o in 0..co {
        for i in 0..ci {
            let src = &v[(o * ci + i) * kv..(o * ci + i + 1) * kv];
            let dst = &mut out[(i * co + o) * kv..(i * co + o + 1) * kv];
            for (j, d) in dst.iter_mut().enumerate() {
                *d = src[kv - 1 - j];
            }
        }
    }
    Tensor::from_vec(out, (ci, co, k0, k1, k2), w.device())
}

/// conv3d as a custom op on (x, w), with the operand precision of its forward product.
pub(crate) struct Conv3dOp(pub(crate) ConvGeom, pub(crate) Precision);

impl CustomOp2 for Conv3dOp {
    fn name(&self) -> &'static str {
        "conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (x, w) = (f32_slice("conv3d", s1, l1)?, f32_slice("conv3d", s2, l2)?);
        let bf16 = match self.1 {
            Precision::Bf16 => {
                super::direct::forward_bf16(g, x, w).or_else(|| forward_im2col_bf16(g, x, w))
            }
            Precision::F32 => None,
        };
        let y = bf16.unwrap_or_else(|| forward(g, x, w));
        let [d, h, w] = g.out;
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.co, d, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = match (x.track_op(), data_grad_as_forward(&self.0)) {
            (false, _) => None,
            // Stride 1: dx is a forward convolution of dy with the flipped, transposed weight,
            // which runs at the forward product's speed (the col2im product has GEMM k = Co only).
            (true, Some(g)) => {
                Some(dy.apply_op2_no_bwd(&flip_transpose(w)?, &Product::Forward(g))?)
            }
            (true, None) => Some(dy.apply_op2_no_bwd(w, &Product::Data(self.0))?),
        };
        let dw = x.apply_op2_no_bwd(&dy, &Product::Weight(self.0))?;
        Ok((dx, Some(dw)))
    }
}

/// conv_transpose3d as a custom op on (x, w); its geometry is that of the adjoint convolution.
pub(crate) struct ConvTranspose3dOp(pub(crate) ConvGeom);

impl CustomOp2 for ConvTranspose3dOp {
    fn name(&self) -> &'static str {
        "conv_transpose3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let name = "conv_transpose3d";
        let y = backward_data(g, f32_slice(name, s1, l1)?, f32_slice(name, s2, l2)?);
        let [d, h, w] = g.img;
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.ci, d, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &Product::Forward(self.0))?)
        } else {
            None
        };
        let dw = dy.apply_op2_no_bwd(x, &Product::Weight(self.0))?;
        Ok((dx, Some(dw)))
    }
}

/// The three raw products of this file, as graph-cutting ops used inside backward passes.
enum Product {
    /// (x, w) → y
    Forward(ConvGeom),
    /// (dy, w) → dx
    Data(ConvGeom),
    /// (x, dy) → dw
    Weight(ConvGeom),
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        match self {
            Product::Forward(_) => "conv3d_forward_product",
            Product::Data(_) => "conv3d_data_product",
            Product::Weight(_) => "conv3d_weight_product",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(self.name(), s1, l1)?, f32_slice(self.name(), s2, l2)?);
        let (out, shape) = match self {
            Product::Forward(g) => {
                let [d, h, w] = g.out;
                (forward(g, a, b), Shape::from((g.n, g.co, d, h, w)))
            }
            Product::Data(g) => {
                let [d, h, w] = g.img;
                (backward_data(g, a, b), Shape::from((g.n, g.ci, d, h, w)))
            }
            Product::Weight(g) => {
                let [k0, k1, k2] = g.k;
                let shape = Shape::from((g.co, g.ci / g.groups, k0, k1, k2));
                (backward_weight(g, a, b), shape)
            }
        };
        Ok((CpuStorage::F32(out), shape))
    }
}
