//! `prepare`: fetch (with checksum) and unpack MSD tasks, convert a TotalSegmentator download.
//!
//! Downloads shell out to `curl` (its progress bar on stderr) so this library links no TLS stack;
//! the md5 check shows an `indicatif` progress bar. Unpacking uses the `tar` / `zip` crates, which
//! refuse entries that escape the destination. Everything is resumable: an existing, verified
//! archive or unpacked task is reused.
use std::io::Read;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::{Error, Result};

/// An MSD task as published for MONAI (`monai.apps.DecathlonDataset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsdTask {
    /// Directory name, e.g. `Task09_Spleen`.
    pub name: &'static str,
    /// Public URL of the `.tar`.
    pub url: &'static str,
    /// md5 of the `.tar` (MONAI's values).
    pub md5: &'static str,
}

/// The ten MSD tasks with MONAI's URLs and md5 sums.
pub const MSD_TASKS: [MsdTask; 10] = [
    MsdTask {
        name: "Task01_BrainTumour",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar",
        md5: "240a19d752f0d9e9101544901065d872",
    },
    MsdTask {
        name: "Task02_Heart",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task02_Heart.tar",
        md5: "06ee59366e1e5124267b774dbd654057",
    },
    MsdTask {
        name: "Task03_Liver",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar",
        md5: "a90ec6c4aa7f6a3d087205e23d4e6397",
    },
    MsdTask {
        name: "Task04_Hippocampus",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
        md5: "9d24dba78a72977dbd1d2e110310f31b",
    },
    MsdTask {
        name: "Task05_Prostate",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar",
        md5: "35138f08b1efaef89d7424d2bcc928db",
    },
    MsdTask {
        name: "Task06_Lung",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task06_Lung.tar",
        md5: "8afd997733c7fc0432f71255ba4e52dc",
    },
    MsdTask {
        name: "Task07_Pancreas",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task07_Pancreas.tar",
        md5: "4f7080cfca169fa8066d17ce6eb061e4",
    },
    MsdTask {
        name: "Task08_HepaticVessel",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task08_HepaticVessel.tar",
        md5: "641d79e80ec66453921d997fbf12a29c",
    },
    MsdTask {
        name: "Task09_Spleen",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task09_Spleen.tar",
        md5: "410d4a301da4e5b2f6f86ec3ddba524e",
    },
    MsdTask {
        name: "Task10_Colon",
        url: "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task10_Colon.tar",
        md5: "bad7a188931dc2f6acf72b08eb6202d0",
    },
];

/// Looks a task up by name (`"Task09_Spleen"`, case-insensitive, `"spleen"` also works).
pub fn msd_task(name: &str) -> Option<MsdTask> {
    let n = name.to_ascii_lowercase();
    MSD_TASKS.iter().copied().find(|t| {
        let tn = t.name.to_ascii_lowercase();
        tn == n || tn.split_once('_').is_some_and(|(_, s)| s == n)
    })
}

/// Hex md5 of a file, with a progress bar when `progress`.
pub fn md5_file(path: &Path, progress: bool) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar =
        if progress { indicatif::ProgressBar::new(len) } else { indicatif::ProgressBar::hidden() };
    bar.set_message(format!("md5 {}", path.display()));
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Errors unless the file's md5 equals `expected` (hex, case-insensitive).
pub fn verify_md5(path: &Path, expected: &str, progress: bool) -> Result<()> {
    let got = md5_file(path, progress)?;
    if !got.eq_ignore_ascii_case(expected) {
        return Err(Error::Prepare {
            path: path.into(),
            reason: format!("md5 {got} != expected {expected}"),
        });
    }
    Ok(())
}

/// Downloads `url` to `dest` with `curl` (atomic: `.part` file, then rename).
pub fn download(url: &str, dest: &Path) -> Result<()> {
    let part = dest.with_extension("part");
    let status = std::process::Command::new("curl")
        .args(["-L", "--fail", "--retry", "3", "-C", "-", "--progress-bar", "-o"])
        .arg(&part)
        .arg(url)
        .status()
        .map_err(|e| Error::Prepare {
            path: dest.into(),
            reason: format!("cannot run curl: {e}"),
        })?;
    if !status.success() {
        return Err(Error::Prepare {
            path: dest.into(),
            reason: format!("curl {url} failed: {status}"),
        });
    }
    std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))
}

