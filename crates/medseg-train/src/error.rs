//! The crate's single error type: every variant quotes the offending values.
use std::path::PathBuf;

/// Everything that can go wrong in `medseg-train`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch inside candle, device error).
    #[error(transparent)]
    Candle(#[from] candle::Error),
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] medseg_data::Error),
    /// Inference failed (sliding-window validation, a non-finite network output, a model or
    /// sliding-window config value).
    #[error(transparent)]
    Infer(Box<medseg_infer::Error>),
    /// Scoring failed.
    #[error(transparent)]
    Metrics(#[from] medseg_metrics::Error),
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
    /// The training loss became NaN or infinite.
    #[error(
        "non-finite loss {value} at optimiser step {step} (epoch {epoch}, micro-batch {micro})"
    )]
    NonFiniteLoss {
        /// The value (NaN or ±inf).
        value: f32,
        /// The optimiser step that was being computed (1-based).
        step: u64,
        /// The epoch.
        epoch: u64,
        /// The micro-batch index within the accumulation window.
        micro: usize,
    },
    /// A checkpoint is missing, unreadable or inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Data-parallel training failed: a bad world, the rendezvous file, a peer that left, the
    /// transport.
    #[error(transparent)]
    Dist(#[from] crate::distributed::DistError),
    /// Run infrastructure failed: the run folder or its lock, a checkpoint generation, an
    /// output file or picture.
    #[error(transparent)]
    Run(#[from] medseg_run::Error),
}

impl From<medseg_infer::Error> for Error {
    fn from(e: medseg_infer::Error) -> Self {
        Error::Infer(Box::new(e))
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
