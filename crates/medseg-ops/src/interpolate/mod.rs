//! `interpolate3d`: trilinear (`align_corners=False`) and nearest resizing of `[N, C, D, H, W]`.
//!
//! `op.rs` holds the public function, the per-axis tap plan and the composed
//! `interpolate3d_reference` (also the path on devices other than the CPU); `cpu.rs` the CPU kernel.
mod cpu;
mod op;

pub use op::{InterpolationMode, Resize, interpolate3d, interpolate3d_reference};
