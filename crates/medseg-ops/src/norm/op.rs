//! Differentiable normalisations: `instance_norm3d` and `layer_norm` (last dim).
//!
//! Both normalise contiguous rows (instance norm: `N·C` rows of `D·H·W` voxels; layer norm: rows of
//! `C` channels) with a biased variance, so one custom op (`NormalizeRows` in `cpu.rs`) with an analytic
//! backward serves both. The optional affine part is composed from candle ops. References:
//! [`instance_norm3d_reference`], [`layer_norm_reference`], composed from candle ops.
//!
//! [`instance_norm_leaky_relu`] fuses the `InstanceNorm → (+ residual) → LeakyReLU` tail of
//! MONAI's `UnetResBlock` into one graph node, so the normalised map and the sum are never kept
//! for the backward pass (candle keeps every op's inputs alive until the loss is dropped);
//! [`instance_norm_add_norm_leaky_relu`] also normalises the residual inside the op (the
//! `conv3 → norm3` shortcut of a res block whose channel count changes).
use candle::{D, DType, Result, Tensor};

use super::cpu::{LayerNormAffine, NormAddNormLeaky, NormLeaky, NormalizeRows};
use crate::storage::{composed_in_f32, f32_contiguous};

/// Instance normalisation of `x` `[N, C, D, H, W]` (any rank ≥ 3): per sample and channel,
/// biased variance over all spatial voxels, then `γ·x̂ + β` when `weight`/`bias` (`[C]`) are given.
///
/// Matches `torch.nn.functional.instance_norm` without running statistics. A single-voxel map
/// normalises to zeros (PyTorch raises in training mode; callers that train should reject it).
pub fn instance_norm3d(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (c, spatial) = check_instance("instance_norm3d", x, weight, bias)?;
    if !x.device().is_cpu() {
        let (w, b) = (as_f32(weight)?, as_f32(bias)?);
        return composed_in_f32(x, |x| instance_norm3d_reference(x, w.as_ref(), b.as_ref(), eps));
    }
    let dtype = x.dtype();
    let y = f32_contiguous(x)?.apply_op1(NormalizeRows { eps: eps as f32, len: spatial })?;
    affine(y, weight, bias, &channel_shape(x.rank(), c))?.to_dtype(dtype)
}

/// `leaky_relu(instance_norm3d(x) + residual)` without affine parameters, as one op.
///
/// The backward pass needs only `x`, the output and (when given) nothing of `residual`:
/// `lrelu'` is read off the output's sign (valid for `negative_slope ≥ 0`), the normalisation's
/// gradient is [`instance_norm3d`]'s. Reference: [`instance_norm_leaky_relu_reference`].
///
/// # Shapes
/// `x` `[N, C, spatial…]`, `residual` the same shape → the same shape.
pub fn instance_norm_leaky_relu(
    x: &Tensor,
    residual: Option<&Tensor>,
    eps: f64,
    negative_slope: f64,
) -> Result<Tensor> {
    let (_, spatial) = check_instance("instance_norm_leaky_relu", x, None, None)?;
    if !(negative_slope >= 0.0 && negative_slope.is_finite()) {
        candle::bail!("instance_norm_leaky_relu: negative_slope must be ≥ 0, got {negative_slope}")
    }
    if let Some(r) = residual
        && r.dims() != x.dims()
    {
        candle::bail!(
            "instance_norm_leaky_relu: residual {:?} must have the shape of x {:?}",
            r.dims(),
            x.dims()
        )
    }
    if !x.device().is_cpu() {
        // No fused kernel on this device: its instance norm and leaky ReLU, composed.
        let y = plus(instance_norm3d(x, None, None, eps)?, residual)?;
        return crate::activation::leaky_relu(&y, negative_slope);
    }
    let dtype = x.dtype();
    let op = NormLeaky { eps: eps as f32, len: spatial, slope: negative_slope as f32 };
    let x32 = f32_contiguous(x)?;
    let y = match residual {
        None => x32.apply_op1(op)?,
        Some(r) => x32.apply_op2(&f32_contiguous(r)?, op)?,
    };
    y.to_dtype(dtype)
}

/// `leaky_relu(instance_norm3d(x) + instance_norm3d(residual))` without affine parameters, as
/// one op: the normalised residual is recomputed in the backward pass instead of being kept.
///
/// Reference: [`instance_norm_add_norm_leaky_relu_reference`].
///
/// # Shapes
/// `x` `[N, C, spatial…]`, `residual` the same shape → the same shape.
pub fn instance_norm_add_norm_leaky_relu(
    x: &Tensor,
    residual: &Tensor,
    eps: f64,
    negative_slope: f64,
) -> Result<Tensor> {
    let (_, spatial) = check_instance("instance_norm_add_norm_leaky_relu", x, None, None)?;
    if !(negative_slope >= 0.0 && negative_slope.is_finite()) {
        candle::bail!(
            "instance_norm_add_norm_leaky_relu: negative_slope must be ≥ 0, got {negative_slope}"
        )
    }
    if residual.dims() != x.dims() {
        candle::bail!(
            "instance_norm_add_norm_leaky_relu: residual {:?} must have the shape of x {:?}",
            residual.dims(),
            x.dims()
        )
    }
    if !x.device().is_cpu() {
        let r = instance_norm3d(residual, None, None, eps)?;
        return instance_norm_leaky_relu(x, Some(&r), eps, negative_slope);
    }
    let dtype = x.dtype();
    let op = NormLeaky { eps: eps as f32, len: spatial, slope: negative_slope as f32 };
    f32_contiguous(x)?.apply_op2(&f32_contiguous(residual)?, NormAddNormLeaky(op))?.to_dtype(dtype)
}

