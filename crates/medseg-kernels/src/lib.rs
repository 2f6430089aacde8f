//! medseg-kernels: the project's own CUDA kernels (`kernels/*.cu`) and their CPU reference twins.
//!
//! With the `cuda` feature, `build.rs` compiles every `kernels/*.cu` to PTX with nvcc and this crate
//! embeds the PTX text ([`ptx`]); medseg-ops loads it into candle's CUDA device and launches the
//! kernels inside its custom ops. Without the feature nothing here needs nvcc or a GPU.
//!
//! Every kernel has a plain-Rust twin in [`reference`] that computes the same mathematics on f32
//! slices with the same argument conventions; the twins are what the CPU tests check (against
//! medseg-ops' composed paths and finite differences) and what the CUDA tests compare against.
pub mod reference;

#[cfg(feature = "cuda")]
pub mod ptx;
