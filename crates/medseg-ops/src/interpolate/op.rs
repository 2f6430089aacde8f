//! `interpolate3d`: trilinear (`align_corners=False`) and nearest resizing of `[N, C, D, H, W]`,
//! PyTorch `F.interpolate` semantics, with backward.
//!
//! Both modes are separable: along each axis an output index reads two input indices with two
//! weights ([`Taps`]); nearest is the special case of one tap. The fast path gathers the 8 taps in
//! one pass and scatters them back in backward; [`interpolate3d_reference`] applies the three axes
//! one after the other with `index_select` and candle's autograd.
use candle::{Result, Tensor};

use super::cpu::Interpolate;
use crate::storage::{composed_in_f32, f32_contiguous};

/// Interpolation kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpolationMode {
    /// PyTorch `mode="nearest"`: `src = min(floor(dst·scale), in − 1)`.
    Nearest,
    /// PyTorch `mode="trilinear", align_corners=False`.
    Trilinear,
}

/// Target of the resize, as in `F.interpolate(size=…)` or `F.interpolate(scale_factor=…)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resize {
    /// Output spatial size; the sampling scale is `in / out`.
    Size([usize; 3]),
    /// Scale factors; the output size is `floor(in·f)` and the sampling scale `1 / f`
    /// (`recompute_scale_factor=None`, PyTorch's default).
    Scale([f64; 3]),
}

/// Resizes `x` `[N, C, D, H, W]`.
pub fn interpolate3d(x: &Tensor, resize: Resize, mode: InterpolationMode) -> Result<Tensor> {
    let taps = plan(x, resize, mode)?;
    if !x.device().is_cpu() {
        return composed_in_f32(x, |x| interpolate3d_reference(x, resize, mode));
    }
    let dtype = x.dtype();
    f32_contiguous(x)?.apply_op1(Interpolate { taps })?.to_dtype(dtype)
}

/// Composed reference of [`interpolate3d`]: one axis at a time,
/// `out = w0·x[i0] + w1·x[i1]` with `index_select`.
pub fn interpolate3d_reference(
    x: &Tensor,
    resize: Resize,
    mode: InterpolationMode,
) -> Result<Tensor> {
    let taps = plan(x, resize, mode)?;
    let mut out = x.clone();
    for (a, t) in taps.iter().enumerate() {
        let dim = a + 2;
        let dev = x.device();
        let i0 =
            Tensor::from_vec(t.i0.iter().map(|&i| i as u32).collect::<Vec<_>>(), t.len(), dev)?;
        let i1 =
            Tensor::from_vec(t.i1.iter().map(|&i| i as u32).collect::<Vec<_>>(), t.len(), dev)?;
        let mut wshape = vec![1usize; 5];
        wshape[dim] = t.len();
        let w0 = Tensor::from_vec(t.w0.clone(), wshape.clone(), dev)?.to_dtype(x.dtype())?;
        let w1 = Tensor::from_vec(t.w1.clone(), wshape, dev)?.to_dtype(x.dtype())?;
        out = (out.index_select(&i0, dim)?.broadcast_mul(&w0)?
            + out.index_select(&i1, dim)?.broadcast_mul(&w1)?)?;
    }
    Ok(out)
}

/// Source indices and weights along one axis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Taps {
    pub(crate) in_len: usize,
    pub(crate) i0: Vec<usize>,
    pub(crate) i1: Vec<usize>,
    pub(crate) w0: Vec<f32>,
    pub(crate) w1: Vec<f32>,
}

impl Taps {
    pub(crate) fn len(&self) -> usize {
        self.i0.len()
    }

    /// PyTorch `area_pixel_compute_source_index` (align_corners=False) and `nearest_idx`.
    fn new(
        in_len: usize,
        out_len: usize,
        scale_factor: Option<f64>,
        mode: InterpolationMode,
    ) -> Self {
        // PyTorch computes the scale in the op's accumulation type (f32 for f32 input).
        let scale = match scale_factor {
            Some(f) => (1.0 / f) as f32,
            None => in_len as f32 / out_len as f32,
        };
        let mut t = Taps {
            in_len,
            i0: Vec::with_capacity(out_len),
            i1: Vec::with_capacity(out_len),
            w0: Vec::with_capacity(out_len),
            w1: Vec::with_capacity(out_len),
        };
        for o in 0..out_len {
            let (i0, i1, w0, w1) = match mode {
                InterpolationMode::Nearest => {
                    let i = if out_len == in_len {
                        o
                    } else if out_len == 2 * in_len {
                        o >> 1
                    } else {
                        ((o as f32 * scale).floor() as usize).min(in_len - 1)
                    };
                    (i, i, 1.0, 0.0)
                }
                InterpolationMode::Trilinear => {
                    let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                    let i0 = (src as usize).min(in_len - 1);
                    let i1 = if i0 < in_len - 1 { i0 + 1 } else { i0 };
                    let l1 = src - i0 as f32;
                    (i0, i1, 1.0 - l1, l1)
                }
            };
            t.i0.push(i0);
            t.i1.push(i1);
            t.w0.push(w0);
            t.w1.push(w1);
        }
        t
    }
}

fn plan(x: &Tensor, resize: Resize, mode: InterpolationMode) -> Result<[Taps; 3]> {
    let (_, _, d, h, w) = x.dims5()?;
    if !x.dtype().is_float() {
        candle::bail!("interpolate3d: expected a float tensor, got {:?}", x.dtype())
    }
    let inp = [d, h, w];
    if inp.contains(&0) {
        candle::bail!("interpolate3d: empty input {:?}", x.dims())
    }
    let (out, factors) = match resize {
        Resize::Size(s) => (s, [None; 3]),
        Resize::Scale(f) => {
            if f.iter().any(|v| !v.is_finite() || *v <= 0.0) {
                candle::bail!("interpolate3d: scale factors {f:?} must be finite and > 0")
            }
            let out = [0, 1, 2].map(|a| (inp[a] as f64 * f[a]).floor() as usize);
            (out, f.map(Some))
        }
    };
    if out.contains(&0) {
        candle::bail!("interpolate3d: output size {out:?} for input {inp:?} has an empty axis")
    }
    Ok([0, 1, 2].map(|a| Taps::new(inp[a], out[a], factors[a], mode)))
}
