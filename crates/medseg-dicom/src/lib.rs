//! DICOM for medseg, on dicom-rs: read a CT series (a folder, a `.zip` of one, or a multi-frame
//! file) into a [`medseg_data::Volume`] in HU with the dcm2niix affine, list the series of an
//! input, and write a binary DICOM Segmentation of a label map on the source grid.
//!
//! Reading is two passes: [`Scan::open`] parses every header (up to PixelData) and groups the
//! images by SeriesInstanceUID; [`Scan::load`] checks the chosen series' geometry and decodes it.
pub mod codes;
pub mod convert;
pub mod error;
pub mod geometry;
pub mod input;
mod instance;
pub mod read;
pub mod seg;
pub mod series;

pub use convert::{Converted, convert, listing};
pub use error::{Error, Result};
pub use input::{Input, Limits, Origin};
pub use instance::PatientStudy;
pub use read::{
    DicomVolume, SeriesInfo, SliceRef, read_dicom, supported_transfer_syntaxes, to_i16_exact,
};
pub use seg::{SegOptions, SegWritten, write_seg};
pub use series::{Scan, SeriesSummary};
