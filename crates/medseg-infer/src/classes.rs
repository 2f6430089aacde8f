//! Class names of a model and the label-map clean-up of `medseg predict`: `--roi-subset` (keep
//! only named classes), `--largest-component` and `--remove-small` (through [`crate::components`]),
//! applied on the input grid before the label map is written and before its statistics.
use std::path::Path;

use medseg_data::Volume;

use crate::components::{Connectivity, keep_largest, remove_small};
use crate::{Error, Result};

/// Names of labels `0..n`, from the first source that has `n` of them: a MONAI bundle's
/// metadata (`channel_def`, `pred_classes`, `label_classes`); a model package's recorded classes; a run folder's `metrics.csv` columns (as `medseg export` records them); the
/// `labels` of the datalist (`dataset.json`) its `config.toml` names in `[data] datalist`; else
/// `class_<n>`. Returns the names and where they came from.
pub fn class_names(model: &Path, n: usize) -> (Vec<String>, String) {
    let generic = || (0..n).map(|c| format!("class_{c}")).collect::<Vec<_>>();
    if model.is_dir() && crate::bundle::is_bundle(model) {
        let meta = model.join(crate::bundle::METADATA_JSON);
        if let Ok(cfg) = crate::bundle::MonaiConfig::read(&meta, Default::default())
            && let Some(names) = crate::bundle::class_names(&cfg, n)
        {
            return (names, meta.display().to_string());
        }
        return (generic(), "generic (the bundle's metadata names no classes)".to_string());
    }
    if model.is_file()
        && crate::package::is_package(model).unwrap_or(false)
        && let Ok(p) = crate::package::read_package(model)
        && p.classes.len() == n
    {
        return (p.classes, format!("the package {}", model.display()));
    }
    if model.is_dir() {
        let recorded = crate::package::run_class_names(model, n);
        if recorded != generic() {
            return (recorded, format!("{}", model.join("metrics.csv").display()));
        }
    }
    match datalist_labels(model) {
        Some((labels, from)) => {
            let names = (0..n)
                .map(|c| labels.get(&c.to_string()).cloned().unwrap_or(format!("class_{c}")))
                .collect();
            (names, format!("the labels of {from}"))
        }
        None => (generic(), "generic (the model has no class names)".to_string()),
    }
}

/// The `labels` object of the datalist a run folder's config names, when readable.
fn datalist_labels(model: &Path) -> Option<(std::collections::BTreeMap<String, String>, String)> {
    if !model.is_dir() {
        return None;
    }
    let text = std::fs::read_to_string(model.join("config.toml")).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let rel = table.get("data")?.get("datalist")?.as_str()?;
    let path = Path::new(rel);
    let path = if path.is_absolute() { path.to_path_buf() } else { model.join(path) };
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    let labels = json.get("labels")?.as_object()?;
    let map = labels
        .iter()
        .filter_map(|(k, v)| Some((k.trim().to_string(), v.as_str()?.to_string())))
        .collect();
    Some((map, path.display().to_string()))
}

/// The labels of comma-separated class `names` (exact names; label numbers are not accepted),
/// background excluded. An unknown name is an error listing the names that exist; `what` names
/// the flag in it.
pub fn labels_of(list: &str, names: &[String], what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match names.iter().skip(1).position(|n| n == name) {
            Some(i) if i < usize::from(u8::MAX) => out.push((i + 1) as u8),
            _ => {
                return Err(Error::Config(format!(
                    "{what}: no class {name:?}; the model's classes are: {}",
                    names.iter().skip(1).cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Config(format!("{what}: give at least one class name")));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The clean-up of a label map on the input grid, in this order: subset, largest component,
/// small components. Connectivity is 6 (faces), as TotalSegmentator's scipy-based clean-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cleanup {
    /// Keep only these labels (others become background).
    pub subset: Option<Vec<u8>>,
    /// Keep only the largest component of these labels.
    pub largest: Option<Vec<u8>>,
    /// Remove components smaller than this many millilitres (every class).
    pub remove_small_ml: Option<f64>,
}

/// Voxels set to background by each step of a [`Cleanup`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// By the subset.
    pub subset: u64,
    /// By keeping the largest component.
    pub largest: u64,
    /// By removing small components.
    pub small: u64,
}

impl Cleanup {
    /// Whether any step is asked.
    pub fn is_empty(&self) -> bool {
        self.subset.is_none() && self.largest.is_none() && self.remove_small_ml.is_none()
    }

    /// Applies the steps to `labels` (spacing from its affine) and counts what they removed.
    pub fn apply(&self, labels: &mut Volume<u8>) -> CleanupReport {
        let dims = labels.shape();
        let spacing = labels.spacing();
        let mut report = CleanupReport::default();
        let data = labels.data_mut();
        if let Some(keep) = &self.subset {
            let mut on = [false; 256];
            for &l in keep {
                on[usize::from(l)] = true;
            }
            for v in data.iter_mut() {
                if *v != 0 && !on[usize::from(*v)] {
                    *v = 0;
                    report.subset += 1;
                }
            }
        }
        let present = |data: &[u8]| {
            let mut seen = [false; 256];
            for &v in data {
                seen[usize::from(v)] = true;
            }
            (1..=255u8).filter(|&c| seen[usize::from(c)]).collect::<Vec<u8>>()
        };
        if let Some(classes) = &self.largest {
            report.largest = keep_largest(data, dims, classes, Connectivity::Faces);
        }
        if let Some(ml) = self.remove_small_ml {
            let classes = present(data);
            report.small = remove_small(data, dims, spacing, &classes, ml, Connectivity::Faces);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medseg_data::Affine;

    fn names() -> Vec<String> {
        ["background", "liver", "spleen", "kidney"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        assert_eq!(
            labels_of("spleen, liver,spleen", &names(), "--roi-subset").ok(),
            Some(vec![1, 2])
        );
        let e = labels_of("liver,heart", &names(), "--roi-subset").expect_err("unknown");
        let msg = e.to_string();
        assert!(msg.contains("\"heart\"") && msg.contains("liver, spleen, kidney"), "{msg}");
        assert!(labels_of("background", &names(), "x").is_err(), "background is not a class");
        assert!(labels_of(" , ", &names(), "x").is_err());
    }

    #[test]
    fn cleanup_runs_subset_then_largest_then_small() {
        // 2 mm isotropic: 0.008 ml per voxel.
        let affine =
            Affine::from_parts([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]], [0.0; 3]);
        let data = vec![1, 1, 1, 0, 1, 0, 2, 2, 0, 3, 0, 3, 3, 3];
        let mut v = Volume::new(data, [1, 1, 14], affine).expect("volume");
        let c = Cleanup {
            subset: Some(vec![1, 3]),
            largest: Some(vec![1]),
            remove_small_ml: Some(0.01),
        };
        let r = c.apply(&mut v);
        assert_eq!(v.data(), &[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3]);
        assert_eq!(r, CleanupReport { subset: 2, largest: 1, small: 1 });
        assert!(Cleanup::default().is_empty());
    }
}
