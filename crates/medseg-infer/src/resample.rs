//! Back to the input's grid. Label maps go through medseg-data's `write_prediction` (nearest
//! neighbour in world space); probability maps use the same mapping, so their argmax is the label
//! map, and are published as one set: written into a temporary folder first, then moved into place,
//! so an error half-way (a full disk) leaves no partial set behind.
use std::path::Path;

use medseg_data::spatial::{Interp, Padding, resample_to_grid};
use medseg_data::transforms::Meta;
use medseg_data::{Affine, Volume, write_volume};

use crate::{Error, Result};

/// Writes `prob_<c>.nii.gz` per class into `dir` on the original grid (nearest neighbour, the
/// same mapping as the label map, so its argmax is the label map); outside the network's field of
/// view the background gets probability 1. `dir` is created when missing (its parent must exist).
pub fn write_probabilities(
    dir: &Path,
    probs: &[f32],
    k: usize,
    shape: [usize; 3],
    affine: Affine,
    meta: &Meta,
) -> Result<()> {
    write_probabilities_with(dir, probs, k, shape, affine, meta, &mut |p, v| {
        Ok(write_volume(p, v)?)
    })
}

/// [`write_probabilities`] with the file writer injected (tests make it fail half-way).
pub fn write_probabilities_with(
    dir: &Path,
    probs: &[f32],
    k: usize,
    shape: [usize; 3],
    affine: Affine,
    meta: &Meta,
    write: &mut dyn FnMut(&Path, &Volume<f32>) -> Result<()>,
) -> Result<()> {
    let vox: usize = shape.iter().product();
    let (orig_affine, orig_shape) = (&meta.original_affine, meta.original_shape);
    let inside = resample_to_grid(
        &Volume::filled(shape, 1u8, affine),
        orig_affine,
        orig_shape,
        Interp::Nearest,
        Padding::Zeros,
        |v| v as u8,
    )?;
    let staging = Staging::new(dir)?;
    for c in 0..k {
        let vol = Volume::new(probs[c * vox..(c + 1) * vox].to_vec(), shape, affine).ok_or_else(
            || Error::Shape {
                what: "probability map".into(),
                expected: format!("{k} × {vox} values"),
                got: vec![probs.len()],
            },
        )?;
        let mut out = resample_to_grid(
            &vol,
            orig_affine,
            orig_shape,
            Interp::Nearest,
            Padding::Zeros,
            |v| v as f32,
        )?;
        if c == 0 {
            for (o, &m) in out.data_mut().iter_mut().zip(inside.data()) {
                if m == 0 {
                    *o = 1.0;
                }
            }
        }
        write(&staging.path().join(format!("prob_{c:03}.nii.gz")), &out)?;
    }
    staging.publish()
}

/// Writes `prob_<c>.nii.gz` for every `c < k` into `dir` on the grid (`affine`, `shape`), the
/// values of channel `c` from `channel(c)` (one channel in memory at a time), published as one set
/// like [`write_probabilities`].
pub fn write_channels(
    dir: &Path,
    k: usize,
    shape: [usize; 3],
    affine: Affine,
    channel: impl Fn(usize) -> Result<Vec<f32>>,
) -> Result<()> {
    let staging = Staging::new(dir)?;
    for c in 0..k {
        let data = channel(c)?;
        let got = data.len();
        let vol = Volume::new(data, shape, affine).ok_or_else(|| Error::Shape {
            what: "probability map".into(),
            expected: format!("{} values", shape.iter().product::<usize>()),
            got: vec![got],
        })?;
        write_volume(staging.path().join(format!("prob_{c:03}.nii.gz")), &vol)?;
    }
    staging.publish()
}

/// A temporary folder next to its destination (same file system, so publishing only renames).
struct Staging {
    tmp: tempfile::TempDir,
    dest: std::path::PathBuf,
}

impl Staging {
    fn new(dest: &Path) -> Result<Self> {
        if dest.exists() && !dest.is_dir() {
            return Err(Error::Path(format!(
                "probabilities {} exists and is not a folder",
                dest.display()
            )));
        }
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        Ok(Staging { tmp, dest: dest.to_path_buf() })
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Moves the complete set into place: the folder itself when `dest` is missing or empty,
    /// else file by file (renames write no data, so a full disk cannot interrupt them).
    /// The staging folder is removed on every path out, including errors before this call.
    fn publish(self) -> Result<()> {
        let empty = match std::fs::read_dir(&self.dest) {
            Ok(mut it) => it.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::io(&self.dest, e)),
        };
        if empty && std::fs::rename(self.tmp.path(), &self.dest).is_ok() {
            return Ok(());
        }
        if !self.dest.is_dir() {
            std::fs::create_dir(&self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        let entries =
            std::fs::read_dir(self.tmp.path()).map_err(|e| Error::io(self.tmp.path(), e))?;
        for entry in entries {
            let from = entry.map_err(|e| Error::io(self.tmp.path(), e))?.path();
            let to = self.dest.join(from.file_name().unwrap_or_default());
            std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(shape: [usize; 3]) -> Meta {
        Meta { original_affine: Affine::identity(), original_shape: shape, ..Meta::default() }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_failing_half_way_leaves_no_partial_set() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("probs");
        let shape = [2, 3, 4];
        let k = 4;
        let probs = vec![0.25f32; k * 24];
        let mut calls = 0;
        let e = write_probabilities_with(
            &dir,
            &probs,
            k,
            shape,
            Affine::identity(),
            &meta(shape),
            &mut |p, v| {
                calls += 1;
                if calls == 3 {
                    return Err(Error::io(p, std::io::Error::other("No space left on device")));
                }
                Ok(write_volume(p, v)?)
            },
        )
        .expect_err("third file fails");
        assert!(e.to_string().contains("No space left"), "{e}");
        assert!(!dir.exists(), "a partial probability folder was published");
        assert!(listing(tmp.path()).is_empty(), "leftovers {:?}", listing(tmp.path()));

        // The same into an existing folder with an older set: it stays as it was.
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("prob_000.nii.gz"), b"old").expect("write");
        calls = 0;
        write_probabilities_with(
            &dir,
            &probs,
            k,
            shape,
            Affine::identity(),
            &meta(shape),
            &mut |p, v| {
                calls += 1;
                if calls == 2 {
                    return Err(Error::io(p, std::io::Error::other("No space left on device")));
                }
                Ok(write_volume(p, v)?)
            },
        )
        .expect_err("second file fails");
        assert_eq!(listing(&dir), ["prob_000.nii.gz"]);
        assert_eq!(std::fs::read(dir.join("prob_000.nii.gz")).expect("read"), b"old");
        assert_eq!(listing(tmp.path()), ["probs"]);

        // Success replaces the set and leaves nothing else.
        write_probabilities(&dir, &probs, k, shape, Affine::identity(), &meta(shape))
            .expect("write");
        assert_eq!(
            listing(&dir),
            ["prob_000.nii.gz", "prob_001.nii.gz", "prob_002.nii.gz", "prob_003.nii.gz"]
        );
        assert_eq!(listing(tmp.path()), ["probs"]);
    }
}
