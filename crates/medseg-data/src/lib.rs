//! medseg-data: NIfTI I/O with exact geometry, MONAI-parity transforms, datasets, a synthetic CT
//! phantom and a multi-threaded loader. See the crate README and `docs/data.md`.
//!
//! Axis convention: a [`Volume`] stores voxels in C order over the NIfTI index axes `(i, j, k)`,
//! so a volume of NIfTI shape `(X, Y, Z)` becomes the tensor `[C, X, Y, Z]` = `[C, D, H, W]`.
pub mod affine;
pub mod error;
pub mod intensity;
pub mod nifti_io;
pub mod spatial;
pub mod transforms;
pub mod volume;

pub use affine::Affine;
pub use error::{Error, Result};
pub use nifti_io::{
    NiftiInfo, WriteOptions, read_info, read_nifti, read_volume, write_volume, write_volume_with,
};
pub use volume::{Dtype, Volume, Voxel};
