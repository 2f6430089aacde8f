//! Attention: Swin window attention (composed and fused) and Soft MoE dispatch/combine, on one
//! fused custom op.
//!
//! `op.rs` holds the public functions, the composed reference (the test oracle) and the custom
//! ops, whose `cpu_fwd` runs `cpu.rs` (the one CPU kernel: the models' window attention and the
//! CUDA op's CPU side alike) and whose `cuda_fwd` launches `kernels/attention.cu` through
//! `cuda.rs`; `soft_moe.rs` states Soft MoE dispatch and combine as fused attention calls.
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod op;
mod soft_moe;

pub use op::{
    fused_attention, window_attention, window_attention_qkv, window_attention_qkv_reference,
};
pub use soft_moe::{soft_moe_combine, soft_moe_dispatch};
