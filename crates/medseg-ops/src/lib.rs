//! medseg-ops: the 3-D tensor operations candle 0.11 lacks, as candle ops with backward.
//!
//! Every op has a fast path (custom CPU kernels, or composed candle ops where that is already the
//! fast way) and a `*_reference` twin that is obviously correct and differentiable through candle's
//! own autograd; the integration tests compare the two, forward and backward, check gradients
//! against finite differences, and compare against PyTorch goldens.
//!
//! Layouts follow PyTorch: volumes `[N, C, D, H, W]`, conv weights `[Co, Ci/groups, kD, kH, kW]`,
//! transposed conv weights `[Ci, Co/groups, kD, kH, kW]`; Swin window ops work channels-last
//! `[B, D, H, W, C]` as MONAI does.
//!
//! Fast paths compute in f32; other float dtypes are converted on the way in and out.
mod activation;
mod alloc;
mod attention;
mod conv3d;
mod conv_kernels;
#[cfg(feature = "cuda")]
mod cuda_attention;
#[cfg(feature = "cuda")]
mod cuda_conv;
#[cfg(feature = "cuda")]
mod cuda_launch;
#[cfg(feature = "cuda")]
mod cuda_ops;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;
mod interpolate;
mod norm;
mod simd;
mod storage;
mod window;

pub use activation::{
    gelu, gelu_reference, leaky_relu, leaky_relu_reference, softmax_last_dim,
    softmax_last_dim_reference,
};
pub use alloc::tune_allocator;
pub use attention::{window_attention, window_attention_qkv, window_attention_qkv_reference};
pub use conv3d::{
    Conv3dConfig, ConvTranspose3dConfig, conv_transpose3d, conv_transpose3d_reference, conv3d,
    conv3d_reference,
};
#[cfg(feature = "cuda")]
pub use cuda_attention::{
    fused_attention, soft_moe_combine, soft_moe_dispatch, window_attention_fused,
    window_attention_qkv_fused,
};
#[cfg(feature = "cuda")]
pub use cuda_conv::{conv_transpose3d_col2im, conv3d_im2col};
pub use interpolate::{InterpolationMode, Resize, interpolate3d, interpolate3d_reference};
pub use norm::{
    instance_norm_leaky_relu, instance_norm_leaky_relu_reference, instance_norm3d,
    instance_norm3d_reference, layer_norm, layer_norm_reference,
};
pub use window::{
    pad_to_windows, relative_position_index, relative_position_index_sliced, roll3d,
    shifted_window_mask, window_and_shift, window_partition, window_reverse,
};
