//! Differentiable, fast activations: `softmax_last_dim`, exact-erf `gelu`, `leaky_relu`.
//!
//! candle-nn's fast `softmax_last_dim` cuts the autograd graph; these ops keep it. `op.rs` holds
//! the public functions and their composed `*_reference` twins (candle ops with candle's own
//! backward, also the path on devices other than the CPU); `cpu.rs` the CPU kernels.
mod cpu;
mod op;

pub(crate) use cpu::{Unary, UnaryBackward};
pub use op::{
    gelu, gelu_reference, leaky_relu, leaky_relu_reference, softmax_last_dim,
    softmax_last_dim_reference,
};
