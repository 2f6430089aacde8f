//! The crate's single error type: every variant names the offending file, value or setting.
use std::path::PathBuf;

/// Everything that can go wrong in `medseg-infer`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch inside candle, device error).
    #[error(transparent)]
    Candle(#[from] candle::Error),
    /// Reading, preprocessing or writing a volume failed (the message names the file).
    #[error(transparent)]
    Data(#[from] medseg_data::Error),
    /// Scoring failed.
    #[error(transparent)]
    Metrics(#[from] medseg_metrics::Error),
    /// Reading a DICOM series or writing a DICOM SEG failed (the message names the file).
    #[error(transparent)]
    Dicom(#[from] medseg_dicom::Error),
    /// Drawing or writing a preview picture failed.
    #[error(transparent)]
    Picture(#[from] medseg_run::Error),
    /// Reading or loading model weights failed.
    #[error(transparent)]
    Weights(#[from] medseg_models::loader::Error),
    /// An operating-system I/O error on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration value or a combination of values is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// A TOML file could not be parsed (unknown field, wrong type, syntax).
    #[error("{}: {reason}", path.display())]
    ConfigParse {
        /// The file (or `<preset>` for an embedded one).
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// Tensor shapes disagree with what the function needs.
    #[error("shape mismatch in {what}: expected {expected}, got {got:?}")]
    Shape {
        /// The function and argument.
        what: String,
        /// The rule.
        expected: String,
        /// The actual dims.
        got: Vec<usize>,
    },
    /// A network output (blended sliding-window score) is NaN or infinite.
    #[error(
        "the network produced a non-finite value ({value}) in channel {channel} at voxel {voxel:?} \
         of batch item {batch} (broken weights?)"
    )]
    NonFiniteOutput {
        /// The value (NaN or ±inf).
        value: f32,
        /// Batch item.
        batch: usize,
        /// Output channel.
        channel: usize,
        /// `[d, h, w]` on the input grid.
        voxel: [usize; 3],
    },
    /// The model (run folder, weights file, config) cannot be used as given.
    #[error("model {}: {reason}", path.display())]
    Model {
        /// The run folder or weights file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model package's metadata key is missing, malformed or of an unknown version.
    #[error("model package {}: metadata key {key}: {reason}", path.display())]
    Package {
        /// The package file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A MONAI bundle's configuration cannot be used as given.
    #[error("MONAI bundle config {}: {key}: {reason}", file.display())]
    Bundle {
        /// The config file (`configs/inference.json`, `configs/metadata.json`).
        file: PathBuf,
        /// The config id (`network_def`, `preprocessing::transforms::3`, …).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An input or output path of `predict` is unusable (missing, wrong kind, would overwrite an
    /// input).
    #[error("{0}")]
    Path(String),
    /// A volume could not be read as an evaluation label map.
    #[error("cannot read {what} {}: {reason}", path.display())]
    LabelMap {
        /// `prediction` or `ground truth`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's message.
        reason: String,
    },
    /// A ground-truth file has no prediction of the same name.
    #[error("no prediction {} for ground truth {}", pred.display(), gt.display())]
    MissingPrediction {
        /// The ground-truth file.
        gt: PathBuf,
        /// Where its prediction was looked for.
        pred: PathBuf,
    },
    /// A folder holds no `.nii` / `.nii.gz` files.
    #[error("no .nii or .nii.gz files in {}", path.display())]
    NoCases {
        /// The folder.
        path: PathBuf,
    },
    /// Prediction and ground truth do not lie on the same world grid.
    #[error("{0}")]
    AffineMismatch(Box<AffineMismatch>),
}

/// The two affines of an [`Error::AffineMismatch`].
#[derive(Debug, thiserror::Error)]
#[error(
    "affine mismatch: prediction {} has\n{pred}\nground truth {} has\n{gt}\n(largest \
     difference {diff:.3e} > tolerance {tol:.0e}; pass --ignore-affine to score them anyway)",
    pred_path.display(),
    gt_path.display()
)]
pub struct AffineMismatch {
    /// The prediction file.
    pub pred_path: PathBuf,
    /// The ground-truth file.
    pub gt_path: PathBuf,
    /// The prediction's affine, one row per line.
    pub pred: String,
    /// The ground truth's affine, one row per line.
    pub gt: String,
    /// The largest absolute element difference.
    pub diff: f64,
    /// The tolerance it exceeds.
    pub tol: f64,
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
