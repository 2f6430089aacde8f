//! The crate's single error type: every variant names the offending values, file or class.
/// Errors returned by `medseg-metrics`; bad user data is always an `Err`, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A buffer's length does not match the product of its dims.
    #[error("{what} has {len} voxels but dims {dims:?} need {expected}")]
    BufferLen { what: &'static str, len: usize, dims: [usize; 3], expected: usize },
    /// Prediction and ground truth have different shapes.
    #[error("shape mismatch: prediction {pred:?} vs ground truth {gt:?}{context}")]
    ShapeMismatch { pred: [usize; 3], gt: [usize; 3], context: String },
    /// Prediction and ground truth have different voxel spacings.
    #[error("spacing mismatch: prediction {pred:?} vs ground truth {gt:?}{context}")]
    SpacingMismatch { pred: [f64; 3], gt: [f64; 3], context: String },
    /// A spacing component is zero, negative or not finite.
    #[error("invalid spacing {spacing:?}: every component must be finite and > 0")]
    InvalidSpacing { spacing: [f64; 3] },
    /// A volume has a zero-length axis.
    #[error("empty volume: dims {dims:?} contain a zero")]
    EmptyVolume { dims: [usize; 3] },
    /// The configured class count is unusable.
    #[error("num_classes must be in 1..=65536, got {num_classes}")]
    InvalidNumClasses { num_classes: usize },
    /// A label in the data is not below the configured class count.
    #[error("{what} contains label {label} at voxel {index}, but num_classes is {num_classes}")]
    LabelOutOfRange { what: &'static str, label: u32, index: usize, num_classes: usize },
    /// A probability/one-hot map contains NaN.
    #[error("{what} contains NaN in channel {channel} at voxel {index}")]
    NanProbability { what: &'static str, channel: usize, index: usize },
    /// A channel-first buffer does not hold `channels × voxels` values.
    #[error("{what} has {len} values but {channels} channels × {voxels} voxels were expected")]
    ChannelLen { what: &'static str, len: usize, channels: usize, voxels: usize },
    /// The NSD tolerances do not match the evaluated classes or are invalid.
    #[error("NSD tolerances: {0}")]
    InvalidTolerance(String),
    /// The percentile for HD is outside [0, 100].
    #[error("percentile must be in [0, 100], got {0}")]
    InvalidPercentile(f64),
    /// The probability threshold is not finite.
    #[error("threshold must be finite, got {0}")]
    InvalidThreshold(f32),
    /// A group table is inconsistent (unknown class name, duplicate, bad JSON shape).
    #[error("group table {table}: {message}")]
    Groups { table: String, message: String },
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
