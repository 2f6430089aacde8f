//! Integration tests of medseg-data (one binary; see the modules below).

/// The pre-flight data check.
mod check;
/// Paths and golden-file helpers.
mod common;
/// Datasets, phantom, loader, collate.
mod data;
/// Mutation fuzzing of the NIfTI reader.
mod fuzz;
/// NIfTI reading/writing against nibabel goldens, the shared CT cases and corrupt inputs.
mod nifti;
/// MSD / TotalSegmentator preparation on local archives.
mod prepare;
/// Random transforms: distributions and image/label alignment.
mod random;
/// Geometric and intensity functions against MONAI goldens.
mod spatial;
