//! Integration tests of medseg-run (one binary, ripgrep style).

/// Checkpoint generations: interrupted saves, a full disk (injected and on a real tmpfs),
/// the old layout, `inference_weights`.
mod checkpoint;
