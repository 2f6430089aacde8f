//! medseg-infer: everything a deployer needs to run a trained network, without the trainer.
//!
//! - [`source`]: where a model comes from (a run folder, a package, a MONAI [`bundle`], a weights
//!   file + config) and loading it.
//! - [`info`]: what a model source holds (`medseg info`), without reading its tensors.
//! - [`package`]: one-file model packages (`medseg export`): weights + metadata.
//! - [`config`]: the model, preprocessing and sliding-window settings of a run.
//! - [`model`]: the [`SegModel`] boundary and the model configs ([`ModelConfig`]).
//! - [`preprocess`]: the run's deterministic validation transforms onto the network grid, as
//!   MONAI [`steps`] whose grids are recorded; [`invert`] carries predictions back through them.
//! - [`sliding_window`]: MONAI sliding-window inference, streamed slice by slice.
//! - [`tta`], [`postprocess`], [`resample`]: flips, softmax/argmax, back to the input grid.
//! - [`predict`]: the [`Predictor`] that `medseg predict` calls once per case; [`jobs`] pairs
//!   inputs with outputs and refuses to overwrite an input.
//! - [`classes`]: class names, `--roi-subset` and the connected-component clean-up
//!   ([`components`]); [`statistics`] and [`preview`]: the per-class table and picture of a
//!   prediction.
//! - [`eval`]: prediction folder vs ground-truth folder through medseg-data's reader and
//!   medseg-metrics.
//!
//! See the crate README and `docs/inference.md`.
pub mod bundle;
pub mod classes;
pub mod components;
pub mod config;
pub mod error;
pub mod eval;
pub mod info;
pub mod invert;
pub mod jobs;
pub mod model;
pub mod package;
pub mod postprocess;
pub mod predict;
pub mod preprocess;
pub mod preview;
pub mod resample;
pub mod sliding_window;
pub mod source;
pub mod statistics;
pub mod steps;
pub mod tta;

pub use bundle::{Bundle, is_bundle, read_bundle};
pub use classes::{Cleanup, CleanupReport, class_names, labels_of};
pub use config::InferenceConfig;
pub use error::{Error, Result};
pub use eval::{AFFINE_TOLERANCE, EvalOptions, LabelMap, eval_folders, read_label_map};
pub use info::{ModelInfo, describe};
pub use invert::{Inverter, Resample};
pub use jobs::{InputKind, Job, OutputType, Request, plan, plan_jobs};
pub use model::{ModelConfig, SegModel, TinyUnet, TinyUnetConfig};
pub use package::{PackageInfo, export_package, read_package};
pub use predict::{Observer, PredictOptions, Predictor, Quiet};
pub use preprocess::{Pipeline, Preprocessing};
pub use sliding_window::{
    BlendMode, BlendedSlice, SlidingWindowConfig, sliding_window_argmax, sliding_window_inference,
    sliding_window_stream,
};
pub use source::{ConfigSource, LoadedModel, ModelSource, ResolvedModel, run_weights};
pub use steps::{GridStep, Step};
