//! Integration tests of medseg-models (one binary, see the house style §8).

// Swin SMT on CUDA against the CPU and the goldens (feature `cuda`; skipped without a device).
#[cfg(feature = "cuda")]
mod cuda;
// A batched forward equals the forwards of its items alone up to rounding (f32 and bf16).
mod batch_items;
// Shared fixtures: formula weights and inputs identical to tools/golden/models_golden.py.
mod common;
// Config parsing, presets and validation errors.
mod config;
// MONAI goldens: forward outputs and gradients for v1/v2, merge orders, Swin SMT.
mod golden;
// The modules of src/ import each other one way (config → layers → … → loader).
mod layering;
// The dynamic-slot Soft MoE against its goldens: official and masked padding, composed and
// fused paths, forward and gradients.
mod moe;
// Every parameter receives a gradient; gradient checkpointing equals the plain backward.
mod grad_coverage;
// The fused up-sampling + concatenation of the decoder blocks against its reference.
mod unetr_blocks;
// Loader: rename table end to end, save → load round trip, shape mismatch, report.
mod loader;
// SSL head: research key names and output shapes.
mod ssl_head;
// Parameter counts of the presets and the weight-name test against MONAI's key lists.
mod params;
