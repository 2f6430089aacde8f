//! `conv3d` and `conv_transpose3d` on `[N, C, D, H, W]` tensors, PyTorch semantics and layouts.
//!
//! On CPU: the tiled im2col + GEMM kernels of `cpu.rs`, as candle custom ops with backward. On
//! other devices: the im2col / col2im custom ops of `im2col.rs` (a CUDA kernel each) around the
//! device's GEMM. Reference: [`conv3d_reference`] / [`conv_transpose3d_reference`], composed from
//! differentiable candle ops (pad, index_select, matmul), the test oracle of both.
use candle::{CustomOp2, Result, Tensor};

use super::cpu::{Conv3dOp, ConvGeom, ConvTranspose3dOp};
use super::im2col::{conv_transpose3d_col2im, conv3d_im2col};
use crate::storage::f32_contiguous;

/// Hyper-parameters of [`conv3d`], per spatial axis (D, H, W); mirrors `torch.nn.functional.conv3d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dConfig {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    pub groups: usize,
}

impl Default for Conv3dConfig {
    /// PyTorch's defaults: stride 1, padding 0, dilation 1, groups 1.
    fn default() -> Self {
        Self { stride: [1; 3], padding: [0; 3], dilation: [1; 3], groups: 1 }
    }
}

impl Conv3dConfig {
    /// Same stride and padding on every axis, dilation 1, one group.
    pub fn uniform(stride: usize, padding: usize) -> Self {
        Self { stride: [stride; 3], padding: [padding; 3], ..Self::default() }
    }
}

/// Hyper-parameters of [`conv_transpose3d`]; mirrors `torch.nn.functional.conv_transpose3d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTranspose3dConfig {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub output_padding: [usize; 3],
    pub dilation: [usize; 3],
    pub groups: usize,
}

impl Default for ConvTranspose3dConfig {
    /// PyTorch's defaults: stride 1, padding 0, output_padding 0, dilation 1, groups 1.
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
            output_padding: [0; 3],
            dilation: [1; 3],
            groups: 1,
        }
    }
}

impl ConvTranspose3dConfig {
    /// Same stride on every axis, no padding (the `k2 s2` up-sampling of UNETR decoders).
    pub fn uniform(stride: usize) -> Self {
        Self { stride: [stride; 3], ..Self::default() }
    }
}

/// 3-D convolution. `x` `[N, Ci, D, H, W]`, `w` `[Co, Ci/groups, Kd, Kh, Kw]`, `bias` `[Co]`.
///
/// # Shapes
/// Output `[N, Co, Do, Ho, Wo]` with `Do = (D + 2p − d·(k − 1) − 1) / s + 1` per axis.
/// f32 runs natively; other float dtypes are computed in f32 and cast back. Inside
/// [`crate::with_precision`]`(Precision::Bf16, …)` the CPU forward product rounds its operands to
/// bf16 and accumulates in f32 where the CPU has AVX-512 BF16 (gradients stay f32).
pub fn conv3d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, cfg: &Conv3dConfig) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return conv3d_im2col(x, w, bias, cfg);
    }
    apply_conv(x, w, bias, Conv3dOp(conv_geom(x, w, bias, cfg)?, crate::precision::precision()))
}

/// Transposed 3-D convolution. `x` `[N, Ci, D, H, W]`, `w` `[Ci, Co/groups, Kd, Kh, Kw]`.
///
/// # Shapes
/// Output `[N, Co, Do, Ho, Wo]`, `Do = (D − 1)·s − 2p + d·(k − 1) + output_padding + 1`.
/// `output_padding` must be smaller than the stride on each axis.
pub fn conv_transpose3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &ConvTranspose3dConfig,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return conv_transpose3d_col2im(x, w, bias, cfg);
    }
    apply_conv(x, w, bias, ConvTranspose3dOp(conv_transpose_geom(x, w, bias, cfg)?))
}

/// Runs a convolution op in f32 on contiguous inputs, adds the bias, casts back to `x`'s dtype.
fn apply_conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    op: impl CustomOp2 + Send + Sync + 'static,
) -> Result<Tensor> {
    let y = f32_contiguous(x)?.apply_op2(&f32_contiguous(w)?, op)?;
    add_bias(y, bias)?.to_dtype(x.dtype())
}

