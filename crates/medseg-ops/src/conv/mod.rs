//! `conv3d` and `conv_transpose3d` on `[N, C, D, H, W]`, PyTorch semantics and layouts.
//!
//! `op.rs` holds the configurations, the public functions and the composed references (the test
//! oracle); `cpu.rs` the tiled im2col + GEMM CPU kernels and their custom ops (the CPU path);
//! `direct.rs` the direct AVX-512 convolution that `cpu.rs` runs for the forward product when the
//! CPU has AVX-512F and the geometry suits it (W stride 1, one group, rows of ≥ 16 outputs), and
//! `direct_weight.rs` the weight gradient for the same geometries;
//! `im2col.rs` the im2col / col2im custom ops, each with its CPU kernel and its CUDA kernel
//! (`kernels/im2col.cu`, launched by `cuda.rs`) side by side, around the device's GEMM (the path
//! on every other device).
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod direct;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod direct_weight;
mod im2col;
mod op;

pub use im2col::{conv_transpose3d_col2im, conv3d_im2col};
pub use op::{
    Conv3dConfig, ConvTranspose3dConfig, conv_transpose3d, conv_transpose3d_reference, conv3d,
    conv3d_reference,
};
