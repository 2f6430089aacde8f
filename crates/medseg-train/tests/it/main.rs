//! Integration tests of medseg-train (one binary, ripgrep style).

/// MONAI / PyTorch goldens: losses, sliding window, schedule, AdamW, clipping.
mod golden;