/// Composed, obviously-correct [`conv3d`]: zero-pad, gather the receptive fields with one
/// `index_select` (im2col), one matmul per group. Differentiable through candle's autograd.
pub fn conv3d_reference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
) -> Result<Tensor> {
    let g = conv_geom(x, w, bias, cfg)?;
    let [p0, p1, p2] = cfg.padding;
    // [N, Ci, D, H, W] -> [N, Ci, D+2p, H+2p, W+2p]
    let xp = x.pad_with_zeros(2, p0, p0)?.pad_with_zeros(3, p1, p1)?.pad_with_zeros(4, p2, p2)?;
    let [hp, wp] = [g.img[1] + 2 * p1, g.img[2] + 2 * p2];
    let [od, oh, ow] = g.out;
    let (kvol, p) = (g.k.iter().product::<usize>(), od * oh * ow);
    let mut idx = Vec::with_capacity(kvol * p);
    for kd in 0..g.k[0] {
        for kh in 0..g.k[1] {
            for kw in 0..g.k[2] {
                for d in 0..od {
                    for h in 0..oh {
                        for ww in 0..ow {
                            let zd = d * cfg.stride[0] + kd * cfg.dilation[0];
                            let zh = h * cfg.stride[1] + kh * cfg.dilation[1];
                            let zw = ww * cfg.stride[2] + kw * cfg.dilation[2];
                            idx.push(((zd * hp + zh) * wp + zw) as u32);
                        }
                    }
                }
            }
        }
    }
    let idx = Tensor::from_vec(idx, kvol * p, x.device())?;
    // [N, Ci, Dp·Hp·Wp] -> [N, Ci, K·P] -> [N, Ci, K, P]
    let cols = xp.flatten_from(2)?.index_select(&idx, 2)?.reshape((g.n, g.ci, kvol, p))?;
    let (ci_g, co_g) = (g.ci / g.groups, g.co / g.groups);
    let mut outs = Vec::with_capacity(g.groups);
    for gi in 0..g.groups {
        // [N, Ci/g, K, P] -> [N, Ci/g·K, P]
        let cg = cols.narrow(1, gi * ci_g, ci_g)?.reshape((g.n, ci_g * kvol, p))?;
        // [Co/g, Ci/g, K…] -> [Co/g, Ci/g·K]
        let wg = w.narrow(0, gi * co_g, co_g)?.reshape((co_g, ci_g * kvol))?;
        outs.push(wg.broadcast_matmul(&cg)?); // [N, Co/g, P]
    }
    let y = Tensor::cat(&outs, 1)?.reshape((g.n, g.co, od, oh, ow))?;
    add_bias(y, bias)
}

/// Composed, obviously-correct [`conv_transpose3d`]: insert `s − 1` zeros between input voxels,
/// pad by `d·(k − 1) − p` (+ `output_padding` at the end), then a stride-1 [`conv3d_reference`]
/// with the spatially flipped, in/out-swapped weight.
pub fn conv_transpose3d_reference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &ConvTranspose3dConfig,
) -> Result<Tensor> {
    let g = conv_transpose_geom(x, w, bias, cfg)?;
    let (n, ci, d, h, wd) = x.dims5()?;
    let [s0, s1, s2] = cfg.stride;
    // Zero insertion: [N, C, D, 1, H, 1, W, 1] -> pad singletons to s -> [N, C, D·s, H·s, W·s].
    let mut z = x.reshape(vec![n, ci, d, 1, h, 1, wd, 1])?;
    z = z.pad_with_zeros(3, 0, s0 - 1)?.pad_with_zeros(5, 0, s1 - 1)?.pad_with_zeros(
        7,
        0,
        s2 - 1,
    )?;
    z = z.reshape((n, ci, d * s0, h * s1, wd * s2))?;
    z = z.narrow(2, 0, (d - 1) * s0 + 1)?.narrow(3, 0, (h - 1) * s1 + 1)?;
    z = z.narrow(4, 0, (wd - 1) * s2 + 1)?;
    for axis in 0..3 {
        let q = (cfg.dilation[axis] * (g.k[axis] - 1)) as isize - cfg.padding[axis] as isize;
        let dim = axis + 2;
        let end_extra = cfg.output_padding[axis] as isize;
        if q >= 0 {
            z = z.pad_with_zeros(dim, q as usize, (q + end_extra) as usize)?;
        } else {
            // Negative padding crops; output_padding then re-extends the end.
            let len = z.dim(dim)? as isize + 2 * q;
            z = z.narrow(dim, (-q) as usize, len as usize)?;
            z = z.pad_with_zeros(dim, 0, end_extra as usize)?;
        }
    }
    // Weight [Ci, Co/g, K…] -> per group [Co/g, Ci/g, K…], flipped along the three kernel axes.
    let ci_g = g.co / g.groups; // conv terms: g.co is the transposed input's channel count
    let mut wt = Vec::with_capacity(g.groups);
    for gi in 0..g.groups {
        let mut wg = w.narrow(0, gi * ci_g, ci_g)?.transpose(0, 1)?.contiguous()?;
        for axis in 0..3 {
            let k = g.k[axis];
            let rev = Tensor::from_vec((0..k as u32).rev().collect::<Vec<_>>(), k, w.device())?;
            wg = wg.index_select(&rev, axis + 2)?;
        }
        wt.push(wg);
    }
    let wt = Tensor::cat(&wt, 0)?;
    let conv_cfg = Conv3dConfig {
        stride: [1; 3],
        padding: [0; 3],
        dilation: cfg.dilation,
        groups: cfg.groups,
    };
    conv3d_reference(&z, &wt, bias, &conv_cfg)
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        None => Ok(y),
        Some(b) => {
            let co = b.dim(0)?;
            y.broadcast_add(&b.to_dtype(y.dtype())?.reshape((1, co, 1, 1, 1))?)
        }
    }
}

