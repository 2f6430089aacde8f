//! medseg-train: losses (MONAI `DiceCELoss`), AdamW with parameter groups, the research warm-up +
//! cosine schedule, the training loop (validating with medseg-infer's sliding window), checkpoints and per-run
//! outputs. See the crate README and `docs/training.md`.
pub mod checkpoint;
pub mod cli;
pub mod config;
#[cfg(feature = "nccl")]
pub mod cuda_nccl;
pub mod distributed;
pub mod error;
pub mod loss;
pub mod optim;
pub mod output;
pub mod precision;
pub mod schedule;
pub mod trainer;

/// The model boundary lives in medseg-infer; re-exported under its old path.
pub use medseg_infer::model;
/// Sliding-window inference lives in medseg-infer; re-exported under its old path.
pub use medseg_infer::sliding_window;

pub use config::{TrainConfig, TrainPlan};
pub use error::{Error, Result};
pub use loss::{DiceCeConfig, LossKind, cross_entropy, dice_ce_loss, dice_loss};
pub use model::{ModelConfig, SegModel, TinyUnet, TinyUnetConfig};
pub use optim::{AdamW, AdamWConfig, Grads};
pub use schedule::{ScheduleConfig, ScheduleKind, ScheduleUnit};
pub use sliding_window::{
    BlendMode, BlendedSlice, SlidingWindowConfig, sliding_window_argmax, sliding_window_inference,
    sliding_window_stream,
};
pub use trainer::{RunOptions, RunOutcome, Trainer, check_data, device_from_str};

/// Seeded initialisation lives in medseg-run (shared with pretraining); re-exported for callers
/// of `medseg_train::seeded`.
pub use medseg_run::seeded;
