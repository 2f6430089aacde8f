//! Plain-Rust CPU twins of the CUDA kernels in `kernels/`, one module per `.cu` file (Soft MoE
//! dispatch/combine reuse the attention kernels and get their own named entry points).
mod attention;
mod im2col;
mod soft_moe;

pub use attention::{AttentionGeom, AttentionGrads, attention_bwd, attention_fwd};
pub use im2col::{Im2colGeom, col2im, im2col};
pub use soft_moe::{MoeGeom, soft_moe_combine_geom, soft_moe_dispatch_geom};

/// A buffer or geometry that does not fit a kernel's contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer has the wrong number of elements.
    Length {
        /// The argument's name.
        name: &'static str,
        /// Elements given.
        got: usize,
        /// Elements the geometry needs.
        want: usize,
    },
    /// The sizes themselves are inconsistent (message quotes them).
    Geometry(String),
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::Length { name, got, want } => {
                write!(f, "kernel argument `{name}` has {got} elements, the geometry needs {want}")
            }
            KernelError::Geometry(msg) => write!(f, "kernel geometry: {msg}"),
        }
    }
}

impl std::error::Error for KernelError {}