/// Composed reference of [`instance_norm_add_norm_leaky_relu`].
pub fn instance_norm_add_norm_leaky_relu_reference(
    x: &Tensor,
    residual: &Tensor,
    eps: f64,
    negative_slope: f64,
) -> Result<Tensor> {
    let r = instance_norm3d_reference(residual, None, None, eps)?;
    instance_norm_leaky_relu_reference(x, Some(&r), eps, negative_slope)
}

/// Composed reference of [`instance_norm_leaky_relu`].
pub fn instance_norm_leaky_relu_reference(
    x: &Tensor,
    residual: Option<&Tensor>,
    eps: f64,
    negative_slope: f64,
) -> Result<Tensor> {
    let y = plus(instance_norm3d_reference(x, None, None, eps)?, residual)?;
    crate::activation::leaky_relu_reference(&y, negative_slope)
}

/// `y + r`, or `y` without a residual.
fn plus(y: Tensor, r: Option<&Tensor>) -> Result<Tensor> {
    match r {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// Layer normalisation over the last dimension with biased variance, then `γ·x̂ + β`.
///
/// Differentiable in all inputs, unlike candle-nn's fast `layer_norm` / `LayerNorm` module.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let c = check_last("layer_norm", x, weight, bias)?;
    if !x.device().is_cpu() {
        let (w, b) = (as_f32(weight)?, as_f32(bias)?);
        return composed_in_f32(x, |x| layer_norm_reference(x, w.as_ref(), b.as_ref(), eps));
    }
    let dtype = x.dtype();
    if let (Some(w), Some(b)) = (weight, bias) {
        // The common case (Swin blocks): one fused op, forward and backward.
        let op = LayerNormAffine { eps: eps as f32, len: c };
        return f32_contiguous(x)?
            .apply_op3(&f32_contiguous(w)?, &f32_contiguous(b)?, op)?
            .to_dtype(dtype);
    }
    let y = f32_contiguous(x)?.apply_op1(NormalizeRows { eps: eps as f32, len: c })?;
    affine(y, weight, bias, &[c])?.to_dtype(dtype)
}

/// Composed reference of [`instance_norm3d`] (mean, centred square, sqrt, divide).
pub fn instance_norm3d_reference(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (c, _) = check_instance("instance_norm3d", x, weight, bias)?;
    let dims: Vec<usize> = (2..x.rank()).collect();
    let mean = x.mean_keepdim(dims.as_slice())?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(dims.as_slice())?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    affine(y, weight, bias, &channel_shape(x.rank(), c))
}

/// Composed reference of [`layer_norm`] (the same math as candle-nn's `layer_norm_slow`).
pub fn layer_norm_reference(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let c = check_last("layer_norm", x, weight, bias)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    affine(y, weight, bias, &[c])
}

/// An optional parameter in f32 (for the composed path on other devices).
fn as_f32(t: Option<&Tensor>) -> Result<Option<Tensor>> {
    t.map(|t| t.to_dtype(DType::F32)).transpose()
}

fn channel_shape(rank: usize, c: usize) -> Vec<usize> {
    let mut s = vec![1; rank];
    s[1] = c;
    s
}

fn affine(y: Tensor, w: Option<&Tensor>, b: Option<&Tensor>, shape: &[usize]) -> Result<Tensor> {
    let y = match w {
        Some(w) => y.broadcast_mul(&w.to_dtype(y.dtype())?.reshape(shape)?)?,
        None => y,
    };
    match b {
        Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?.reshape(shape)?),
        None => Ok(y),
    }
}

fn check_params(op: &str, c: usize, w: Option<&Tensor>, b: Option<&Tensor>) -> Result<()> {
    for (name, t) in [("weight", w), ("bias", b)] {
        if let Some(t) = t
            && t.dims() != [c]
        {
            candle::bail!("{op}: {name} must have shape [{c}], got {:?}", t.dims())
        }
    }
    Ok(())
}

fn check_instance(
    op: &str,
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
) -> Result<(usize, usize)> {
    if x.rank() < 3 || !x.dtype().is_float() {
        candle::bail!(
            "{op}: expected a float tensor [N, C, spatial…], got {:?} {:?}",
            x.dtype(),
            x.dims()
        )
    }
    let c = x.dim(1)?;
    let spatial: usize = x.dims()[2..].iter().product();
    if spatial == 0 {
        candle::bail!("{op}: empty spatial extent in {:?}", x.dims())
    }
    check_params(op, c, w, b)?;
    Ok((c, spatial))
}

fn check_last(op: &str, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>) -> Result<usize> {
    if x.rank() == 0 || !x.dtype().is_float() || x.dim(D::Minus1)? == 0 {
        candle::bail!(
            "{op}: expected a float tensor with a non-empty last dim, got {:?} {:?}",
            x.dtype(),
            x.dims()
        )
    }
    let c = x.dim(D::Minus1)?;
    check_params(op, c, w, b)?;
    Ok(c)
}
