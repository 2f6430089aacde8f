//! Soft mixtures of experts as the FFN of a Swin block (Swin SMT, Płotka et al. MICCAI 2024):
//! [`Ffn`] picks the MONAI MLP or a Soft MoE per stage; [`DynamicSlotsSoftMoe`] is Swin SMT's
//! (with the official or the masked padding, [`crate::config::MoePadding`]), [`SoftMoe`] the
//! fixed-slot variant.
//!
//! `moe.rs` holds the modules and their composed path; `cuda.rs` (feature `cuda`) the fused
//! dispatch/combine, which `moe.rs` calls and which imports nothing back. Third in the crate's
//! import order: this module imports only [`crate::config`] and [`crate::layers`].
#[cfg(feature = "cuda")]
mod cuda;
mod moe;

pub use moe::{DynamicSlotsSoftMoe, FeedForward, Ffn, RmsNorm, SoftMoe};
