//! Atomic files: every output is written to a temporary file of our own naming
//! (`.medseg-tmp-<pid>-<n>-<name>`) in the target's folder, synced, renamed over the target, and
//! the folder is synced. Files are created with mode `0666` and directories with `0777`, both
//! minus the process umask (no `0600` temporaries). Temporaries that a killed process left behind
//! are removed by [`clean_stale_temps`] when the next run takes the folder's lock.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Name prefix of every temporary file or folder this crate creates.
pub const TMP_PREFIX: &str = ".medseg-tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path in `dir` for a file that will become `name`.
pub fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TMP_PREFIX}{}-{n}-{name}", std::process::id()))
}

/// The folder of `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, `fsync`, rename,
/// `fsync` of the folder. On error the temporary file is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().map_or("file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = temp_path(dir, &name);
    let res = write_new_file(&tmp, bytes, &mut None)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)))
        .and_then(|()| sync_dir(dir));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Creates `path` (which must not exist), writes `bytes` and syncs it. `budget`, when set, is
/// the number of bytes the "disk" still accepts: writing more fails with `StorageFull` after
/// writing what fits (the tests' full-disk writer).
pub(crate) fn write_new_file(
    path: &Path,
    bytes: &[u8],
    budget: &mut Option<u64>,
) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    match budget {
        Some(left) if (*left as usize) < bytes.len() => {
            f.write_all(&bytes[..*left as usize])?;
            *left = 0;
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ));
        }
        Some(left) => *left -= bytes.len() as u64,
        None => {}
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// `fsync` of a folder, so that renames and new entries in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Removes every `.medseg-tmp-*` file or folder in `dir` and, down to `depth` more levels, in
/// its sub-folders; returns what was removed. Call it only while holding the folder's
/// [`crate::folder::RunLock`]: another live writer's temporaries would go too.
pub fn clean_stale_temps(dir: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(|e| Error::io(&path, e))?.is_dir();
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let r =
                if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            r.map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        } else if is_dir && depth > 0 {
            removed.extend(clean_stale_temps(&path, depth - 1)?);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("sub/a.txt");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("sub"))
            .expect("dir")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn a_full_disk_fails_after_the_budget_and_keeps_what_fit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("f");
        let e = write_new_file(&p, &[7u8; 100], &mut Some(30)).expect_err("full");
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(std::fs::metadata(&p).expect("m").len(), 30);
    }

    #[test]
    fn stale_temporaries_are_removed_at_any_depth_up_to_the_limit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path();
        std::fs::create_dir_all(d.join("checkpoints/.medseg-tmp-9-0-step-000001")).expect("gen");
        std::fs::write(d.join(".medseg-tmp-1-0-metrics.csv"), b"").expect("w");
        std::fs::write(d.join("checkpoints/.medseg-tmp-1-1-best.safetensors"), b"x").expect("w");
        std::fs::write(d.join("keep.txt"), b"k").expect("w");
        let removed = clean_stale_temps(d, 1).expect("clean");
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(d.join("keep.txt").exists() && d.join("checkpoints").is_dir());
        assert_eq!(std::fs::read_dir(d.join("checkpoints")).expect("dir").count(), 0);
    }
}
