//! Pure geometric functions on [`Volume`]s (the functional tier): orientation, flips, rot90,
//! crop/pad, MONAI `Spacing` geometry, grid resampling, zoom and affine warps.
//!
//! Every function returns a volume whose affine is updated so that world coordinates of the
//! data are preserved (`new_affine = old_affine · M`, where `M` maps new voxel indices to old ones).
use std::path::Path;

use rayon::prelude::*;

use crate::affine::{Affine, Ornt, axcodes_to_ornt, cholesky_upper, mat3_inverse};
use crate::limits::alloc_volume;
use crate::volume::Volume;
use crate::{Error, Result};

/// Interpolation for resampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Interp {
    /// Trilinear (MONAI/PyTorch `bilinear` on 3-D data).
    Linear,
    /// Nearest neighbour, round-half-to-even like `grid_sample(mode="nearest")`.
    Nearest,
}

/// What a sample outside the source grid reads (PyTorch `grid_sample` padding modes,
/// `align_corners=False`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Padding {
    /// Zero outside.
    Zeros,
    /// Clamp to the edge voxel.
    Border,
    /// Mirror about the outer voxel faces.
    Reflection,
}

/// Permutes and flips axes: new axis `t` is old axis `perm[t]`, reversed when `flip[t]`.
pub fn permute_flip<T: Copy>(vol: &Volume<T>, perm: [usize; 3], flip: [bool; 3]) -> Volume<T> {
    let old = vol.shape();
    let new_shape = [old[perm[0]], old[perm[1]], old[perm[2]]];
    // Old linear strides of each new axis, with flips folded into base + negative stride.
    let old_strides = [old[1] * old[2], old[2], 1];
    let mut base: isize = 0;
    let mut stride = [0isize; 3];
    for t in 0..3 {
        let s = old_strides[perm[t]] as isize;
        if flip[t] {
            base += (new_shape[t] as isize - 1) * s;
            stride[t] = -s;
        } else {
            stride[t] = s;
        }
    }
    let src = vol.data();
    let mut data = Vec::with_capacity(src.len());
    for a in 0..new_shape[0] as isize {
        for b in 0..new_shape[1] as isize {
            let row = base + a * stride[0] + b * stride[1];
            for c in 0..new_shape[2] as isize {
                data.push(src[(row + c * stride[2]) as usize]);
            }
        }
    }
    let mut m = [[0.0; 4]; 4];
    m[3][3] = 1.0;
    for t in 0..3 {
        let o = perm[t];
        m[o][t] = if flip[t] { -1.0 } else { 1.0 };
        m[o][3] = if flip[t] { new_shape[t] as f64 - 1.0 } else { 0.0 };
    }
    let affine = vol.affine.matmul(&Affine(m));
    Volume::new(data, new_shape, affine)
        .unwrap_or_else(|| unreachable!("permute keeps the voxel count"))
}

/// The permutation and flips that bring `from` to `to` (nibabel `ornt_transform`).
pub fn ornt_transform(from: &Ornt, to: &Ornt) -> ([usize; 3], [bool; 3]) {
    let mut perm = [0usize; 3];
    let mut flip = [false; 3];
    for (t, &(w, s)) in to.iter().enumerate() {
        let a = from.iter().position(|&(fw, _)| fw == w).unwrap_or(t);
        perm[t] = a;
        flip[t] = from[a].1 != s;
    }
    (perm, flip)
}

/// MONAI `Orientation(axcodes)`: reorients so that the affine's axis codes are `axcodes`.
pub fn orient<T: Copy>(vol: &Volume<T>, axcodes: &str) -> Result<Volume<T>> {
    let to = axcodes_to_ornt(axcodes).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "bad axis codes {axcodes:?}: need one of L/R, P/A, I/S each"
        ))
    })?;
    let (perm, flip) = ornt_transform(&vol.affine.orientation(), &to);
    Ok(permute_flip(vol, perm, flip))
}

/// Flips along `axis` (0, 1 or 2; panics otherwise — callers validate user input).
pub fn flip<T: Copy>(vol: &Volume<T>, axis: usize) -> Volume<T> {
    assert!(axis < 3, "flip axis {axis} out of range");
    let mut f = [false; 3];
    f[axis] = true;
    permute_flip(vol, [0, 1, 2], f)
}

