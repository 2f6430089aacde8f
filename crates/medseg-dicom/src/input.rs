//! Where the DICOM files come from: a folder (walked recursively), a `.zip` of one, or one file.
//!
//! Every file is read whole into memory, bounded by [`Limits::max_file_bytes`] (the file's length
//! or the zip entry's declared size is checked before the buffer is allocated, and the read is
//! capped, so a lying zip header cannot make us allocate more). Files on disk can be read from
//! several threads at once; zip entries are read one at a time (the archive sits behind a lock).
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Size limits applied while reading; the defaults suit any clinical CT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file (or zip entry) read, in bytes (default 2 GiB).
    pub max_file_bytes: u64,
    /// Largest number of files looked at (default 200,000).
    pub max_files: usize,
    /// Largest `Rows` and `Columns` accepted (default 8192 each).
    pub max_rows_cols: u32,
    /// Largest number of voxels of the output volume (default 2^30: 4 GiB as f32).
    pub max_voxels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 2 << 30,
            max_files: 200_000,
            max_rows_cols: 8192,
            max_voxels: 1 << 30,
        }
    }
}

/// Where one file lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A file on disk.
    File(PathBuf),
    /// Entry `index` (named `name`) of the zip archive the [`Input`] was opened from.
    ZipEntry {
        /// The index in the archive.
        index: usize,
        /// The entry's name, for messages.
        name: String,
    },
}

/// An opened input: the list of candidate files and a way to read each.
pub struct Input {
    path: PathBuf,
    files: Vec<Origin>,
    archive: Option<Mutex<zip::ZipArchive<BufReader<File>>>>,
    limits: Limits,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input").field("path", &self.path).field("files", &self.files.len()).finish()
    }
}

impl Input {
    /// Opens a folder (recursively, every regular file whatever its extension), a `.zip`
    /// archive (by extension or by its `PK` signature) or a single file.
    pub fn open(path: impl AsRef<Path>, limits: Limits) -> Result<Input> {
        let path = path.as_ref().to_path_buf();
        let meta =
            std::fs::metadata(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(&path, &mut files, limits.max_files)?;
            files.sort();
            let files = files.into_iter().map(Origin::File).collect();
            return Ok(Input { path, files, archive: None, limits });
        }
        if is_zip(&path)? {
            let zip_err = |e: zip::result::ZipError| Error::Zip {
                path: path.clone(),
                message: e.to_string(),
            };
            let file =
                File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            let archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
            if archive.len() > limits.max_files {
                return Err(Error::Zip {
                    path,
                    message: format!(
                        "{} entries, more than the limit {}",
                        archive.len(),
                        limits.max_files
                    ),
                });
            }
            let mut files = Vec::new();
            for index in 0..archive.len() {
                let Some(Ok(name)) = archive.name_for_index(index) else { continue };
                if name.ends_with('/') {
                    continue;
                }
                files.push(Origin::ZipEntry { index, name: name.to_string() });
            }
            files.sort_by(|a, b| origin_name(a).cmp(origin_name(b)));
            return Ok(Input { path, files, archive: Some(Mutex::new(archive)), limits });
        }
        Ok(Input { path: path.clone(), files: vec![Origin::File(path)], archive: None, limits })
    }

    /// The path given to [`Input::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The candidate files, in a stable (sorted) order.
    pub fn files(&self) -> &[Origin] {
        &self.files
    }

    /// A printable name: the path, or `archive.zip!entry`.
    pub fn display(&self, origin: &Origin) -> String {
        match origin {
            Origin::File(p) => p.display().to_string(),
            Origin::ZipEntry { name, .. } => format!("{}!{name}", self.path.display()),
        }
    }

