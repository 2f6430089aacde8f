//! Differentiable normalisations: `instance_norm3d`, `layer_norm` (last dim) and the fused
//! `instance_norm_leaky_relu`.
//!
//! `op.rs` holds the public functions and their composed `*_reference` twins (also the path on
//! devices other than the CPU); `cpu.rs` the CPU kernels with analytic backward.
mod cpu;
mod op;

pub use op::{
    instance_norm_add_norm_leaky_relu, instance_norm_add_norm_leaky_relu_reference,
    instance_norm_leaky_relu, instance_norm_leaky_relu_reference, instance_norm3d,
    instance_norm3d_reference, layer_norm, layer_norm_reference,
};