/// `np.rot90(vol, k, axes=(a, b))` with `a != b` both in `0..3` (panics otherwise — callers
/// validate user input).
pub fn rot90<T: Copy>(vol: &Volume<T>, k: u32, axes: (usize, usize)) -> Volume<T> {
    let (a, b) = axes;
    assert!(a < 3 && b < 3 && a != b, "rot90 axes {axes:?} invalid");
    let mut swap = [0usize, 1, 2];
    swap.swap(a, b);
    match k % 4 {
        0 => vol.clone(),
        // np: transpose(flip(m, b)) -> new axis a reads old axis b reversed.
        1 => {
            let mut f = [false; 3];
            f[a] = true;
            permute_flip(vol, swap, f)
        }
        2 => {
            let mut f = [false; 3];
            f[a] = true;
            f[b] = true;
            permute_flip(vol, [0, 1, 2], f)
        }
        // np: flip(transpose(m), b)
        _ => {
            let mut f = [false; 3];
            f[b] = true;
            permute_flip(vol, swap, f)
        }
    }
}

/// Crops the box `[start, start + size)` (may extend outside the volume; outside reads `fill`).
///
/// `size` is checked against the process size limits ([`crate::limits`]) before it is allocated.
pub fn crop<T: Copy>(
    vol: &Volume<T>,
    start: [isize; 3],
    size: [usize; 3],
    fill: T,
) -> Result<Volume<T>> {
    let shape = vol.shape();
    let src = vol.data();
    let mut data = alloc_volume("crop", size, fill)?;
    // In-bounds ranges of the new index per axis.
    let lo: [usize; 3] = std::array::from_fn(|d| (-start[d]).clamp(0, size[d] as isize) as usize);
    let hi: [usize; 3] = std::array::from_fn(|d| {
        (shape[d] as isize - start[d]).clamp(lo[d] as isize, size[d] as isize) as usize
    });
    if lo.iter().zip(&hi).all(|(l, h)| l < h) {
        let n = hi[2] - lo[2];
        for a in lo[0]..hi[0] {
            let oa = (a as isize + start[0]) as usize;
            for b in lo[1]..hi[1] {
                let ob = (b as isize + start[1]) as usize;
                let oc = (lo[2] as isize + start[2]) as usize;
                let s = (oa * shape[1] + ob) * shape[2] + oc;
                let d = (a * size[1] + b) * size[2] + lo[2];
                data[d..d + n].copy_from_slice(&src[s..s + n]);
            }
        }
    }
    let t = [start[0] as f64, start[1] as f64, start[2] as f64];
    let affine = vol.affine.matmul(&Affine::translation(t));
    Volume::new(data, size, affine)
        .ok_or_else(|| Error::InvalidArgument("internal: crop length mismatch".into()))
}

/// MONAI `SpatialPad(spatial_size, method="symmetric")`: pads each axis smaller than `size` with
/// `fill`, `(size - n) / 2` before and the rest after. Larger axes are left alone.
pub fn spatial_pad<T: Copy>(vol: &Volume<T>, size: [usize; 3], fill: T) -> Result<Volume<T>> {
    let shape = vol.shape();
    if (0..3).all(|d| shape[d] >= size[d]) {
        return Ok(vol.clone());
    }
    let new: [usize; 3] = std::array::from_fn(|d| shape[d].max(size[d]));
    let start: [isize; 3] = std::array::from_fn(|d| -(((new[d] - shape[d]) / 2) as isize));
    crop(vol, start, new, fill)
}

/// Centre crop / symmetric pad to `size` (MONAI `ResizeWithPadOrCrop`, constant padding).
pub fn resize_with_pad_or_crop<T: Copy>(
    vol: &Volume<T>,
    size: [usize; 3],
    fill: T,
) -> Result<Volume<T>> {
    let shape = vol.shape();
    let start: [isize; 3] = std::array::from_fn(|d| {
        if shape[d] >= size[d] {
            // CenterSpatialCrop: start = n/2 - size/2.
            (shape[d] / 2) as isize - (size[d] / 2) as isize
        } else {
            -(((size[d] - shape[d]) / 2) as isize)
        }
    });
    crop(vol, start, size, fill)
}

