//! Integration tests of the `medseg` binary.

// `medseg forward`: config + weights + input → output equals the in-process model.
mod forward;
