//! Integration tests of medseg-train (one binary, ripgrep style).

/// MONAI / PyTorch goldens: losses, sliding window, schedule, AdamW, clipping.
mod golden;

/// The training loop: resume reproduces the loss sequence, NaN detection, run outputs.
mod train_loop;

/// bf16 mixed precision through the trainer vs f32.
mod mixed_precision;

/// Data parallel with the in-process reducer: two ranks vs one rank on the union batch.
mod data_parallel;

/// Fine-tuning on the shared real CT (skipped without `../shared/data`).
mod real_data;
