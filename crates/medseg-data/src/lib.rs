//! medseg-data: NIfTI I/O with exact geometry, MONAI-parity transforms, datasets, a synthetic CT
//! phantom and a multi-threaded loader. See the crate README and `docs/data.md`.
//!
//! Axis convention: a [`Volume`] stores voxels in C order over the NIfTI index axes `(i, j, k)`,
//! so a volume of NIfTI shape `(X, Y, Z)` becomes the tensor `[C, X, Y, Z]` = `[C, D, H, W]`,
//! exactly what MONAI's `LoadImage` + `EnsureChannelFirst` produce.
//!
//! Tiers: pure functions ([`spatial`], [`intensity`]) → [`transforms::Transform`] structs →
//! [`transforms::Compose`]; datasets ([`dataset`], [`totalseg`], [`phantom`], [`prepare`]) → [`loader::Loader`]
//! → [`collate::Batch`] (the only place candle appears).
pub mod affine;
pub mod check;
pub mod collate;
pub mod dataset;
pub mod error;
pub mod intensity;
pub mod limits;
pub mod loader;
pub mod nifti_io;
pub mod phantom;
pub mod prepare;
pub mod spatial;
pub mod totalseg;
mod totalseg_classes;
pub mod transforms;

pub use affine::Affine;
pub use check::{CheckOptions, CheckReport, check_datalist, check_items};
pub use collate::{Batch, collate, collate_cpu, write_prediction};
pub use dataset::{DataItem, Datalist, Dataset, NiftiDataset};
pub use error::{Error, Result};
pub use limits::Limits;
pub use loader::{CacheMode, Loader, LoaderConfig, OrderMap, sample_rng};
pub use nifti_io::{
    NiftiInfo, WriteOptions, read_info, read_nifti, read_nifti_with, read_volume, write_volume,
    write_volume_with,
};
pub use transforms::{Compose, Meta, Sample, Transform};
pub use volume::{Dtype, Volume, Voxel};

pub mod volume;
