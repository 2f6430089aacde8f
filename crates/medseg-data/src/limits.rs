//! Size limits for volumes read from files or allocated from user-supplied sizes (crop/roi sizes,
//! resampling grids), and checked allocation.
//!
//! No allocation whose size comes from a file header or a config is made before it has passed
//! [`Limits::check`] and been reserved with `try_reserve_exact`; a volume above the limits is an
//! [`Error::TooLarge`] naming the file and the shape, a failed reservation an
//! [`Error::OutOfMemory`]. Neither aborts the process.
//!
//! The defaults ([`Limits::DEFAULT_MAX_VOXELS`] = 2³⁰ voxels, e.g. 1024³ or 512 × 512 × 4096;
//! [`Limits::DEFAULT_MAX_BYTES`] = 8 GiB per volume in memory) hold every CT we know of. Binaries
//! raise them with the environment variables `MEDSEG_MAX_VOXELS` and `MEDSEG_MAX_BYTES` (plain
//! integers), which [`Limits::from_env`] reads; libraries pass a [`Limits`] explicitly through
//! [`crate::nifti_io::read_nifti_with`].
use std::path::Path;
use std::sync::OnceLock;

use crate::{Error, Result};

/// The largest volume medseg will read or allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most voxels in one volume.
    pub max_voxels: u64,
    /// Most bytes of one volume in memory (voxels × element size of the in-memory type; for files
    /// also voxels × the on-disk element size).
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_voxels: Self::DEFAULT_MAX_VOXELS, max_bytes: Self::DEFAULT_MAX_BYTES }
    }
}

/// Environment variable that raises (or lowers) [`Limits::max_voxels`].
pub const ENV_MAX_VOXELS: &str = "MEDSEG_MAX_VOXELS";
/// Environment variable that raises (or lowers) [`Limits::max_bytes`].
pub const ENV_MAX_BYTES: &str = "MEDSEG_MAX_BYTES";

impl Limits {
    /// Default voxel limit: 2³⁰ = 1,073,741,824.
    pub const DEFAULT_MAX_VOXELS: u64 = 1 << 30;
    /// Default byte limit: 8 GiB.
    pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

    /// The defaults, overridden by `MEDSEG_MAX_VOXELS` / `MEDSEG_MAX_BYTES` when set.
    ///
    /// A value that is not a positive integer is an [`Error::InvalidArgument`] naming the variable.
    pub fn from_env() -> Result<Limits> {
        let get = |name: &str, default: u64| -> Result<u64> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(s) => s.trim().parse::<u64>().ok().filter(|&v| v > 0).ok_or_else(|| {
                    Error::InvalidArgument(format!("{name}={s:?} is not a positive integer"))
                }),
            }
        };
        Ok(Limits {
            max_voxels: get(ENV_MAX_VOXELS, Self::DEFAULT_MAX_VOXELS)?,
            max_bytes: get(ENV_MAX_BYTES, Self::DEFAULT_MAX_BYTES)?,
        })
    }

    /// [`Limits::from_env`], read once per process (used where no [`Limits`] is passed: the
    /// plain readers and the transforms).
    pub fn process() -> Result<Limits> {
        static CELL: OnceLock<std::result::Result<Limits, String>> = OnceLock::new();
        CELL.get_or_init(|| Limits::from_env().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::InvalidArgument)
    }

    /// Checks a volume of `shape` with `elem_size`-byte elements; returns its voxel count.
    ///
    /// `what` says what the volume is ("volume", "crop", …) and `path` which file it comes from
    /// (empty for in-memory volumes; [`Error::at_path`] fills it in later).
    pub fn check(
        &self,
        path: &Path,
        what: &'static str,
        shape: [usize; 3],
        elem_size: usize,
    ) -> Result<usize> {
        let voxels = shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        let bytes = voxels.saturating_mul(elem_size as u64);
        if voxels > self.max_voxels || bytes > self.max_bytes {
            return Err(Error::TooLarge {
                path: path.into(),
                what,
                shape,
                voxels,
                bytes,
                max_voxels: self.max_voxels,
                max_bytes: self.max_bytes,
            });
        }
        // Fits in usize: bounded by the limits (u64) and, for the caller's allocation, by isize.
        usize::try_from(voxels).map_err(|_| Error::TooLarge {
            path: path.into(),
            what,
            shape,
            voxels,
            bytes,
            max_voxels: self.max_voxels,
            max_bytes: self.max_bytes,
        })
    }
}

/// A `Vec` of `n` copies of `fill`, reserved with `try_reserve_exact` (an [`Error::OutOfMemory`]
/// instead of an abort).
pub fn try_filled<T: Clone>(path: &Path, what: &'static str, n: usize, fill: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(path, what, n)?;
    v.resize(n, fill);
    Ok(v)
}

/// An empty `Vec` with room for `n` elements, reserved with `try_reserve_exact`.
pub fn try_with_capacity<T>(path: &Path, what: &'static str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        path: path.into(),
        what,
        bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
    })?;
    Ok(v)
}

/// Checks `shape` against the process limits ([`Limits::process`]) and allocates it filled with
/// `fill`: the allocation path of every volume whose size comes from a config or a header.
pub fn alloc_volume<T: Clone>(what: &'static str, shape: [usize; 3], fill: T) -> Result<Vec<T>> {
    let n = Limits::process()?.check(Path::new(""), what, shape, std::mem::size_of::<T>())?;
    try_filled(Path::new(""), what, n, fill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_counts_and_refuses() {
        let l = Limits { max_voxels: 1000, max_bytes: 2000 };
        assert_eq!(l.check(Path::new("a"), "volume", [10, 10, 10], 2).expect("fits"), 1000);
        assert!(matches!(
            l.check(Path::new("a"), "volume", [10, 10, 11], 1),
            Err(Error::TooLarge { voxels: 1100, .. })
        ));
        assert!(matches!(
            l.check(Path::new("a"), "volume", [10, 10, 10], 4),
            Err(Error::TooLarge { bytes: 4000, .. })
        ));
        // No overflow for absurd shapes.
        let big = [usize::MAX; 3];
        assert!(matches!(l.check(Path::new("a"), "volume", big, 8), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn failed_reservation_is_an_error() {
        let r = try_with_capacity::<u64>(Path::new("x"), "test", usize::MAX / 4);
        assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    }
}
