//! medseg-pretrain: self-supervised pretraining of the Swin UNETR encoder (Tang et al., CVPR 2022,
//! arXiv:2111.14791), a port of Project-MONAI/research-contributions `SwinUNETR/Pretrain`
//! (swin-reference §3): the pretext transforms ([`ops`]), the SSL losses ([`loss`]), unlabelled
//! data ([`data`]), AdamW / SGD ([`optim`]) and the resumable loop ([`pretrainer`]) that trains
//! medseg-models' `SslHead`. Fine-tuning starts from its checkpoint with
//! `train --init-from` (medseg-models `loader::load_encoder`). See the README and
//! `docs/pretraining.md`.
pub mod config;
pub mod data;
pub mod error;
pub mod features;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod output;
pub mod pretrainer;

pub use config::{PretrainConfig, PretrainPlan};
pub use error::{Error, Result};
pub use features::{foreground_cells, participation_ratio};
pub use loss::{LossWeights, SslLoss, contrastive_loss, cross_entropy, l1_loss, ssl_loss};
pub use ops::{CutoutConfig, Draws, Replay, RngDraws, aug_rand, patch_rand_drop, rot_rand, rot90};
pub use pretrainer::{Pretrainer, RunOptions, RunOutcome, Validation, ssl_step};
