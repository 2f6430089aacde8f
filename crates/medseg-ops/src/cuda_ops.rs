//! CUDA paths of the ops (feature `cuda`): convolutions through our im2col kernels, the rest
//! through their composed `*_reference` twins, which are already the right CUDA program (candle's
//! own CUDA kernels compute every step, with autograd through candle).
//!
//! - `conv3d` / `conv_transpose3d`: the im2col / col2im kernels + cuBLAS GEMMs of `cuda_conv`,
//!   f32 or bf16 (bf16 runs cuBLAS bf16 GEMMs).
//! - norms, softmax, GELU / leaky ReLU, trilinear/nearest resize: the references, computed in f32
//!   and cast back (statistics and `exp`/`erf` stay in f32 under bf16 mixed precision).
//! - window partition/reverse, roll, padding, masks: composed candle ops already (no dispatch).
//!
//! The public ops in this crate call these when `x.device().is_cuda()`.
use candle::{DType, Result, Tensor};

use crate::{Conv3dConfig, ConvTranspose3dConfig, InterpolationMode, Resize};

/// `f(x)` computed in f32 and cast back to `x`'s dtype.
fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let dtype = x.dtype();
    f(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// An optional parameter in `dtype`.
fn as_dtype(t: Option<&Tensor>, dtype: DType) -> Result<Option<Tensor>> {
    t.map(|t| t.to_dtype(dtype)).transpose()
}

/// CUDA [`crate::softmax_last_dim`].
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, crate::softmax_last_dim_reference)
}

/// CUDA [`crate::gelu`].
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    in_f32(x, crate::gelu_reference)
}

/// CUDA [`crate::leaky_relu`].
pub(crate) fn leaky_relu(x: &Tensor, negative_slope: f64) -> Result<Tensor> {
    in_f32(x, |x| crate::leaky_relu_reference(x, negative_slope))
}

/// CUDA [`crate::instance_norm3d`].
pub(crate) fn instance_norm3d(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (w, b) = (as_dtype(weight, DType::F32)?, as_dtype(bias, DType::F32)?);
    in_f32(x, |x| crate::instance_norm3d_reference(x, w.as_ref(), b.as_ref(), eps))
}

/// CUDA [`crate::layer_norm`].
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (w, b) = (as_dtype(weight, DType::F32)?, as_dtype(bias, DType::F32)?);
    in_f32(x, |x| crate::layer_norm_reference(x, w.as_ref(), b.as_ref(), eps))
}

/// CUDA [`crate::conv3d`].
pub(crate) fn conv3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
) -> Result<Tensor> {
    crate::cuda_conv::conv3d_im2col(x, w, bias, cfg)
}

/// CUDA [`crate::conv_transpose3d`].
pub(crate) fn conv_transpose3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &ConvTranspose3dConfig,
) -> Result<Tensor> {
    crate::cuda_conv::conv_transpose3d_col2im(x, w, bias, cfg)
}

/// CUDA [`crate::interpolate3d`].
pub(crate) fn interpolate3d(x: &Tensor, resize: Resize, mode: InterpolationMode) -> Result<Tensor> {
    in_f32(x, |x| crate::interpolate3d_reference(x, resize, mode))
}
