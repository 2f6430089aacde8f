//! `linear`: `y = x·Wᵀ + b` on `[M, K]` rows, candle's matmul in f32, and bf16 products on
//! AVX-512 BF16 CPUs inside `with_precision(Precision::Bf16, …)`.
//!
//! `op.rs` holds the public function and its reference; `cpu.rs` the bf16 kernel as a candle
//! custom op (gradients f32), whose product the tiled bf16 convolution reuses.
pub(crate) mod cpu;
mod op;

pub use op::{linear, linear_reference};
