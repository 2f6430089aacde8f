//! Integration tests of medseg-infer (one binary, ripgrep style).

/// Streaming sliding window vs a naive full-buffer blend; its argmax and liveness.
mod sliding_window;

/// NIfTI label-map reading and folder evaluation (geometry checks, error texts).
mod eval;

/// Connected components, largest/small-component clean-up and class statistics vs scipy/numpy.
mod components;

/// The prediction preview: world-direction panels and the real CT.
mod preview;

/// One-file model packages: export from a run folder with a generation and state, read back.
mod package;

/// MONAI bundles: the zoo's BTCV configs, refused configs, a tiny bundle vs MONAI's bundle run.
mod bundle;