/// Bounding box `[start, end)` of voxels where `select` holds; `None` when there are none.
pub fn bounding_box<T: Copy>(
    vol: &Volume<T>,
    select: impl Fn(T) -> bool,
) -> Option<([usize; 3], [usize; 3])> {
    let s = vol.shape();
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let data = vol.data();
    for i in 0..s[0] {
        for j in 0..s[1] {
            let row = &data[(i * s[1] + j) * s[2]..(i * s[1] + j + 1) * s[2]];
            let first = row.iter().position(|&v| select(v));
            if let Some(f) = first {
                let last = row.iter().rposition(|&v| select(v)).unwrap_or(f);
                lo = [lo[0].min(i), lo[1].min(j), lo[2].min(f)];
                hi = [hi[0].max(i + 1), hi[1].max(j + 1), hi[2].max(last + 1)];
            }
        }
    }
    (lo[0] != usize::MAX).then_some((lo, hi))
}

/// MONAI `CropForeground.compute_bounding_box`: the foreground box grown by `margin`, clipped to the
/// volume when `allow_smaller`, then grown (centred) to a multiple of `k_divisible`.
pub fn foreground_box(
    fg: Option<([usize; 3], [usize; 3])>,
    shape: [usize; 3],
    margin: [usize; 3],
    allow_smaller: bool,
    k_divisible: [usize; 3],
) -> Option<([isize; 3], [usize; 3])> {
    let (lo, hi) = fg?;
    let mut start = [0isize; 3];
    let mut size = [0usize; 3];
    for d in 0..3 {
        let mut s = lo[d] as isize - margin[d] as isize;
        let mut e = hi[d] as isize + margin[d] as isize;
        if allow_smaller {
            s = s.max(0);
            e = e.min(shape[d] as isize);
        }
        let orig = (e - s) as usize;
        let k = k_divisible[d].max(1);
        let new = orig.div_ceil(k) * k;
        s -= ((new - orig) / 2) as isize;
        start[d] = s;
        size[d] = new;
    }
    Some((start, size))
}

/// MONAI `Spacing(pixdim, diagonal=False, scale_extent=False)` output grid: the new affine (same
/// rotation, new column norms, offset so the first corner is kept) and the new shape.
pub fn spacing_grid(
    affine: &Affine,
    shape: [usize; 3],
    pixdim: [f64; 3],
) -> Result<(Affine, [usize; 3])> {
    if pixdim.iter().any(|&p| !(p > 0.0 && p.is_finite())) {
        return Err(Error::InvalidArgument(format!(
            "pixdim must be positive and finite, got {pixdim:?}"
        )));
    }
    let rzs = affine.linear();
    // zoom_affine(diagonal=False): rotation = rzs · inv(chol(rzsᵀ rzs)).
    let mut gram = [[0.0; 3]; 3];
    for (r, row) in gram.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| rzs[k][r] * rzs[k][c]).sum();
        }
    }
    let zs = cholesky_upper(&gram)
        .ok_or_else(|| Error::InvalidArgument(format!("singular affine {:?}", affine.0)))?;
    let zs_inv =
        mat3_inverse(&zs).ok_or_else(|| Error::InvalidArgument("singular affine".into()))?;
    let mut lin = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            let rot: f64 = (0..3).map(|k| rzs[r][k] * zs_inv[k][c]).sum();
            lin[r][c] = rot * pixdim[c];
        }
    }
    let mut new_affine = Affine::from_parts(lin, [0.0; 3]);
    // compute_shape_offset(scale_extent=False).
    let xform = new_affine
        .inverse()
        .ok_or_else(|| Error::InvalidArgument("singular target affine".into()))?
        .matmul(affine);
    let mut corners_out = Vec::with_capacity(8);
    let mut corners_world = Vec::with_capacity(8);
    for ci in 0..8 {
        let p: [f64; 3] =
            std::array::from_fn(
                |d| if ci >> (2 - d) & 1 == 1 { shape[d] as f64 - 1.0 } else { 0.0 },
            );
        corners_out.push(xform.apply(p));
        corners_world.push(affine.apply(p));
    }
    let mut out_shape = [0usize; 3];
    for d in 0..3 {
        let mn = corners_out.iter().map(|c| c[d]).fold(f64::INFINITY, f64::min);
        let mx = corners_out.iter().map(|c| c[d]).fold(f64::NEG_INFINITY, f64::max);
        out_shape[d] = ((mx - mn + 1.0).round_ties_even()).max(1.0) as usize;
    }
    let mut offset = None;
    for (i, ci) in corners_out.iter().enumerate() {
        let min_corner: [f64; 3] = std::array::from_fn(|d| {
            corners_out.iter().map(|c| c[d] - ci[d]).fold(f64::INFINITY, f64::min)
        });
        if min_corner.iter().all(|v| v.abs() <= 1e-8) {
            offset = Some(corners_world[i]);
            break;
        }
    }
    let offset = offset.unwrap_or_else(|| {
        let half_in = shape.map(|s| s as f64 / 2.0);
        let half_out = out_shape.map(|s| s as f64 / 2.0);
        let a = affine.apply(half_in);
        let b = Affine::from_parts(lin, [0.0; 3]).apply(half_out);
        [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
    });
    for (d, o) in offset.iter().enumerate() {
        new_affine.0[d][3] = *o;
    }
    Ok((new_affine, out_shape))
}

