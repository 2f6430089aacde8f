//! Integration tests of medseg-train (one binary, ripgrep style).

/// MONAI / PyTorch goldens: losses, sliding window, schedule, AdamW, clipping.
mod golden;

/// Gradient checkpointing (Swin blocks and CNN encoders) trains identically to the plain model.
mod checkpointing;

/// The one-node DiceCE loss against its composed reference and finite differences.
mod fused_loss;

/// The training loop: resume reproduces the loss sequence, NaN detection, run outputs.
mod train_loop;

/// bf16 mixed precision through the trainer vs f32.
mod mixed_precision;

/// Data parallel with the in-process reducer: two ranks vs one rank on the union batch.
mod data_parallel;

/// Fault tests through the `train` binary: killed saves, concurrent runs, locks, modes.
mod faults;

/// Fine-tuning on the shared real CT (skipped without `../shared/data`).
mod real_data;

/// A tiny MONAI SwinUNETR config (fs 12, 1 → 3 channels) as a `[model]` table would give it.
fn tiny_swin_unetr() -> medseg_train::ModelConfig {
    let text = r#"
        kind = "swin_unetr"
        in_channels = 1
        out_channels = 3
        feature_size = 12
        depths = [2, 2, 2, 2]
        num_heads = [3, 6, 12, 24]
    "#;
    toml::from_str(text).expect("model config")
}
