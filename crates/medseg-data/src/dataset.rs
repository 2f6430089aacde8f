//! Datasets: the `Dataset` trait, MSD/MONAI `dataset.json` datalists, imagesTr/labelsTr folder
//! pairs, and `NiftiDataset`, which loads and validates one `Sample` per item.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::nifti_io::read_nifti;
use crate::transforms::{Meta, Sample};
use crate::volume::Volume;
use crate::{Error, Result};

/// Random-access collection of items (burn-style); implementations are cheap to share across threads.
pub trait Dataset: Send + Sync {
    /// What one index yields.
    type Item;
    /// Loads item `i` (`i < len()`).
    fn get(&self, i: usize) -> Result<Self::Item>;
    /// Number of items.
    fn len(&self) -> usize;
    /// True when there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    type Item = D::Item;
    fn get(&self, i: usize) -> Result<Self::Item> {
        (**self).get(i)
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

/// One image (and optional label) on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataItem {
    /// Case identifier (file stem without `.nii.gz`).
    pub id: String,
    /// Image file.
    pub image: PathBuf,
    /// Label file, if any.
    pub label: Option<PathBuf>,
}

impl DataItem {
    /// An item whose id is the image file stem.
    pub fn new(image: impl Into<PathBuf>, label: Option<PathBuf>) -> Self {
        let image = image.into();
        DataItem { id: case_id(&image), image, label }
    }
}

/// File name without `.nii.gz` / `.nii` (and without an nnU-Net `_0000` channel suffix).
pub fn case_id(p: &Path) -> String {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let stem = stem.strip_suffix(".nii").unwrap_or(stem);
    stem.strip_suffix("_0000").unwrap_or(stem).to_string()
}

/// A parsed datalist: the lists of an MSD / MONAI `dataset.json` with absolute paths.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Datalist {
    /// Dataset name (`name`).
    pub name: String,
    /// `training` entries.
    pub training: Vec<DataItem>,
    /// `validation` entries (MONAI datalists; empty for raw MSD files).
    pub validation: Vec<DataItem>,
    /// `test` entries (images only).
    pub test: Vec<DataItem>,
    /// `labels` (index → name); empty when absent.
    pub labels: BTreeMap<u32, String>,
}

impl Datalist {
    /// Number of classes including background (`max label index + 1`), if `labels` is present.
    pub fn num_classes(&self) -> Option<u32> {
        self.labels.keys().next_back().map(|k| k + 1)
    }

    /// Reads an MSD / MONAI `dataset.json`. Paths are relative to the json's directory
    /// (`base_dir`); every referenced file must exist.
    pub fn from_json(path: impl AsRef<Path>) -> Result<Datalist> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Json { path: path.into(), source: e })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let obj =
            v.as_object().ok_or_else(|| Error::dataset(path, "top level is not a json object"))?;
        let list = |key: &str, need_label: bool| -> Result<Vec<DataItem>> {
            let Some(arr) = obj.get(key) else { return Ok(vec![]) };
            let arr = arr
                .as_array()
                .ok_or_else(|| Error::dataset(path, format!("`{key}` is not a list")))?;
            arr.iter()
                .enumerate()
                .map(|(n, e)| {
                    let (img, lbl) = match e {
                        Value::String(s) => (s.as_str(), None),
                        Value::Object(o) => (
                            o.get("image").and_then(Value::as_str).ok_or_else(|| {
                                Error::dataset(path, format!("`{key}[{n}]` has no string `image`"))
                            })?,
                            o.get("label").and_then(Value::as_str),
                        ),
                        _ => {
                            return Err(Error::dataset(
                                path,
                                format!("`{key}[{n}]` is neither a path nor an object"),
                            ));
                        }
                    };
                    if need_label && lbl.is_none() {
                        return Err(Error::dataset(path, format!("`{key}[{n}]` has no `label`")));
                    }
                    let img = resolve(base, img, path)?;
                    let lbl = lbl.map(|l| resolve(base, l, path)).transpose()?;
                    Ok(DataItem::new(img, lbl))
                })
                .collect()
        };
        let mut labels = BTreeMap::new();
        if let Some(Value::Object(m)) = obj.get("labels") {
            for (k, v) in m {
                let idx: u32 = k.parse().map_err(|_| {
                    Error::dataset(path, format!("label key {k:?} is not an integer"))
                })?;
                labels.insert(idx, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
            }
        }
        Ok(Datalist {
            name: obj.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
            training: list("training", true)?,
            validation: list("validation", true)?,
            test: list("test", false)?,
            labels,
        })
    }

    /// Pairs `root/imagesTr/*.nii.gz` with `root/labelsTr/<same id>.nii.gz` (MSD and nnU-Net
    /// `_0000` names). Images without a label are an error; `imagesTs` becomes `test`.
    pub fn from_folders(root: impl AsRef<Path>) -> Result<Datalist> {
        let root = root.as_ref();
        let images = nifti_files(&root.join("imagesTr"))?;
        let labels_dir = root.join("labelsTr");
        let labels: BTreeMap<String, PathBuf> =
            nifti_files(&labels_dir)?.into_iter().map(|p| (case_id(&p), p)).collect();
        let mut training = Vec::with_capacity(images.len());
        for img in images {
            let id = case_id(&img);
            let lbl = labels.get(&id).ok_or_else(|| {
                Error::dataset(
                    &img,
                    format!("no label for case {id:?} in {}", labels_dir.display()),
                )
            })?;
            training.push(DataItem { id, image: img, label: Some(lbl.clone()) });
        }
        let test = match nifti_files(&root.join("imagesTs")) {
            Ok(v) => v.into_iter().map(|p| DataItem::new(p, None)).collect(),
            Err(_) => vec![],
        };
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Datalist { name, training, validation: vec![], test, labels: BTreeMap::new() })
    }

    /// A [`NiftiDataset`] over `training`, labels checked against [`Datalist::num_classes`].
    pub fn training_dataset(&self) -> NiftiDataset {
        NiftiDataset::new(self.training.clone(), self.num_classes())
    }

    /// A [`NiftiDataset`] over `validation`.
    pub fn validation_dataset(&self) -> NiftiDataset {
        NiftiDataset::new(self.validation.clone(), self.num_classes())
    }

    /// Moves a deterministic `fraction` of `training` into `validation` (shuffled by `seed`).
    pub fn split_validation(&mut self, fraction: f64, seed: u64) {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let n = ((self.training.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..self.training.len()).collect();
        idx.shuffle(&mut rng);
        let mut val: Vec<usize> = idx[..n].to_vec();
        val.sort_unstable();
        for &i in val.iter().rev() {
            let it = self.training.remove(i);
            self.validation.insert(0, it);
        }
    }
}