#[inline]
fn reflect(x: f64, n: usize) -> f64 {
    // grid_sample reflection with align_corners=False: mirror about -0.5 and n - 0.5, then clip.
    let n = n as f64;
    let span = 2.0 * n;
    let mut v = (x + 0.5).rem_euclid(span);
    if v > n {
        v = span - v;
    }
    (v - 0.5).clamp(0.0, n - 1.0)
}

/// Samples `src` at fractional index `p` (f64 maths).
#[inline]
pub fn sample_at<T: Copy + Into<f64>>(
    src: &Volume<T>,
    p: [f64; 3],
    interp: Interp,
    pad: Padding,
) -> f64 {
    let s = src.shape();
    let mut p = p;
    match pad {
        Padding::Border => {
            for d in 0..3 {
                p[d] = p[d].clamp(0.0, s[d] as f64 - 1.0);
            }
        }
        Padding::Reflection => {
            for d in 0..3 {
                p[d] = reflect(p[d], s[d]);
            }
        }
        Padding::Zeros => {}
    }
    let data = src.data();
    match interp {
        Interp::Nearest => {
            let mut idx = [0usize; 3];
            for d in 0..3 {
                let r = p[d].round_ties_even();
                if !(r >= 0.0 && r <= s[d] as f64 - 1.0) {
                    return 0.0;
                }
                idx[d] = r as usize;
            }
            data[(idx[0] * s[1] + idx[1]) * s[2] + idx[2]].into()
        }
        Interp::Linear => {
            let mut i0 = [0isize; 3];
            let mut w = [0.0f64; 3];
            for d in 0..3 {
                let f = p[d].floor();
                if !f.is_finite() {
                    return 0.0;
                }
                i0[d] = f as isize;
                w[d] = p[d] - f;
            }
            let mut acc = 0.0;
            for corner in 0..8 {
                let mut wt = 1.0;
                let mut idx = [0usize; 3];
                let mut inside = true;
                for d in 0..3 {
                    let hi = (corner >> (2 - d)) & 1 == 1;
                    let ii = i0[d] + hi as isize;
                    wt *= if hi { w[d] } else { 1.0 - w[d] };
                    if ii < 0 || ii >= s[d] as isize {
                        inside = false;
                    }
                    idx[d] = ii.clamp(0, s[d] as isize - 1) as usize;
                }
                if wt == 0.0 || !inside {
                    continue;
                }
                acc += wt * Into::<f64>::into(data[(idx[0] * s[1] + idx[1]) * s[2] + idx[2]]);
            }
            acc
        }
    }
}

/// Resamples `src` onto the grid `(dst_affine, dst_shape)` in world space: output voxel `q` reads
/// `src` at `inv(src.affine) · dst_affine · q` (MONAI `SpatialResample`, `align_corners=False`).
pub fn resample_to_grid<T, U>(
    src: &Volume<T>,
    dst_affine: &Affine,
    dst_shape: [usize; 3],
    interp: Interp,
    pad: Padding,
    cast: impl Fn(f64) -> U + Sync,
) -> Result<Volume<U>>
where
    T: Copy + Into<f64> + Sync,
    U: Copy + Send + Default,
{
    let inv = src.affine.inverse().ok_or_else(|| {
        Error::InvalidArgument(format!("singular source affine {:?}", src.affine.0))
    })?;
    let m = inv.matmul(dst_affine);
    warp(src, &m, dst_shape, *dst_affine, interp, pad, cast)
}

