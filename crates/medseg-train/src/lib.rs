//! medseg-train: losses (MONAI `DiceCELoss`), AdamW with parameter groups, the research warm-up +
//! cosine schedule, MONAI sliding-window inference, the training loop, checkpoints and per-run
//! outputs. See the crate README and `docs/training.md`.
pub mod error;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod sliding_window;

pub use error::{Error, Result};
pub use loss::{DiceCeConfig, LossKind, cross_entropy, dice_ce_loss, dice_loss};
pub use optim::{AdamW, AdamWConfig, Grads};
pub use schedule::{ScheduleConfig, ScheduleKind, ScheduleUnit};
pub use sliding_window::{BlendMode, SlidingWindowConfig, sliding_window_inference};
