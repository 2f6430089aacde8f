//! medseg-ops: the 3-D tensor operations candle 0.11 lacks, as candle ops with backward.
//!
//! One folder per op family (`activation`, `attention`, `conv`, `interpolate`, `linear`, `norm`,
//! `window`):
//! `mod.rs` names the public functions, `op.rs` holds them with their `*_reference` twins, `cpu.rs`
//! the CPU kernels as candle custom ops, and where the family has a CUDA kernel of ours
//! (`kernels/*.cu`), `cuda.rs` its launches: one custom op per kernel, with `cpu_fwd` and
//! `cuda_fwd` side by side. An op without a kernel of ours on a device runs its composed
//! reference there (in f32), so every op works on every device candle supports.
//!
//! The references are obviously correct and differentiable through candle's own autograd; the
//! integration tests compare fast path and reference, forward and backward, on every device present
//! (`medseg_testkit::test_device!`), check gradients against finite differences, and compare
//! against PyTorch goldens.
//!
//! Layouts follow PyTorch: volumes `[N, C, D, H, W]`, conv weights `[Co, Ci/groups, kD, kH, kW]`,
//! transposed conv weights `[Ci, Co/groups, kD, kH, kW]`; Swin window ops work channels-last
//! `[B, D, H, W, C]` as MONAI does.
//!
//! Fast paths compute in f32; other float dtypes are converted on the way in and out (bf16 on CUDA
//! runs the bf16 kernels with f32 accumulation).
mod activation;
mod alloc;
mod attention;
mod conv;
#[cfg(feature = "cuda")]
mod cuda;
mod interpolate;
mod linear;
mod norm;
mod precision;
mod simd;
mod storage;
mod window;

pub use activation::{
    gelu, gelu_reference, leaky_relu, leaky_relu_reference, softmax_last_dim,
    softmax_last_dim_reference,
};
pub use alloc::tune_allocator;
pub use attention::{
    fused_attention, soft_moe_combine, soft_moe_dispatch, window_attention, window_attention_qkv,
    window_attention_qkv_reference,
};
pub use conv::{
    Conv3dConfig, ConvTranspose3dConfig, conv_transpose3d, conv_transpose3d_col2im,
    conv_transpose3d_reference, conv3d, conv3d_im2col, conv3d_reference,
};
pub use interpolate::{InterpolationMode, Resize, interpolate3d, interpolate3d_reference};
pub use linear::{linear, linear_reference};
pub use norm::{
    instance_norm_add_norm_leaky_relu, instance_norm_add_norm_leaky_relu_reference,
    instance_norm_leaky_relu, instance_norm_leaky_relu_reference, instance_norm3d,
    instance_norm3d_reference, layer_norm, layer_norm_reference,
};
pub use precision::{Precision, bf16_dot_available, precision, with_precision};
pub use window::{
    pad_to_windows, relative_position_index, relative_position_index_sliced, roll3d,
    shifted_window_mask, window_and_shift, window_partition, window_reverse,
};