/// Output voxel `q` reads `src` at `m · q` (voxel → voxel affine); the result gets `out_affine`.
///
/// `out_shape` is checked against the process size limits ([`crate::limits`]) before it is
/// allocated.
pub fn warp<T, U>(
    src: &Volume<T>,
    m: &Affine,
    out_shape: [usize; 3],
    out_affine: Affine,
    interp: Interp,
    pad: Padding,
    cast: impl Fn(f64) -> U + Sync,
) -> Result<Volume<U>>
where
    T: Copy + Into<f64> + Sync,
    U: Copy + Send + Default,
{
    let [_, ny, nz] = out_shape;
    let mut data = alloc_volume("resampled grid", out_shape, U::default())?;
    if !data.is_empty() {
        data.par_chunks_mut(ny * nz).enumerate().for_each(|(i, slab)| {
            for j in 0..ny {
                let base = m.apply([i as f64, j as f64, 0.0]);
                for k in 0..nz {
                    let kf = k as f64;
                    let p = [
                        base[0] + m.0[0][2] * kf,
                        base[1] + m.0[1][2] * kf,
                        base[2] + m.0[2][2] * kf,
                    ];
                    slab[j * nz + k] = cast(sample_at(src, p, interp, pad));
                }
            }
        });
    }
    Volume::new(data, out_shape, out_affine)
        .ok_or_else(|| Error::InvalidArgument("internal: warp length mismatch".into()))
}

/// MONAI `Spacing(pixdim)` on an image (trilinear, border padding), computed in f64.
pub fn spacing_image(vol: &Volume<f32>, pixdim: [f64; 3]) -> Result<Volume<f32>> {
    let (aff, shape) = spacing_grid(&vol.affine, vol.shape(), pixdim)?;
    resample_to_grid(vol, &aff, shape, Interp::Linear, Padding::Border, |v| v as f32)
}

/// MONAI `Spacing(pixdim, mode="nearest")` on a label map.
pub fn spacing_label(vol: &Volume<u8>, pixdim: [f64; 3]) -> Result<Volume<u8>> {
    let (aff, shape) = spacing_grid(&vol.affine, vol.shape(), pixdim)?;
    resample_to_grid(vol, &aff, shape, Interp::Nearest, Padding::Border, |v| v as u8)
}

/// PyTorch `F.interpolate` source coordinates along one axis (`align_corners=False`).
fn interp_axis_linear(n_in: usize, n_out: usize) -> Vec<(usize, usize, f64)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, src - i0 as f64)
        })
        .collect()
}

/// Zoom mode for [`zoom`] (PyTorch `F.interpolate` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ZoomMode {
    /// `mode="area"` (adaptive average pooling).
    Area,
    /// `mode="nearest"` (floor of `o · in/out`).
    Nearest,
    /// `mode="trilinear"`, `align_corners=False`.
    Trilinear,
}

/// One separable 1-D pass along `axis` of a C-order buffer.
fn resize_axis(
    src: &[f64],
    shape: [usize; 3],
    axis: usize,
    n_out: usize,
    mode: ZoomMode,
) -> Vec<f64> {
    let n_in = shape[axis];
    let mut out_shape = shape;
    out_shape[axis] = n_out;
    let strides = [shape[1] * shape[2], shape[2], 1];
    let ostrides = [out_shape[1] * out_shape[2], out_shape[2], 1];
    let mut out = vec![0.0; out_shape.iter().product()];
    // Per-output taps: list of (input index, weight).
    let taps: Vec<Vec<(usize, f64)>> = match mode {
        ZoomMode::Area => (0..n_out)
            .map(|o| {
                let s = (o * n_in) / n_out;
                let e = ((o + 1) * n_in).div_ceil(n_out);
                let w = 1.0 / (e - s) as f64;
                (s..e).map(|i| (i, w)).collect()
            })
            .collect(),
        ZoomMode::Nearest => {
            let scale = n_in as f32 / n_out as f32;
            (0..n_out)
                .map(|o| vec![(((o as f32 * scale).floor() as usize).min(n_in - 1), 1.0)])
                .collect()
        }
        ZoomMode::Trilinear => interp_axis_linear(n_in, n_out)
            .into_iter()
            .map(|(a, b, l)| vec![(a, 1.0 - l), (b, l)])
            .collect(),
    };
    for a in 0..out_shape[0] {
        for b in 0..out_shape[1] {
            for c in 0..out_shape[2] {
                let oi = [a, b, c];
                let mut base = 0;
                for d in 0..3 {
                    if d != axis {
                        base += oi[d] * strides[d];
                    }
                }
                let v: f64 =
                    taps[oi[axis]].iter().map(|&(i, w)| w * src[base + i * strides[axis]]).sum();
                out[a * ostrides[0] + b * ostrides[1] + c] = v;
            }
        }
    }
    out
}

