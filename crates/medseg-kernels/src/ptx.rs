//! PTX text of every `kernels/*.cu`, compiled by `build.rs` (feature `cuda` only).
//!
//! Load with candle's `CudaDevice::get_or_load_custom_func(name, MODULE, PTX)`; kernel names are
//! `<op>_<dtype>` (`f32`, `bf16`).

/// `kernels/attention.cu`: `attention_fwd_*`, `attention_bwd_delta_*`, `attention_bwd_dq_*`,
/// `attention_bwd_dkv_*` (fused window attention and Soft MoE dispatch/combine).
pub const ATTENTION: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));

/// Module name under which [`ATTENTION`] is cached per device.
pub const ATTENTION_MODULE: &str = "medseg_attention";

/// Rows (queries or keys) handled by one thread block of the attention kernels.
pub const ATTENTION_ROWS: u32 = 32;

/// Output columns one thread of the attention kernels accumulates per pass.
pub const ATTENTION_CHUNK: usize = 32;

/// `kernels/im2col.cu`: `im2col_*`, `col2im_*` (3-D convolution as GEMM).
pub const IM2COL: &str = include_str!(concat!(env!("OUT_DIR"), "/im2col.ptx"));

/// Module name under which [`IM2COL`] is cached per device.
pub const IM2COL_MODULE: &str = "medseg_im2col";
