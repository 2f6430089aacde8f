//! The pre-flight check of a datalist: every bad item found before training starts, in one error.
//!
//! [`check_items`] checks, for every item and in parallel (rayon):
//! 1. headers (`read_info`, which decompresses only the start of a `.nii.gz`): image and label
//!    readable, within the size [`Limits`], the label grid (shape, affine within `grid_tol` mm)
//!    equal to the image grid;
//! 2. then, only for items whose headers passed, one pass over the label voxels (read as `u8`, which
//!    also verifies the gzip checksum): every value a whole number in `0..num_classes`.
//!
//! Image voxels are not read (a NaN image still fails when the loader reaches it). Every problem
//! of every item is collected; the result is one [`Error::CheckFailed`] listing them all, each line
//! naming its file. Header warnings ([`crate::NiftiInfo::warnings`]) come back in the
//! [`CheckReport`].
//!
//! Cache: the voxel pass is the slow part, so its result (the largest label value) is cached per
//! label file, keyed by the file's absolute path, size and modification time, in the JSON file
//! [`CheckOptions::cache`] (by default `.medseg-check-cache.json` beside the datalist,
//! [`default_cache_path`]). A changed file is read again; a cache that cannot be read is ignored
//! and one that cannot be written is reported in [`CheckReport::cache_note`]. Verdicts are not
//! cached: the comparison with `num_classes` is made on every run.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::{DataItem, Datalist};
use crate::limits::Limits;
use crate::nifti_io::{NiftiInfo, atomic_write, read_info, read_nifti_with};
use crate::volume::Volume;
use crate::{Error, Result};

/// File name of the check cache beside a datalist.
pub const CACHE_FILE: &str = ".medseg-check-cache.json";

/// What the pre-flight check compares against.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOptions {
    /// Labels must be `< num_classes` (the model's `out_channels`); `None` checks only that they
    /// are whole numbers in `0..=255`.
    pub num_classes: Option<u32>,
    /// The training crop size: checked once against the size limits (a crop is allocated per
    /// sample).
    pub roi: Option<[usize; 3]>,
    /// Affine tolerance (mm) of the image/label grid check (the loader's, 1e-3).
    pub grid_tol: f64,
    /// Size limits; `None` uses [`Limits::process`].
    pub limits: Option<Limits>,
    /// The cache file; `None` disables the cache.
    pub cache: Option<PathBuf>,
}

impl CheckOptions {
    /// Options with the loader's grid tolerance, process limits and no cache.
    pub fn new(num_classes: Option<u32>) -> Self {
        CheckOptions { num_classes, roi: None, grid_tol: 1e-3, limits: None, cache: None }
    }
}

/// What a passing check saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    /// Items checked (distinct image/label pairs).
    pub items: usize,
    /// Label files whose voxels were read in this run.
    pub labels_read: usize,
    /// Label files whose voxel pass came from the cache.
    pub labels_cached: usize,
    /// Header warnings, one sentence each naming the file.
    pub warnings: Vec<String>,
    /// Set when the cache could not be written (the check itself passed).
    pub cache_note: Option<String>,
}

/// `.medseg-check-cache.json` in the datalist's folder.
pub fn default_cache_path(datalist: &Path) -> PathBuf {
    datalist.parent().unwrap_or(Path::new(".")).join(CACHE_FILE)
}

/// Checks the `training` and `validation` items of `dl` (read from `datalist`).
pub fn check_datalist(datalist: &Path, dl: &Datalist, opts: &CheckOptions) -> Result<CheckReport> {
    let items: Vec<DataItem> = dl.training.iter().chain(&dl.validation).cloned().collect();
    check_items(datalist, &items, opts)
}