/// Unpacks a `.tar` or `.tar.gz` into `dest` (created). Entries escaping `dest` are refused.
pub fn unpack_tar(archive: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let f = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut r = std::io::BufReader::new(f);
    let gz = {
        let buf = std::io::BufRead::fill_buf(&mut r).map_err(|e| Error::io(archive, e))?;
        buf.len() >= 2 && buf[0] == 0x1f && buf[1] == 0x8b
    };
    let reader: Box<dyn Read> =
        if gz { Box::new(flate2::read::GzDecoder::new(r)) } else { Box::new(r) };
    let mut ar = tar::Archive::new(reader);
    let entries =
        ar.entries().map_err(|e| Error::Prepare { path: archive.into(), reason: e.to_string() })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::Prepare {
            path: archive.into(),
            reason: format!("corrupt tar: {e}"),
        })?;
        let ok = entry
            .unpack_in(dest)
            .map_err(|e| Error::Prepare { path: archive.into(), reason: format!("unpack: {e}") })?;
        if !ok {
            let p = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
            return Err(Error::Prepare {
                path: archive.into(),
                reason: format!("entry {p:?} escapes the destination"),
            });
        }
    }
    Ok(())
}

/// Unpacks a `.zip` into `dest` (created). Entries escaping `dest` are refused by the zip crate.
pub fn unpack_zip(archive: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let f = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut z = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| Error::Prepare {
        path: archive.into(),
        reason: format!("corrupt zip: {e}"),
    })?;
    z.extract(dest)
        .map_err(|e| Error::Prepare { path: archive.into(), reason: format!("unzip: {e}") })
}

/// Verifies and unpacks an already downloaded MSD archive into `dest`; returns `dest/<task>/dataset.json`.
pub fn prepare_msd_from_archive(
    task: &MsdTask,
    archive: &Path,
    dest: &Path,
    progress: bool,
) -> Result<PathBuf> {
    let json = dest.join(task.name).join("dataset.json");
    if json.is_file() {
        return Ok(json);
    }
    verify_md5(archive, task.md5, progress)?;
    unpack_tar(archive, dest)?;
    if !json.is_file() {
        return Err(Error::Prepare {
            path: archive.into(),
            reason: format!("no {}/dataset.json inside", task.name),
        });
    }
    Ok(json)
}

/// Downloads (unless present), verifies and unpacks an MSD task into `dest`; returns its `dataset.json`.
pub fn prepare_msd(task: &MsdTask, dest: &Path, progress: bool) -> Result<PathBuf> {
    let json = dest.join(task.name).join("dataset.json");
    if json.is_file() {
        return Ok(json);
    }
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let archive = dest.join(format!("{}.tar", task.name));
    if !archive.is_file() || verify_md5(&archive, task.md5, progress).is_err() {
        download(task.url, &archive)?;
    }
    prepare_msd_from_archive(task, &archive, dest, progress)
}

/// Converts a TotalSegmentator v2 download (a `.zip` or an unpacked directory) at `src` into
/// `dest`: unpacks when needed, merges each case's masks into `dest/labels/<case>.nii.gz` (117-class
/// order) and writes `dest/dataset.json` with the official split. Returns the json path.
pub fn prepare_totalseg(src: &Path, dest: &Path) -> Result<PathBuf> {
    let root = if src.is_dir() {
        src.to_path_buf()
    } else {
        let out = dest.join("raw");
        if !out.is_dir() {
            unpack_zip(src, &out)?;
        }
        out
    };
    // The zip may hold the cases at its top level or inside one directory.
    let root = if root.join("meta.csv").is_file() || has_cases(&root) {
        root
    } else {
        let mut subdirs = std::fs::read_dir(&root)
            .map_err(|e| Error::io(&root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir());
        match (subdirs.next(), subdirs.next()) {
            (Some(d), None) => d,
            _ => {
                return Err(Error::dataset(
                    &root,
                    "no TotalSegmentator cases (<case>/ct.nii.gz) found",
                ));
            }
        }
    };
    let dl = crate::totalseg::datalist(&root, dest.join("labels"))?;
    crate::totalseg::write_datalist(&dl, &dest.join("dataset.json"))
}

fn has_cases(root: &Path) -> bool {
    std::fs::read_dir(root)
        .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().join("ct.nii.gz").is_file()))
        .unwrap_or(false)
}
