//! The crate's error type: every variant names the file (or series) and the problem.
use std::path::PathBuf;

/// Errors of DICOM reading and DICOM SEG writing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input path could not be read (missing, permission, I/O).
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `.zip` archive could not be opened or one of its entries read.
    #[error("{path}: not a readable zip archive: {message}")]
    Zip {
        /// The archive.
        path: PathBuf,
        /// What the zip reader said.
        message: String,
    },
    /// A file that starts like DICOM (preamble + `DICM`) but cannot be parsed.
    #[error("{file}: not a valid DICOM file: {message}")]
    Parse {
        /// The file (or `archive.zip!entry`).
        file: String,
        /// What dicom-rs said.
        message: String,
    },
    /// A required attribute is missing or malformed.
    #[error("{file}: attribute {attribute}: {message}")]
    Attribute {
        /// The file (or `archive.zip!entry`).
        file: String,
        /// The DICOM keyword, e.g. `ImagePositionPatient`.
        attribute: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The pixel data is in a transfer syntax this build cannot decode.
    #[error(
        "{file}: transfer syntax {name} ({uid}) is not supported; decompress the series first \
         (e.g. `gdcmconv --raw` or `dcmdjpls`)"
    )]
    UnsupportedTransferSyntax {
        /// The file.
        file: String,
        /// The transfer syntax UID.
        uid: String,
        /// Its name, or `unknown`.
        name: String,
    },
    /// The pixel data cannot be interpreted as a CT-like grey-scale image.
    #[error("{file}: unsupported image: {message}")]
    UnsupportedImage {
        /// The file.
        file: String,
        /// Why (colour, bit depth, …).
        message: String,
    },
    /// The header asks for more than the limits allow, or more than the data holds.
    #[error("{file}: {message}")]
    Limit {
        /// The file.
        file: String,
        /// Which limit and which values.
        message: String,
    },
    /// Decoding the pixel data failed.
    #[error("{file}: cannot decode pixel data: {message}")]
    Decode {
        /// The file.
        file: String,
        /// What the decoder said.
        message: String,
    },
    /// No DICOM image was found in the input.
    #[error(
        "{path}: no DICOM image found ({files} files looked at, {skipped} not DICOM or not images)"
    )]
    NoImages {
        /// The input.
        path: PathBuf,
        /// Files looked at.
        files: usize,
        /// Files skipped.
        skipped: usize,
    },
    /// The series could not be chosen (none fits the rule, or the requested UID is absent).
    #[error("{path}: {message}")]
    Selection {
        /// The input.
        path: PathBuf,
        /// Why, with the series that exist.
        message: String,
    },
    /// The slices of the chosen series do not form one regular grid.
    #[error("series {series}: {message}")]
    Geometry {
        /// The SeriesInstanceUID.
        series: String,
        /// Which check failed (gantry tilt, unequal spacing, missing slice, …) and where.
        message: String,
    },
    /// A DICOM SEG cannot be built from these inputs.
    #[error("DICOM SEG: {0}")]
    Seg(String),
    /// Writing an output file failed.
    #[error("{path}: cannot write: {message}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
