//! Run folders: [`create_fresh`] makes `<out>/<name>-<stamp>` exclusively (`create_dir`, so two
//! runs started in the same second get `…-<stamp>` and `…-<stamp>-2`), and [`RunLock`] keeps a
//! second process from writing into a folder that a live run holds.
//!
//! The lock is `<run>/.medseg.lock`, held with `flock(2)` for as long as the [`RunLock`] lives and
//! holding the holder's pid. The kernel drops the `flock` when its process dies (even by
//! `kill -9`), so a lock file whose `flock` is free is stale: its pid is reported and the lock is
//! taken over. Taking the lock also removes the `.medseg-tmp-*` files that a killed writer left.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::files::{clean_stale_temps, parent_dir};
use crate::{Error, Result};

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = ".medseg.lock";

/// Most suffixes [`create_fresh`] tries before giving up.
const MAX_SUFFIX: usize = 10_000;

/// Creates the folder `base`, or `base-2`, `base-3`, … when it exists, exclusively: no other
/// process gets the same folder. Parents are created as needed. Returns the folder made.
pub fn create_fresh(base: &Path) -> Result<PathBuf> {
    let parent = parent_dir(base);
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = base
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("run folder {} has no name", base.display())))?
        .to_string_lossy()
        .into_owned();
    for k in 1..=MAX_SUFFIX {
        let dir = if k == 1 { base.to_path_buf() } else { parent.join(format!("{name}-{k}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::Invalid(format!(
        "{} and {MAX_SUFFIX} suffixed variants all exist; choose another output folder",
        base.display()
    )))
}

/// Exclusive ownership of a run folder by this process (see the module doc).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    dir: PathBuf,
    stale_pid: Option<String>,
    cleaned: Vec<PathBuf>,
}

impl RunLock {
    /// Takes the lock of the existing folder `dir`. Fails with [`Error::Locked`] when a live
    /// process holds it; takes over a stale lock; removes stale `.medseg-tmp-*` temporaries in
    /// `dir` and its sub-folders.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut old = String::new();
        // An unreadable pid only degrades the message.
        let _ = file.read_to_string(&mut old);
        let old = old.trim().to_string();
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    lock: path,
                    pid: if old.is_empty() { "?".into() } else { old },
                });
            }
            Err(e) => return Err(Error::io(&path, e.into())),
        }
        let me = std::process::id().to_string();
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            f.write_all(format!("{me}\n").as_bytes())?;
            f.sync_all()
        };
        write(&mut file).map_err(|e| Error::io(&path, e))?;
        let stale_pid = (!old.is_empty() && old != me).then_some(old);
        // Run folders hold checkpoints/, overlays/, recon/, cache/… one level down.
        let cleaned = clean_stale_temps(dir, 1)?;
        Ok(RunLock { file, dir: dir.to_path_buf(), stale_pid, cleaned })
    }

    /// The folder held.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of a previous holder that died without releasing the lock, if any.
    pub fn stale_pid(&self) -> Option<&str> {
        self.stale_pid.as_deref()
    }

    /// The stale temporaries removed when the lock was taken.
    pub fn cleaned(&self) -> &[PathBuf] {
        &self.cleaned
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // An empty lock file marks a clean release; the flock goes with the file handle.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_folders_get_suffixes_instead_of_sharing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("runs/x-20260101-000000");
        let a = create_fresh(&base).expect("a");
        let b = create_fresh(&base).expect("b");
        let c = create_fresh(&base).expect("c");
        assert_eq!(a, base);
        assert_eq!(b, tmp.path().join("runs/x-20260101-000000-2"));
        assert_eq!(c, tmp.path().join("runs/x-20260101-000000-3"));
    }

    #[test]
    fn a_held_lock_refuses_a_second_holder_and_is_free_after_drop() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = RunLock::acquire(tmp.path()).expect("first");
        let e = RunLock::acquire(tmp.path()).expect_err("second");
        let msg = e.to_string();
        assert!(msg.contains(&std::process::id().to_string()) && msg.contains("in use"), "{msg}");
        drop(l);
        let again = RunLock::acquire(tmp.path()).expect("after drop");
        assert_eq!(again.stale_pid(), None, "a clean release is not stale");
    }

    #[test]
    fn a_dead_holders_lock_is_taken_over_and_its_temporaries_removed() {
        let tmp = tempfile::tempdir().expect("tmp");
        // A pid that existed and is gone: a child that has exited.
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id().to_string();
        child.wait().expect("wait");
        std::fs::write(tmp.path().join(LOCK_FILE), format!("{pid}\n")).expect("lock");
        std::fs::write(tmp.path().join(".medseg-tmp-1-0-metrics.csv"), b"").expect("tmp file");
        let l = RunLock::acquire(tmp.path()).expect("take over");
        assert_eq!(l.stale_pid(), Some(pid.as_str()));
        assert_eq!(l.cleaned().len(), 1);
        let text = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).expect("read");
        assert_eq!(text.trim(), std::process::id().to_string());
    }
}