fn check_common(
    op: &str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 3],
    dilation: [usize; 3],
    groups: usize,
) -> Result<()> {
    if x.rank() != 5 || w.rank() != 5 {
        candle::bail!(
            "{op}: expected 5-D input [N, C, D, H, W] and weight, got input {:?} and weight {:?}",
            x.dims(),
            w.dims()
        )
    }
    if x.dtype() != w.dtype() || !x.dtype().is_float() {
        candle::bail!(
            "{op}: input {:?} and weight {:?} must share a float dtype",
            x.dtype(),
            w.dtype()
        )
    }
    if groups == 0 || stride.contains(&0) || dilation.contains(&0) || w.dims()[2..].contains(&0) {
        candle::bail!(
            "{op}: groups {groups}, stride {stride:?}, dilation {dilation:?} and kernel {:?} must be ≥ 1",
            &w.dims()[2..]
        )
    }
    if let Some(b) = bias
        && b.rank() != 1
    {
        candle::bail!("{op}: bias must be 1-D, got {:?}", b.dims())
    }
    Ok(())
}

fn conv_geom(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
) -> Result<ConvGeom> {
    check_common("conv3d", x, w, bias, cfg.stride, cfg.dilation, cfg.groups)?;
    let (n, ci, d, h, wd) = x.dims5()?;
    let (co, ci_g, k0, k1, k2) = w.dims5()?;
    let groups = cfg.groups;
    if ci % groups != 0 || co % groups != 0 || ci_g * groups != ci {
        candle::bail!(
            "conv3d: input channels {ci} and output channels {co} must be divisible by groups {groups} \
             and the weight {:?} must have Ci/groups = {} input channels",
            w.dims(),
            ci / groups.max(1)
        )
    }
    if let Some(b) = bias
        && b.dim(0)? != co
    {
        candle::bail!("conv3d: bias has {} elements, expected {co}", b.dim(0)?)
    }
    let img = [d, h, wd];
    let k = [k0, k1, k2];
    let mut out = [0; 3];
    for a in 0..3 {
        let span = cfg.dilation[a] * (k[a] - 1) + 1;
        let padded = img[a] + 2 * cfg.padding[a];
        if padded < span {
            candle::bail!(
                "conv3d: input {:?} padded by {:?} is smaller than the dilated kernel {k:?} (dilation {:?})",
                img,
                cfg.padding,
                cfg.dilation
            )
        }
        out[a] = (padded - span) / cfg.stride[a] + 1;
    }
    Ok(ConvGeom {
        n,
        ci,
        co,
        groups,
        img,
        out,
        k,
        stride: cfg.stride,
        pad: cfg.padding,
        dil: cfg.dilation,
    })
}

/// Geometry of a transposed convolution, stated as the convolution it is the adjoint of.
fn conv_transpose_geom(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &ConvTranspose3dConfig,
) -> Result<ConvGeom> {
    check_common("conv_transpose3d", x, w, bias, cfg.stride, cfg.dilation, cfg.groups)?;
    let (n, ci, d, h, wd) = x.dims5()?;
    let (wci, co_g, k0, k1, k2) = w.dims5()?;
    let groups = cfg.groups;
    if wci != ci || ci % groups != 0 {
        candle::bail!(
            "conv_transpose3d: weight {:?} must be [Ci = {ci}, Co/groups, K…] with Ci divisible by groups {groups}",
            w.dims()
        )
    }
    let co = co_g * groups;
    if let Some(b) = bias
        && b.dim(0)? != co
    {
        candle::bail!("conv_transpose3d: bias has {} elements, expected {co}", b.dim(0)?)
    }
    let inp = [d, h, wd];
    let k = [k0, k1, k2];
    let mut img = [0; 3];
    for a in 0..3 {
        if cfg.output_padding[a] >= cfg.stride[a] {
            candle::bail!(
                "conv_transpose3d: output_padding {:?} must be smaller than stride {:?}",
                cfg.output_padding,
                cfg.stride
            )
        }
        let full =
            (inp[a] - 1) * cfg.stride[a] + cfg.dilation[a] * (k[a] - 1) + cfg.output_padding[a] + 1;
        if full <= 2 * cfg.padding[a] {
            candle::bail!(
                "conv_transpose3d: padding {:?} leaves no output for input {inp:?}, kernel {k:?}",
                cfg.padding
            )
        }
        img[a] = full - 2 * cfg.padding[a];
    }
    // In convolution terms the transposed output is the image (co channels) and the transposed
    // input is the column side (ci channels).
    Ok(ConvGeom {
        n,
        ci: co,
        co: ci,
        groups,
        img,
        out: inp,
        k,
        stride: cfg.stride,
        pad: cfg.padding,
        dil: cfg.dilation,
    })
}
