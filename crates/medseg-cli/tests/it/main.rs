//! Integration tests of the `medseg` binary.

// Shared fixtures: tiny run folder with random weights, synthetic CT on any grid.
mod util;

// `medseg check-data` and the pre-flight check of `medseg train`.
mod check_data;

// `medseg forward`: config + weights + input → output equals the in-process model.
mod forward;

// `medseg predict`: output grid and affine, orientation round trip, folder mode, TTA, errors.
mod predict;

// `medseg eval`: known Dice in md/csv/json, grouped summary, errors.
mod eval;

// `medseg train` / the `train` binary share `medseg_train::cli`.
mod train;

// `medseg prepare`: TotalSegmentator folder → labels + datalist line; MSD md5 errors.
mod prepare;

/// `medseg predict`'s statistics, preview, subset, clean-up and DICOM in / SEG out.
mod clinical;

// `medseg export` / `medseg info`: packages predict like their run, hostile packages, summaries.
mod package;
