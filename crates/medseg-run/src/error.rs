//! The crate's single error type: every variant names the file or folder and quotes the values.
use std::path::PathBuf;

/// Everything that can go wrong in `medseg-run`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (moving weights to the CPU, casting on load).
    #[error(transparent)]
    Candle(#[from] candle::Error),
    /// An operating-system I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint is missing, unreadable, incomplete or inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or generation folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another live process holds the run folder.
    #[error(
        "run folder {dir} is in use by process {pid} (lock {lock}); wait for it to finish or stop \
         it first"
    )]
    Locked {
        /// The run folder.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid as written in the lock file (`?` when unreadable).
        pid: String,
    },
    /// A picture could not be drawn or encoded.
    #[error("{path}: png: {reason}")]
    Png {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A value handed to this crate is invalid (a malformed name, axis codes, a poisoned lock).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A checkpoint error on `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), reason: reason.into() }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