    /// Reads a whole file, refusing files above [`Limits::max_file_bytes`].
    pub fn read(&self, origin: &Origin) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(origin, &mut buf)?;
        Ok(buf)
    }

    /// Reads a whole file into `buf` (replacing its contents, reusing its allocation), refusing
    /// files above [`Limits::max_file_bytes`].
    pub fn read_into(&self, origin: &Origin, buf: &mut Vec<u8>) -> Result<()> {
        self.read_part(origin, buf, None).map(|_| ())
    }

    /// Reads the first `head` bytes of a file (all of it when shorter) into `buf`, refusing files
    /// above [`Limits::max_file_bytes`]; returns the whole file's length.
    pub fn read_head_into(&self, origin: &Origin, buf: &mut Vec<u8>, head: u64) -> Result<u64> {
        self.read_part(origin, buf, Some(head))
    }

    fn read_part(&self, origin: &Origin, buf: &mut Vec<u8>, head: Option<u64>) -> Result<u64> {
        let max = self.limits.max_file_bytes;
        let too_big = |file: String, len: u64| Error::Limit {
            file,
            message: format!("file of {len} bytes is larger than the limit of {max} bytes"),
        };
        buf.clear();
        match origin {
            Origin::File(p) => {
                let io = |source| Error::Io { path: p.clone(), source };
                let file = File::open(p).map_err(io)?;
                let len = file.metadata().map_err(io)?.len();
                if len > max {
                    return Err(too_big(p.display().to_string(), len));
                }
                match head {
                    Some(head) => read_head(file, len, head, buf).map_err(io)?,
                    None => read_capped(file, len, max, buf).map_err(io)?,
                }
                Ok(len)
            }
            Origin::ZipEntry { index, name } => {
                let shown = format!("{}!{name}", self.path.display());
                let path = self.path.clone();
                let zip_err = |message: String| Error::Zip { path: path.clone(), message };
                let archive = self
                    .archive
                    .as_ref()
                    .ok_or_else(|| zip_err(format!("entry {name} read without an open archive")))?;
                // A panic while another thread held the lock leaves the archive usable: every
                // read seeks to its entry first.
                let mut archive = archive.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let entry =
                    archive.by_index(*index).map_err(|e| zip_err(format!("{name}: {e}")))?;
                let len = entry.size();
                if len > max {
                    return Err(too_big(shown, len));
                }
                match head {
                    Some(head) => read_head(entry, len, head, buf),
                    None => read_capped(entry, len, max, buf),
                }
                .map_err(|e| zip_err(format!("{name}: {e}")))?;
                Ok(len)
            }
        }
    }
}

/// Reads at most `head` bytes into `buf`, reserving no more than the declared length.
fn read_head(
    reader: impl Read,
    declared: u64,
    head: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    buf.reserve(declared.min(head) as usize);
    reader.take(head).read_to_end(buf).map(|_| ())
}

/// Reads at most `max` bytes into `buf`, reserving no more than the declared length (itself
/// ≤ `max`).
fn read_capped(
    reader: impl Read,
    declared: u64,
    max: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    buf.reserve(declared.min(max) as usize);
    reader.take(max + 1).read_to_end(buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::other(format!("more than {max} bytes")));
    }
    Ok(())
}

fn origin_name(o: &Origin) -> &str {
    match o {
        Origin::File(p) => p.to_str().unwrap_or(""),
        Origin::ZipEntry { name, .. } => name,
    }
}

fn is_zip(path: &Path) -> Result<bool> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip")) {
        return Ok(true);
    }
    let mut magic = [0u8; 4];
    let mut f =
        File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let n = f.read(&mut magic).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    Ok(n == 4 && &magic == b"PK\x03\x04")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, max_files: usize) -> Result<()> {
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let kind = entry.file_type().map_err(io)?;
        let p = entry.path();
        if kind.is_dir() {
            walk(&p, out, max_files)?;
        } else if kind.is_file() || (kind.is_symlink() && p.is_file()) {
            if out.len() >= max_files {
                return Err(Error::Limit {
                    file: dir.display().to_string(),
                    message: format!("more than {max_files} files under the input folder"),
                });
            }
            out.push(p);
        }
    }
    Ok(())
}
