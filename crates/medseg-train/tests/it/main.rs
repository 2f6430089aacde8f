//! Integration tests of medseg-train (one binary, ripgrep style).

/// MONAI / PyTorch goldens: losses, sliding window, schedule, AdamW, clipping.
mod golden;

/// The training loop: resume reproduces the loss sequence, NaN detection, run outputs.
mod train_loop;

/// Fine-tuning on the shared real CT (skipped without `../shared/data`).
mod real_data;
