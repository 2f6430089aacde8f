//! MONAI bundles (`medseg predict --model BUNDLE_DIR`): a folder with `configs/inference.json`
//! (+ `configs/metadata.json`) and `models/model.pt`, read without Python.
//!
//! - [`config`]: the bundle config syntax (`@id` references, `$@id + '…'` path expressions).
//! - [`transforms`]: the MONAI transforms, inferer and postprocessing medseg implements, each
//!   argument checked.
//! - [`read`]: the folder → [`Bundle`] (network, merge order from `monai_version`, steps, window,
//!   default resampling, class names, weights file).
pub mod config;
pub mod read;
pub mod transforms;

pub use config::MonaiConfig;
pub use read::{Bundle, INFERENCE_JSON, METADATA_JSON, class_names, is_bundle, read_bundle};