/// Checks `items` (see the module docs); `source` (the datalist) names the error.
pub fn check_items(source: &Path, items: &[DataItem], opts: &CheckOptions) -> Result<CheckReport> {
    let limits = match opts.limits {
        Some(l) => l,
        None => Limits::process()?,
    };
    let mut problems = Vec::new();
    if let Some(roi) = opts.roi
        && let Err(e) = limits.check(Path::new("data.roi"), "training crop", roi, 4)
    {
        problems.push(e.to_string());
    }
    let mut seen = BTreeSet::new();
    let items: Vec<&DataItem> =
        items.iter().filter(|it| seen.insert((&it.image, &it.label))).collect();
    let cache = Mutex::new(opts.cache.as_deref().map(load_cache).unwrap_or_default());
    let results: Vec<ItemResult> =
        items.par_iter().map(|it| check_item(it, opts, &limits, &cache)).collect();
    let mut report = CheckReport { items: items.len(), ..CheckReport::default() };
    for r in results {
        problems.extend(r.problems);
        report.warnings.extend(r.warnings);
        match r.label_pass {
            Some(LabelPass::Read) => report.labels_read += 1,
            Some(LabelPass::Cached) => report.labels_cached += 1,
            None => {}
        }
    }
    if let Some(path) = &opts.cache
        && report.labels_read > 0
    {
        let c = cache.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = save_cache(path, &c) {
            report.cache_note = Some(format!("check cache not written: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(Error::CheckFailed { path: source.into(), checked: report.items, problems })
    }
}

enum LabelPass {
    Read,
    Cached,
}

struct ItemResult {
    problems: Vec<String>,
    warnings: Vec<String>,
    label_pass: Option<LabelPass>,
}

fn check_item(
    it: &DataItem,
    opts: &CheckOptions,
    limits: &Limits,
    cache: &Mutex<Cache>,
) -> ItemResult {
    let mut r = ItemResult { problems: Vec::new(), warnings: Vec::new(), label_pass: None };
    let header = |path: &Path, elem: usize, r: &mut ItemResult| -> Option<NiftiInfo> {
        match read_info(path).and_then(|i| limits.check(path, "volume", i.shape, elem).map(|_| i)) {
            Ok(i) => {
                r.warnings.extend(i.warnings.iter().cloned());
                Some(i)
            }
            Err(e) => {
                r.problems.push(e.to_string());
                None
            }
        }
    };
    let image = header(&it.image, 4, &mut r);
    let Some(lp) = &it.label else { return r };
    let label = header(lp, 1, &mut r);
    let (Some(image), Some(label)) = (image, label) else { return r };
    if label.shape != image.shape || label.affine.max_abs_diff(&image.affine) > opts.grid_tol {
        r.problems.push(
            Error::GeometryMismatch {
                path: lp.clone(),
                reason: format!(
                    "label shape {:?} affine {:?} differs from image {} shape {:?} affine {:?}",
                    label.shape,
                    label.affine.0,
                    it.image.display(),
                    image.shape,
                    image.affine.0
                ),
            }
            .to_string(),
        );
        return r;
    }
    let key = file_key(lp);
    let cached = key.as_ref().and_then(|k| {
        let c = cache.lock().ok()?;
        c.labels.get(&k.0).filter(|e| e.size == k.1 && e.mtime_ns == k.2).map(|e| e.max)
    });
    let max = match cached {
        Some(m) => {
            r.label_pass = Some(LabelPass::Cached);
            m
        }
        None => match read_nifti_with::<u8>(lp, limits) {
            Ok((v, _)) => {
                r.label_pass = Some(LabelPass::Read);
                let m = max_label(&v);
                if let (Some((p, size, mtime_ns)), Ok(mut c)) = (key, cache.lock()) {
                    c.labels.insert(p, CacheEntry { size, mtime_ns, max: m });
                }
                m
            }
            Err(e) => {
                r.problems.push(e.to_string());
                return r;
            }
        },
    };
    if let Some(nc) = opts.num_classes
        && u32::from(max) >= nc
    {
        r.problems.push(
            Error::LabelOutOfRange { path: lp.clone(), value: max.into(), num_classes: nc }
                .to_string(),
        );
    }
    r
}

fn max_label(v: &Volume<u8>) -> u8 {
    v.data().par_chunks(1 << 20).map(|c| c.iter().copied().max().unwrap_or(0)).max().unwrap_or(0)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    /// Absolute label path → the voxel pass's result.
    labels: BTreeMap<String, CacheEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: u64,
    /// Largest label value (every voxel is a whole number in 0..=255).
    max: u8,
}

/// (absolute path, size, modification time in ns) of a file.
fn file_key(p: &Path) -> Option<(String, u64, u64)> {
    let abs = std::path::absolute(p).ok()?;
    let m = std::fs::metadata(&abs).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some((abs.to_string_lossy().into_owned(), m.len(), u64::try_from(t.as_nanos()).ok()?))
}

fn load_cache(path: &Path) -> Cache {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save_cache(path: &Path, c: &Cache) -> Result<()> {
    let text =
        serde_json::to_vec_pretty(c).map_err(|e| Error::Json { path: path.into(), source: e })?;
    atomic_write(path, |w| std::io::Write::write_all(w, &text))
}
