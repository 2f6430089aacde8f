//! Pairing `predict`'s inputs with their outputs, with every path checked before a model is
//! loaded: inputs exist, output folders exist (or are created when their parent exists), and no
//! output would overwrite an input.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use medseg_data::dataset::case_id;

use crate::{Error, Result};

/// One input and where its outputs go.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The image.
    pub input: PathBuf,
    /// The label map.
    pub output: PathBuf,
    /// The folder receiving `prob_<class>.nii.gz`, when asked.
    pub probabilities: Option<PathBuf>,
}

/// Whether `p` is a visible `.nii` / `.nii.gz` file name.
pub fn is_nifti(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (name.ends_with(".nii") || name.ends_with(".nii.gz")) && !name.starts_with('.')
}

/// A folder that must exist (the parent of an output file), named in the error.
fn require_dir(dir: &Path, what: &str, file: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if !dir.is_dir() {
        return Err(Error::Path(format!(
            "{what} folder {} does not exist (for {})",
            dir.display(),
            file.display()
        )));
    }
    Ok(())
}

/// Creates `dir` when missing; its parent must exist.
pub fn ensure_out_dir(dir: &Path, what: &str) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(Error::Path(format!("{what} {} exists and is not a folder", dir.display())));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    require_dir(parent, what, dir)?;
    std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))
}

/// The canonical form of a path that may not exist yet: its existing parent canonicalised, plus
/// the file name (so `a/../b/x.nii.gz` and a symlinked folder compare equal to the real path).
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let parent = p.parent().filter(|q| !q.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (parent.canonicalize(), p.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => p.to_path_buf(),
    }
}

/// Refuses any job whose label map would replace one of the inputs (compared as canonical
/// paths, so `./ct.nii.gz`, symlinks and `..` detours are caught).
fn refuse_overwrites(jobs: &[Job]) -> Result<()> {
    let inputs: HashMap<PathBuf, &Path> =
        jobs.iter().map(|j| (canonical(&j.input), j.input.as_path())).collect();
    for j in jobs {
        if let Some(input) = inputs.get(&canonical(&j.output)) {
            return Err(Error::Path(format!(
                "output {} would overwrite the input {}: choose another output path",
                j.output.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// Pairs `input` (a NIfTI file or a folder of them) with outputs under `output` (a NIfTI path, or
/// a folder receiving `<case>.nii.gz`) and optional probability folders, checking every path.
/// Folder outputs are created when their parent exists. Nothing is written when an output would
/// overwrite an input.
pub fn plan_jobs(input: &Path, output: &Path, probabilities: Option<&Path>) -> Result<Vec<Job>> {
    if !input.exists() {
        return Err(Error::Path(format!("input {} does not exist", input.display())));
    }
    let jobs = if input.is_dir() {
        let mut inputs = Vec::new();
        for entry in std::fs::read_dir(input).map_err(|e| Error::io(input, e))? {
            let p = entry.map_err(|e| Error::io(input, e))?.path();
            if p.is_file() && is_nifti(&p) {
                inputs.push(p);
            }
        }
        inputs.sort();
        if inputs.is_empty() {
            return Err(Error::Path(format!(
                "input folder {} contains no .nii or .nii.gz file",
                input.display()
            )));
        }
        if is_nifti(output) && !output.is_dir() {
            return Err(Error::Path(format!(
                "input {} is a folder, so the output must be a folder, got {}",
                input.display(),
                output.display()
            )));
        }
        let mut seen = HashMap::new();
        let mut jobs = Vec::with_capacity(inputs.len());
        for p in inputs {
            let id = case_id(&p);
            if let Some(prev) = seen.insert(id.clone(), p.clone()) {
                return Err(Error::Path(format!(
                    "inputs {} and {} both map to case {id:?} (output {id}.nii.gz)",
                    prev.display(),
                    p.display()
                )));
            }
            jobs.push(Job {
                output: output.join(format!("{id}.nii.gz")),
                probabilities: probabilities.map(|d| d.join(&id)),
                input: p,
            });
        }
        jobs
    } else {
        let out = if output.is_dir() {
            output.join(format!("{}.nii.gz", case_id(input)))
        } else {
            if !is_nifti(output) {
                return Err(Error::Path(format!(
                    "output {} must end in .nii or .nii.gz (or be an existing folder)",
                    output.display()
                )));
            }
            require_dir(output.parent().unwrap_or(Path::new(".")), "output", output)?;
            output.to_path_buf()
        };
        vec![Job {
            input: input.to_path_buf(),
            output: out,
            probabilities: probabilities.map(Path::to_path_buf),
        }]
    };
    refuse_overwrites(&jobs)?;
    if input.is_dir() {
        ensure_out_dir(output, "output")?;
    }
    if let Some(pd) = probabilities {
        ensure_out_dir(pd, "probabilities")?;
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_that_is_an_input_is_refused_by_its_canonical_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ct = tmp.path().join("ct.nii.gz");
        std::fs::write(&ct, b"x").expect("write");
        let detour = tmp.path().join("sub/../ct.nii.gz");
        std::fs::create_dir(tmp.path().join("sub")).expect("mkdir");
        for out in [ct.clone(), detour, tmp.path().to_path_buf()] {
            let e = plan_jobs(&ct, &out, None).expect_err("overwrite");
            assert!(e.to_string().contains("would overwrite the input"), "{e}");
        }
        // Folder mode: `<case>.nii.gz` of an input folder given as the output folder.
        let e = plan_jobs(tmp.path(), tmp.path(), None).expect_err("folder overwrite");
        assert!(e.to_string().contains("ct.nii.gz"), "{e}");
        // Another name in the same folder is fine.
        let ok = plan_jobs(&ct, &tmp.path().join("seg.nii.gz"), None).expect("plan");
        assert_eq!(ok.len(), 1);
    }
}
