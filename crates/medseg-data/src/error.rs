//! The crate's single error type: every variant names the file or the offending values.
use std::path::PathBuf;

/// Everything that can go wrong in `medseg-data`. Messages are lowercase and quote the values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a readable NIfTI-1 volume (bad magic, truncated, bad dims, unsupported type).
    #[error("{path}: invalid nifti: {reason}")]
    Nifti {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the offending values.
        reason: String,
    },
    /// Voxel values cannot be represented in the requested type (NaN, out of range, fractional labels).
    #[error("{path}: {reason}")]
    BadVoxels {
        /// The file (or a description of the in-memory volume).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Image and label (or two volumes that must agree) have different shapes or affines.
    #[error("{path}: geometry mismatch: {reason}")]
    GeometryMismatch {
        /// The label (or second) file.
        path: PathBuf,
        /// Expected vs got.
        reason: String,
    },
    /// A label value is above the number of classes.
    #[error("{path}: label value {value} is out of range (num_classes {num_classes})")]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// The largest offending value.
        value: u32,
        /// The class count the value was checked against.
        num_classes: u32,
    },
    /// A datalist or dataset layout is malformed or points at missing files.
    #[error("{path}: {reason}")]
    Dataset {
        /// The datalist, directory or missing file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A transform or loader was given parameters it cannot work with.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A transform cannot be applied to this sample (e.g. no voxel to sample a crop centre from).
    #[error("{path}: {reason}")]
    Transform {
        /// The sample's source file (empty for in-memory volumes).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// JSON parse or serialisation error in a named file.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// Download, checksum or archive error during `prepare`.
    #[error("{path}: {reason}")]
    Prepare {
        /// The archive or target.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A volume (read from a file, or allocated from a config size such as a crop roi) exceeds the
    /// size limits of [`crate::limits::Limits`].
    #[error(
        "{path}: {what} of shape {shape:?} ({voxels} voxels, {bytes} bytes) exceeds the limit of \
         {max_voxels} voxels / {max_bytes} bytes per volume (raise it with the environment \
         variables MEDSEG_MAX_VOXELS / MEDSEG_MAX_BYTES)"
    )]
    TooLarge {
        /// The file (empty for an in-memory volume without a source file).
        path: PathBuf,
        /// What was to be allocated ("volume", "crop", "resampled grid", …).
        what: &'static str,
        /// Its shape.
        shape: [usize; 3],
        /// Its voxel count (saturated at `u64::MAX`).
        voxels: u64,
        /// Its size in bytes (saturated at `u64::MAX`).
        bytes: u64,
        /// The voxel limit it exceeds.
        max_voxels: u64,
        /// The byte limit it exceeds.
        max_bytes: u64,
    },
    /// Memory for a checked allocation could not be reserved.
    #[error("{path}: out of memory: cannot reserve {bytes} bytes for the {what}")]
    OutOfMemory {
        /// The file the allocation is for (empty when none).
        path: PathBuf,
        /// What was to be allocated.
        what: &'static str,
        /// The size asked for (saturated at `u64::MAX`).
        bytes: u64,
    },
    /// The pre-flight check of a datalist found bad items (all of them are listed).
    #[error(
        "{path}: the pre-flight check found {} problem(s) in {checked} items:\n{}",
        problems.len(),
        problems.join("\n")
    )]
    CheckFailed {
        /// The datalist (or data folder).
        path: PathBuf,
        /// How many files were checked.
        checked: usize,
        /// One line per problem, each naming the file.
        problems: Vec<String>,
    },
    /// A candle error at the batch boundary.
    #[error(transparent)]
    Candle(#[from] candle::Error),
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// A [`Error::Nifti`] for `path`.
    pub fn nifti(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Nifti { path: path.into(), reason: reason.into() }
    }
    /// Fills in `path` of a [`Error::TooLarge`] / [`Error::OutOfMemory`] raised for an in-memory
    /// volume (empty path), so the error names the sample's file.
    pub fn at_path(self, p: &std::path::Path) -> Self {
        match self {
            Error::TooLarge { path, what, shape, voxels, bytes, max_voxels, max_bytes }
                if path.as_os_str().is_empty() =>
            {
                Error::TooLarge {
                    path: p.into(),
                    what,
                    shape,
                    voxels,
                    bytes,
                    max_voxels,
                    max_bytes,
                }
            }
            Error::OutOfMemory { path, what, bytes } if path.as_os_str().is_empty() => {
                Error::OutOfMemory { path: p.into(), what, bytes }
            }
            e => e,
        }
    }
    /// A [`Error::Dataset`] for `path`.
    pub fn dataset(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Dataset { path: path.into(), reason: reason.into() }
    }
}
