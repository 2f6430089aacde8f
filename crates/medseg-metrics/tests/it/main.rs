//! Integration tests of medseg-metrics (one test binary, ripgrep style).

/// The accumulating API, channel input, reports and groups.
mod api;
/// Shared helpers: golden loading and float comparison with NaN/inf semantics.
mod common;
/// Fast EDT path against a brute-force oracle on random shapes.
mod edt;
/// Bad input is a clear `Err`.
mod errors;
/// Parity with MONAI 1.6.1 goldens from `tools/golden/metrics_golden.py`.
mod golden;