fn resolve(base: &Path, rel: &str, datalist: &Path) -> Result<PathBuf> {
    let p = Path::new(rel);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p.strip_prefix("./").unwrap_or(p))
    };
    if !full.is_file() {
        return Err(Error::dataset(
            full.clone(),
            format!("listed in {} but missing", datalist.display()),
        ));
    }
    Ok(full)
}

/// Sorted `.nii` / `.nii.gz` files of a directory (hidden files skipped).
pub fn nifti_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && (name.ends_with(".nii.gz") || name.ends_with(".nii")) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Loads [`Sample`]s from [`DataItem`]s: image as f32 (HU), label as u8, with checks.
///
/// Errors (each naming the file): unreadable NIfTI, NaN/inf image voxels, label grid ≠ image grid
/// (tolerance `grid_tol` mm on the affine), label values ≥ `num_classes`. An all-zero label map is
/// accepted (crop samplers then use background centres).
#[derive(Debug, Clone)]
pub struct NiftiDataset {
    /// The items.
    pub items: Vec<DataItem>,
    /// When set, labels must be `< num_classes`.
    pub num_classes: Option<u32>,
    /// Affine tolerance for the image/label grid check (mm).
    pub grid_tol: f64,
}

impl NiftiDataset {
    /// A dataset over `items` with the default grid tolerance (1e-3 mm).
    pub fn new(items: Vec<DataItem>, num_classes: Option<u32>) -> Self {
        NiftiDataset { items, num_classes, grid_tol: 1e-3 }
    }
}

/// Loads and validates one image/label pair.
pub fn load_sample(item: &DataItem, num_classes: Option<u32>, grid_tol: f64) -> Result<Sample> {
    let (image, info): (Volume<f32>, _) = read_nifti(&item.image)?;
    let mut warnings = info.warnings;
    if let Some(pos) = image.data().iter().position(|v| !v.is_finite()) {
        let s = image.shape();
        let (i, j, k) = (pos / (s[1] * s[2]), (pos / s[2]) % s[1], pos % s[2]);
        let n = image.data().iter().filter(|v| !v.is_finite()).count();
        return Err(Error::BadVoxels {
            path: item.image.clone(),
            reason: format!(
                "{n} non-finite voxels, first at ({i}, {j}, {k}) = {}",
                image.data()[pos]
            ),
        });
    }
    let label = match &item.label {
        None => None,
        Some(lp) => {
            let (mut l, linfo): (Volume<u8>, _) = read_nifti(lp)?;
            warnings.extend(linfo.warnings);
            if l.shape() != image.shape() || l.affine.max_abs_diff(&image.affine) > grid_tol {
                return Err(Error::GeometryMismatch {
                    path: lp.clone(),
                    reason: format!(
                        "label shape {:?} affine {:?} differs from image {} shape {:?} affine {:?}",
                        l.shape(),
                        l.affine.0,
                        item.image.display(),
                        image.shape(),
                        image.affine.0
                    ),
                });
            }
            if let Some(nc) = num_classes {
                let mx = l.data().iter().copied().max().unwrap_or(0);
                if u32::from(mx) >= nc {
                    return Err(Error::LabelOutOfRange {
                        path: lp.clone(),
                        value: mx.into(),
                        num_classes: nc,
                    });
                }
            }
            l.affine = image.affine;
            Some(l)
        }
    };
    let meta = Meta {
        id: item.id.clone(),
        image_path: Some(item.image.clone()),
        label_path: item.label.clone(),
        original_affine: image.affine,
        original_shape: image.shape(),
        patch_index: 0,
        warnings,
    };
    Ok(Sample { image, label, meta })
}

impl Dataset for NiftiDataset {
    type Item = Sample;
    fn get(&self, i: usize) -> Result<Sample> {
        let item = self.items.get(i).ok_or_else(|| {
            Error::InvalidArgument(format!("index {i} out of range (len {})", self.items.len()))
        })?;
        load_sample(item, self.num_classes, self.grid_tol)
    }
    fn len(&self) -> usize {
        self.items.len()
    }
}

/// In-memory dataset of ready samples (tests, synthetic data).
#[derive(Debug, Clone, Default)]
pub struct InMemoryDataset(pub Vec<Sample>);

impl Dataset for InMemoryDataset {
    type Item = Sample;
    fn get(&self, i: usize) -> Result<Sample> {
        self.0.get(i).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!("index {i} out of range (len {})", self.0.len()))
        })
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}
