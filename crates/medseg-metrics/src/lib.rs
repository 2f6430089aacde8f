//! Segmentation metrics with MONAI 1.6.1 semantics: Dice, IoU, Hausdorff distance (max and
//! percentile), average symmetric surface distance and normalised surface Dice, on 3-D label maps
//! (or binarised channel maps) with anisotropic spacing.
//!
//! Leaf crate: no candle, no GPU, no workspace dependencies. Volumes are plain C-order buffers of
//! dims `[n0, n1, n2]` with `spacing[k]` along axis `k`. Distances come from an exact linear-time
//! Euclidean distance transform ([`edt`]) on each class's bounding box; classes run in parallel
//! (rayon). See `docs/metrics.md` for the semantics and edge-case table.
//!
//! ```
//! use medseg_metrics::{MetricsConfig, SegmentationMetric};
//! let dims = [8, 8, 8];
//! let mut gt = vec![0u8; 512];
//! let mut pred = vec![0u8; 512];
//! gt[(3 * 8 + 3) * 8 + 3] = 1;
//! pred[(3 * 8 + 3) * 8 + 4] = 1;
//! let mut metric = SegmentationMetric::new(MetricsConfig::new(2, 1.0))?;
//! metric.update(&pred, &gt, dims, [1.0, 1.0, 2.0])?;
//! let report = metric.compute();
//! assert_eq!(report.cases[0].classes[0].dice, 0.0);
//! assert_eq!(report.cases[0].classes[0].surface.map(|s| s.hd), Some(2.0));
//! # Ok::<(), medseg_metrics::Error>(())
//! ```
mod case;
pub mod edt;
mod error;
mod groups;
mod metric;
mod reduce;
mod report;
mod surface;

pub use case::{ClassScores, Label};
pub use error::{Error, Result};
pub use groups::{Group, GroupRow, GroupTable, GroupedReport};
pub use metric::{Binarize, CaseScores, MetricsConfig, SegmentationMetric, argmax_channels};
pub use reduce::{Reduced, monai_mean, monai_mean_batch};
pub use report::{ClassSummary, Metric, Report};
pub use surface::SurfaceScores;
