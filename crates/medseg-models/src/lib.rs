//! medseg-models: Swin UNETR (v1 and v2), Swin SMT and the SSL head of the Swin UNETR
//! pretraining code, at numerical parity with MONAI 1.6.1, plus checkpoint loading and saving.
//!
//! Every module is built from a `candle_nn::VarBuilder` whose keys are byte-identical to MONAI
//! `state_dict()` keys; tensors are PyTorch-layout (`[B, C, D, H, W]`, Linear `[out, in]`,
//! ConvTranspose `[in, out, k, k, k]`). Models do no file I/O beyond [`loader`].
//!
//! Imports between the modules run one way (checked by `tests/it/layering.rs`):
//! [`config`] → [`layers`] → {[`unetr_blocks`], [`checkpoint`], [`soft_moe`]} →
//! [`swin_transformer`] → {[`swin_unetr`], [`ssl_head`]} → {[`param_count`], [`loader`]}.
pub mod checkpoint;
pub mod config;
pub mod layers;
pub mod loader;
pub mod param_count;
pub mod soft_moe;
pub mod ssl_head;
pub mod swin_transformer;
pub mod swin_unetr;
pub mod unetr_blocks;

pub use config::{MergeOrder, MoeKind, MoePadding, PerDim, SwinUnetrConfig};
pub use loader::{
    LoadReport, frozen_var_builder, load_file, load_into_varmap, rename, save_safetensors,
    zero_init_var_builder,
};
pub use param_count::{count_parameters, parameter_shapes};
pub use soft_moe::{DynamicSlotsSoftMoe, Ffn, SoftMoe};
pub use ssl_head::{SslHead, SslHeadConfig};
pub use swin_transformer::SwinTransformer;
pub use swin_unetr::SwinUnetr;