/// `F.interpolate(scale_factor=z, recompute_scale_factor=True)`: output size `floor(n · z)`.
/// The affine maps output voxel `o` to input coordinate `(o + 0.5) · in/out − 0.5`.
pub fn zoom<T: Copy + Into<f64>>(
    vol: &Volume<T>,
    factor: [f64; 3],
    mode: ZoomMode,
    cast: impl Fn(f64) -> T,
) -> Result<Volume<T>> {
    let shape = vol.shape();
    let out: [usize; 3] = std::array::from_fn(|d| (shape[d] as f64 * factor[d]).floor() as usize);
    if out.contains(&0) || factor.iter().any(|f| !f.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "zoom {factor:?} of shape {shape:?} gives {out:?}"
        )));
    }
    // The f64 working buffers hold at most max(shape, out) per axis.
    let work: [usize; 3] = std::array::from_fn(|d| shape[d].max(out[d]));
    crate::limits::Limits::process()?.check(Path::new(""), "zoomed grid", work, 8)?;
    let mut buf: Vec<f64> = vol.data().iter().map(|&v| v.into()).collect();
    let mut cur = shape;
    for axis in 0..3 {
        if cur[axis] != out[axis] {
            buf = resize_axis(&buf, cur, axis, out[axis], mode);
            cur[axis] = out[axis];
        }
    }
    let sc: [f64; 3] = std::array::from_fn(|d| shape[d] as f64 / out[d] as f64);
    let m = Affine::from_parts(
        [[sc[0], 0.0, 0.0], [0.0, sc[1], 0.0], [0.0, 0.0, sc[2]]],
        std::array::from_fn(|d| 0.5 * sc[d] - 0.5),
    );
    let data = buf.into_iter().map(cast).collect();
    Volume::new(data, out, vol.affine.matmul(&m))
        .ok_or_else(|| Error::InvalidArgument("internal: zoom length mismatch".into()))
}

/// MONAI `create_rotate(3, angles) @ create_scale(scales)` style centred affine: returns the
/// voxel → voxel map `q ↦ c + R·(S·(q − c) + t)` with `R = Rx·Ry·Rz`, `S = diag(scale)`, `c` the
/// centre (MONAI `AffineGrid`: `affine = R @ T @ S` applied to centred coordinates).
pub fn centred_affine(
    shape: [usize; 3],
    angles: [f64; 3],
    scale: [f64; 3],
    translate: [f64; 3],
) -> Affine {
    let (sx, cx) = angles[0].sin_cos();
    let (sy, cy) = angles[1].sin_cos();
    let (sz, cz) = angles[2].sin_cos();
    let rx = Affine::from_parts([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]], [0.0; 3]);
    let ry = Affine::from_parts([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], [0.0; 3]);
    let rz = Affine::from_parts([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]], [0.0; 3]);
    let a = rx
        .matmul(&ry)
        .matmul(&rz)
        .matmul(&Affine::translation(translate))
        .matmul(&Affine::from_diagonal(scale));
    let c: [f64; 3] = std::array::from_fn(|d| (shape[d] as f64 - 1.0) / 2.0);
    Affine::translation(c).matmul(&a).matmul(&Affine::translation(c.map(|v| -v)))
}

/// Maps a label prediction made on a preprocessed grid back onto the original image grid
/// (`original_affine`, `original_shape`, e.g. from [`crate::transforms::Meta`]) by nearest-neighbour
/// sampling in world space; voxels outside the prediction's field of view get 0. This inverts any
/// chain of Orientation, Spacing, crops and pads at once, so the written prediction has exactly the
/// input's shape and affine.
pub fn labels_to_original_grid(
    pred: &Volume<u8>,
    original_affine: &Affine,
    original_shape: [usize; 3],
) -> Result<Volume<u8>> {
    resample_to_grid(pred, original_affine, original_shape, Interp::Nearest, Padding::Zeros, |v| {
        v as u8
    })
}

/// Like [`labels_to_original_grid`] for continuous maps (probabilities, logits): trilinear, zero outside.
pub fn image_to_original_grid(
    pred: &Volume<f32>,
    original_affine: &Affine,
    original_shape: [usize; 3],
) -> Result<Volume<f32>> {
    resample_to_grid(pred, original_affine, original_shape, Interp::Linear, Padding::Zeros, |v| {
        v as f32
    })
}
