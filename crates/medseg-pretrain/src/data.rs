//! Unlabelled data: json datalists (the research `jsons/*.json`, MSD `dataset.json`) and plain
//! folders of NIfTI files, and the research loader pipeline (swin-reference §3.4):
//! Orientation RAS → ScaleIntensityRange(a_min…a_max → 0…1, clip) → SpatialPad(roi) →
//! CropForeground(image > 0, k_divisible = roi, allow_smaller) → RandSpatialCropSamples(roi,
//! num_samples). No spacing resampling, as in the research code.
use std::path::Path;
use std::sync::Arc;

use medseg_data::transforms::{
    CropForeground, Orientation, RandSpatialCropSamples, ScaleIntensityRange, SpatialPad,
};
use medseg_data::{CacheMode, Compose, DataItem, Loader, LoaderConfig, NiftiDataset, phantom};
use medseg_train::config::CacheKind;
use serde_json::Value;

use crate::config::PretrainPlan;
use crate::{Error, Result};

/// Training and validation images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnlabelledList {
    /// Images that train.
    pub training: Vec<DataItem>,
    /// Images whose reconstruction loss is tracked.
    pub validation: Vec<DataItem>,
}

fn item(base: &Path, rel: &str, list: &Path) -> Result<DataItem> {
    let p = Path::new(rel);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p.strip_prefix("./").unwrap_or(p))
    };
    if !full.is_file() {
        return Err(Error::Datalist {
            path: list.to_path_buf(),
            reason: format!("lists {} which does not exist", full.display()),
        });
    }
    Ok(DataItem::new(full, None))
}

/// Reads the `training` and `validation` lists of a json datalist; entries are path strings or
/// objects with a string `image` (any `label` is ignored). Paths are relative to `base_dir`, or
/// to the json's folder when `base_dir` is `None`; every listed file must exist.
pub fn read_json_list(path: &Path, base_dir: Option<&Path>) -> Result<UnlabelledList> {
    let bad = |reason: String| Error::Datalist { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not json: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("top level is not a json object".into()))?;
    let base = base_dir.unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")));
    let list = |key: &str| -> Result<Vec<DataItem>> {
        let Some(arr) = obj.get(key) else { return Ok(vec![]) };
        let arr = arr.as_array().ok_or_else(|| bad(format!("`{key}` is not a list")))?;
        arr.iter()
            .enumerate()
            .map(|(n, e)| {
                let img = match e {
                    Value::String(s) => s.as_str(),
                    Value::Object(o) => o
                        .get("image")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(format!("`{key}[{n}]` has no string `image`")))?,
                    _ => return Err(bad(format!("`{key}[{n}]` is neither a path nor an object"))),
                };
                item(base, img, path)
            })
            .collect()
    };
    let out = UnlabelledList { training: list("training")?, validation: list("validation")? };
    if out.training.is_empty() {
        return Err(bad("has no `training` entries".into()));
    }
    Ok(out)
}

/// Every `.nii`/`.nii.gz` file of `dir` (or of `dir/imagesTr` when that exists), sorted.
pub fn read_folder(dir: &Path) -> Result<Vec<DataItem>> {
    let d = if dir.join("imagesTr").is_dir() { dir.join("imagesTr") } else { dir.to_path_buf() };
    if !d.is_dir() {
        return Err(Error::Datalist { path: dir.to_path_buf(), reason: "is not a folder".into() });
    }
    let files = medseg_data::dataset::nifti_files(&d)?;
    if files.is_empty() {
        return Err(Error::Datalist { path: d, reason: "holds no .nii or .nii.gz file".into() });
    }
    Ok(files.into_iter().map(|p| DataItem::new(p, None)).collect())
}

/// All lists of a plan: json datalists (generating the phantom into the first when allowed),
/// folders, then `val_fraction` of the training images moved to validation when none is listed.
pub fn gather(plan: &PretrainPlan) -> Result<UnlabelledList> {
    let cfg = &plan.config.data;
    let mut all = UnlabelledList::default();
    for (i, json) in plan.datalists.iter().enumerate() {
        if !json.exists() && i == 0 && cfg.generate_phantom {
            let dir = json.parent().unwrap_or(Path::new("."));
            let written = phantom::generate(dir, &phantom::PhantomConfig::default())?;
            if &written != json {
                std::fs::rename(&written, json).map_err(|e| Error::io(json, e))?;
            }
        }
        if !json.exists() {
            return Err(Error::Datalist {
                path: json.clone(),
                reason: "does not exist (set data.generate_phantom = true for the phantom)".into(),
            });
        }
        let l = read_json_list(json, plan.base_dir.as_deref())?;
        all.training.extend(l.training);
        all.validation.extend(l.validation);
    }
    for f in &plan.folders {
        all.training.extend(read_folder(f)?);
    }
    if all.validation.is_empty() && cfg.val_fraction > 0.0 {
        let n = ((all.training.len() as f64) * cfg.val_fraction).round() as usize;
        let n = n.min(all.training.len().saturating_sub(1));
        let keep = all.training.len() - n;
        all.validation = all.training.split_off(keep);
    }
    Ok(all)
}

/// The research pipeline for crops of `roi` (`num_samples` per volume).
pub fn pipeline(a_min: f32, a_max: f32, roi: [usize; 3], num_samples: usize) -> Compose {
    Compose(vec![
        Box::new(Orientation { axcodes: "RAS".into() }),
        Box::new(ScaleIntensityRange { a_min, a_max, b_min: 0.0, b_max: 1.0, clip: true }),
        Box::new(SpatialPad { size: roi }),
        Box::new(CropForeground {
            threshold: 0.0,
            margin: [0; 3],
            allow_smaller: true,
            k_divisible: roi,
        }),
        Box::new(RandSpatialCropSamples { size: roi, num_samples }),
    ])
}

/// Training and (when validation images exist) validation loaders. The validation loader
/// draws its crops from a fixed seed, so every validation sees the same crops.
pub fn loaders(plan: &PretrainPlan, list: &UnlabelledList) -> Result<(Loader, Option<Loader>)> {
    let cfg = &plan.config;
    let d = &cfg.data;
    let cache = |sub: &str| match d.cache {
        CacheKind::None => CacheMode::None,
        CacheKind::Memory => CacheMode::Memory,
        CacheKind::Disk => CacheMode::Disk(plan.run_dir.join("cache").join(sub)),
    };
    let mut tl = LoaderConfig::train(d.batch_size, cfg.seed);
    tl.num_workers = d.num_workers;
    tl.cache = cache("train");
    let train = Loader::new(
        Arc::new(NiftiDataset::new(list.training.clone(), None)),
        pipeline(d.a_min, d.a_max, d.roi, d.num_samples),
        tl,
    )?;
    let val = if list.validation.is_empty() {
        None
    } else {
        let mut vl = LoaderConfig::train(d.batch_size, cfg.seed ^ 0x5641_4c49_4441_5445);
        vl.shuffle = false;
        vl.num_workers = d.num_workers.min(1);
        vl.cache = cache("val");
        Some(Loader::new(
            Arc::new(NiftiDataset::new(list.validation.clone(), None)),
            pipeline(d.a_min, d.a_max, d.roi, d.num_samples),
            vl,
        )?)
    };
    Ok((train, val))
}
