//! Integration tests of medseg-data (one binary; see the modules below).

/// Paths and golden-file helpers.
mod common;
/// NIfTI reading/writing against nibabel goldens, the shared CT cases and corrupt inputs.
mod nifti;
/// Geometric and intensity functions against MONAI goldens.
mod spatial;
