//! The TotalSegmentator v2 layout (`<root>/<case>/ct.nii.gz`, `<root>/<case>/segmentations/<name>.nii.gz`,
//! `<root>/meta.csv`), merged into one multi-label map per case in the official 117-class order and
//! cached on disk after the first merge.
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use crate::totalseg_classes::TOTALSEG_CLASSES;

use crate::dataset::{DataItem, Datalist};
use crate::nifti_io::{read_volume, write_volume};
use crate::volume::Volume;
use crate::{Error, Result};

/// Official split of a case (`meta.csv` column `split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train`.
    Train,
    /// `val`.
    Val,
    /// `test`.
    Test,
}

/// Reads `meta.csv` (`;` or `,` separated, columns `image_id` and `split`).
pub fn read_meta(path: &Path) -> Result<Vec<(String, Split)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| Error::dataset(path, "empty meta.csv"))?;
    let sep = if header.contains(';') { ';' } else { ',' };
    let cols: Vec<&str> = header.split(sep).map(str::trim).collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| Error::dataset(path, format!("no `{name}` column in {cols:?}")))
    };
    let (ci, cs) = (col("image_id")?, col("split")?);
    lines
        .enumerate()
        .map(|(n, l)| {
            let f: Vec<&str> = l.split(sep).map(str::trim).collect();
            let (Some(id), Some(split)) = (f.get(ci), f.get(cs)) else {
                return Err(Error::dataset(path, format!("line {}: too few columns", n + 2)));
            };
            let split = match *split {
                "train" => Split::Train,
                "val" | "validation" => Split::Val,
                "test" => Split::Test,
                other => {
                    return Err(Error::dataset(
                        path,
                        format!("line {}: unknown split {other:?}", n + 2),
                    ));
                }
            };
            Ok((id.to_string(), split))
        })
        .collect()
}

/// Merges `<case_dir>/segmentations/<name>.nii.gz` for every name in `classes` into one label map
/// (label = position + 1; a later class overwrites an earlier one where masks overlap, as
/// TotalSegmentator's own `combine_masks`). Each mask must lie on the grid of `<case_dir>/ct.nii.gz`.
pub fn merge_case(case_dir: &Path, classes: &[&str]) -> Result<Volume<u8>> {
    if classes.len() > 255 {
        return Err(Error::InvalidArgument(format!(
            "{} classes do not fit u8 labels",
            classes.len()
        )));
    }
    let ct = crate::nifti_io::read_info(case_dir.join("ct.nii.gz"))?;
    let mut out = Volume::filled(ct.shape, 0u8, ct.affine);
    for (c, name) in classes.iter().enumerate() {
        let p = case_dir.join("segmentations").join(format!("{name}.nii.gz"));
        if !p.is_file() {
            return Err(Error::dataset(p, "structure mask missing"));
        }
        let m: Volume<f32> = read_volume(&p)?;
        if !m.same_grid(&out, 1e-3) {
            return Err(Error::GeometryMismatch {
                path: p,
                reason: format!(
                    "mask shape {:?} vs ct {:?} (or affine differs)",
                    m.shape(),
                    ct.shape
                ),
            });
        }
        let label = (c + 1) as u8;
        for (o, &v) in out.data_mut().iter_mut().zip(m.data()) {
            if v > 0.5 {
                *o = label;
            }
        }
    }
    Ok(out)
}

/// Builds the datalist of a TotalSegmentator v2 download at `root`, merging each case's masks into
/// `<cache_dir>/<case>.nii.gz` unless that file already exists (writes are atomic, so an existing
/// file is complete). Cases are merged in parallel. Splits follow `meta.csv`; without it every case
/// is training. `labels` is filled with the 117 class names.
pub fn datalist(root: impl AsRef<Path>, cache_dir: impl AsRef<Path>) -> Result<Datalist> {
    let root = root.as_ref();
    let cache = cache_dir.as_ref();
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let meta = root.join("meta.csv");
    let cases: Vec<(String, Split)> = if meta.is_file() {
        read_meta(&meta)?
    } else {
        let mut v = Vec::new();
        for e in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
            let e = e.map_err(|e| Error::io(root, e))?;
            if e.path().join("ct.nii.gz").is_file() {
                v.push((e.file_name().to_string_lossy().into_owned(), Split::Train));
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let items: Vec<(DataItem, Split)> = cases
        .par_iter()
        .map(|(id, split)| {
            let case_dir = root.join(id);
            let image = case_dir.join("ct.nii.gz");
            if !image.is_file() {
                return Err(Error::dataset(image, "listed in meta.csv but missing"));
            }
            let label = cache.join(format!("{id}.nii.gz"));
            if !label.is_file() {
                let merged = merge_case(&case_dir, &TOTALSEG_CLASSES)?;
                write_volume(&label, &merged)?;
            }
            Ok((DataItem { id: id.clone(), image, label: Some(label) }, *split))
        })
        .collect::<Result<_>>()?;
    let mut dl = Datalist { name: "TotalSegmentator-v2".into(), ..Datalist::default() };
    dl.labels.insert(0, "background".into());
    for (c, n) in TOTALSEG_CLASSES.iter().enumerate() {
        dl.labels.insert(c as u32 + 1, (*n).into());
    }
    for (item, split) in items {
        match split {
            Split::Train => dl.training.push(item),
            Split::Val => dl.validation.push(item),
            Split::Test => dl.test.push(item),
        }
    }
    Ok(dl)
}

/// Writes `dl` as an MSD/MONAI-style `dataset.json` (paths relative to its directory when possible).
pub fn write_datalist(dl: &Datalist, path: &Path) -> Result<PathBuf> {
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &Path| match p.strip_prefix(base) {
        Ok(r) => format!("./{}", r.display()),
        Err(_) => p.display().to_string(),
    };
    let list = |v: &[DataItem]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|i| match &i.label {
                Some(l) => serde_json::json!({"image": rel(&i.image), "label": rel(l)}),
                None => serde_json::json!({"image": rel(&i.image)}),
            })
            .collect()
    };
    let labels: serde_json::Map<String, serde_json::Value> =
        dl.labels.iter().map(|(k, v)| (k.to_string(), v.clone().into())).collect();
    let json = serde_json::json!({
        "name": dl.name,
        "labels": labels,
        "numTraining": dl.training.len(),
        "training": list(&dl.training),
        "validation": list(&dl.validation),
        "test": list(&dl.test),
    });
    let text = serde_json::to_string_pretty(&json)
        .map_err(|e| Error::Json { path: path.into(), source: e })?;
    crate::nifti_io::atomic_write(path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    Ok(path.to_path_buf())
}
