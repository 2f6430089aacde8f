//! What the CUDA launches of every op family share (feature `cuda`); each family's launches live
//! in its own `cuda.rs`.
pub(crate) mod launch;
