//! The crate's single error type: every variant quotes the offending values.
use std::path::PathBuf;

/// Everything that can go wrong in `medseg-pretrain`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle::Error),
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] medseg_data::Error),
    /// The optimiser (medseg-train's AdamW) failed.
    #[error(transparent)]
    Train(#[from] medseg_train::Error),
    /// Run infrastructure failed: the run folder or its lock, a checkpoint, an output file.
    #[error(transparent)]
    Run(#[from] medseg_run::Error),
    /// An operating-system I/O error on a named path.
    #[error("{path}: {source}")]
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
    #[error("{path}: {reason}")]
    ConfigParse {
        /// The file (or `<preset NAME>`).
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A datalist or data folder is unusable.
    #[error("{path}: {reason}")]
    Datalist {
        /// The json file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An augmentation or loss got inputs of the wrong shape or settings.
    #[error("{0}")]
    InvalidArgument(String),
    /// The loss became NaN or infinite.
    #[error(
        "non-finite loss {value} at step {step} (rotation {rot}, contrastive {contrast}, reconstruction {recon})"
    )]
    NonFiniteLoss {
        /// Total loss.
        value: f64,
        /// The optimiser step being computed (1-based).
        step: u64,
        /// Rotation term.
        rot: f64,
        /// Contrastive term.
        contrast: f64,
        /// Reconstruction term.
        recon: f64,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
