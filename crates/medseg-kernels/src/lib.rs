//! medseg-kernels: the project's own CUDA kernels (`kernels/*.cu`), built to PTX, and the argument
//! contract of each.
//!
//! With the `cuda` feature, `build.rs` compiles every `kernels/*.cu` to PTX with nvcc and this crate
//! embeds the PTX text ([`ptx`]); medseg-ops loads it into candle's CUDA device and launches the
//! kernels inside its custom ops. Without the feature nothing here needs nvcc or a GPU.
//!
//! One module per `.cu` file states its argument contract: the geometry (sizes, constants), the
//! length of every buffer, the checks. medseg-ops implements each contract twice, side by side in
//! one candle custom op: a fast CPU kernel (`cpu_fwd`) and the launch of the `.cu` kernel
//! (`cuda_fwd`); its composed `*_reference` is the test oracle of both.
mod attention;
mod im2col;

pub use attention::AttentionGeom;
pub use im2col::Im2colGeom;

#[cfg(feature = "cuda")]
pub mod ptx;

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

/// `Err(Length)` unless `got == want`.
fn check_len(name: &'static str, got: usize, want: usize) -> Result<(), KernelError> {
    if got != want {
        return Err(KernelError::Length { name, got, want });
    }
    Ok(())
}
