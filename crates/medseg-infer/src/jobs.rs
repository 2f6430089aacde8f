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
    /// The image (a NIfTI file, or a DICOM folder / `.zip` / file).
    pub input: PathBuf,
    /// The label map.
    pub output: PathBuf,
    /// The folder receiving `prob_<class>.nii.gz`, when asked.
    pub probabilities: Option<PathBuf>,
    /// How the input is read.
    pub input_kind: InputKind,
    /// How the label map is written.
    pub output_type: OutputType,
    /// The per-class statistics file (`.json` or `.csv`), when asked.
    pub statistics: Option<PathBuf>,
    /// The preview picture (`.png`), when asked.
    pub preview: Option<PathBuf>,
}

/// How an input is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A `.nii` / `.nii.gz` file.
    Nifti,
    /// A DICOM series: a folder without NIfTI files, a `.zip`, or a file that is not NIfTI.
    Dicom,
}

/// How the label map is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// A NIfTI label map (uint8) on the input grid.
    Nifti,
    /// A binary DICOM Segmentation referencing the source series (DICOM input only).
    DicomSeg,
}

impl OutputType {
    /// `nifti` or `dicom-seg`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "nifti" => Ok(OutputType::Nifti),
            "dicom-seg" | "dicom_seg" => Ok(OutputType::DicomSeg),
            _ => Err(Error::Path(format!("output type {s:?}: use nifti or dicom-seg"))),
        }
    }

    /// The output type an output path implies: `.dcm` is a DICOM SEG, anything else NIfTI.
    pub fn from_path(p: &Path) -> Self {
        if has_ext(p, ".dcm") { OutputType::DicomSeg } else { OutputType::Nifti }
    }

    fn extension(self) -> &'static str {
        match self {
            OutputType::Nifti => "nii.gz",
            OutputType::DicomSeg => "dcm",
        }
    }
}

/// What `predict` was asked to write, besides the label maps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// The probability folder.
    pub probabilities: Option<PathBuf>,
    /// `nifti` / `dicom-seg`; `None`: from the output path ([`OutputType::from_path`]).
    pub output_type: Option<OutputType>,
    /// The statistics file (single input) or the name template of one per case (folder input:
    /// `<output folder>/<case>_<file name>`).
    pub statistics: Option<PathBuf>,
    /// The preview picture, with the same naming as `statistics`.
    pub preview: Option<PathBuf>,
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.file_name().is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(ext))
}

/// How `input` is read: `.nii`/`.nii.gz` files and folders holding any are NIfTI; other folders,
/// `.zip` files and other files are DICOM.
pub fn input_kind(input: &Path) -> InputKind {
    if input.is_dir() {
        let has_nifti = std::fs::read_dir(input)
            .map(|rd| rd.flatten().any(|e| e.path().is_file() && is_nifti(&e.path())))
            .unwrap_or(false);
        if has_nifti { InputKind::Nifti } else { InputKind::Dicom }
    } else if is_nifti(input) {
        InputKind::Nifti
    } else {
        InputKind::Dicom
    }
}

/// The name of a DICOM input's case: its folder or file name without `.zip` / `.dcm`.
fn dicom_case_id(input: &Path) -> String {
    let name = input
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "case".to_string());
    let lower = name.to_ascii_lowercase();
    for ext in [".zip", ".dcm"] {
        if lower.ends_with(ext) && name.len() > ext.len() {
            return name[..name.len() - ext.len()].to_string();
        }
    }
    name
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
        let outs = [Some(&j.output), j.statistics.as_ref(), j.preview.as_ref()];
        for out in outs.into_iter().flatten() {
            if let Some(input) = inputs.get(&canonical(out)) {
                return Err(Error::Path(format!(
                    "output {} would overwrite the input {}: choose another output path",
                    out.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

/// Pairs `input` (a NIfTI file or a folder of them) with outputs under `output` (a NIfTI path, or
/// a folder receiving `<case>.nii.gz`) and optional probability folders, checking every path.
/// Folder outputs are created when their parent exists. Nothing is written when an output would
/// overwrite an input.
pub fn plan_jobs(input: &Path, output: &Path, probabilities: Option<&Path>) -> Result<Vec<Job>> {
    let request =
        Request { probabilities: probabilities.map(Path::to_path_buf), ..Request::default() };
    plan(input, output, &request)
}

/// [`plan_jobs`] with the clinical outputs of `request`: DICOM input (one case, see
/// [`input_kind`]), the output type, and per-case statistics and preview paths (a single input
/// writes them where given; a folder writes `<output folder>/<case>_<file name>`). A DICOM SEG
/// needs a DICOM input. Every path is checked as the label maps are.
pub fn plan(input: &Path, output: &Path, request: &Request) -> Result<Vec<Job>> {
    if !input.exists() {
        return Err(Error::Path(format!("input {} does not exist", input.display())));
    }
    let kind = input_kind(input);
    let out_type = request.output_type.unwrap_or_else(|| OutputType::from_path(output));
    if out_type == OutputType::DicomSeg && kind != InputKind::Dicom {
        return Err(Error::Path(format!(
            "a DICOM SEG output ({}) needs a DICOM input (a series folder, .zip or DICOM file); \
             {} is NIfTI: write a .nii.gz instead",
            output.display(),
            input.display()
        )));
    }
    for (what, p, ext) in [
        ("statistics", &request.statistics, [".json", ".csv"].as_slice()),
        ("preview", &request.preview, [".png"].as_slice()),
    ] {
        if let Some(p) = p
            && !ext.iter().any(|e| has_ext(p, e))
        {
            return Err(Error::Path(format!(
                "{what} file {} must end in {}",
                p.display(),
                ext.join(" or ")
            )));
        }
    }
    let probabilities = request.probabilities.as_deref();
    let folder = kind == InputKind::Nifti && input.is_dir();
    let mut jobs = if kind == InputKind::Dicom {
        let out = if output.is_dir() {
            output.join(format!("{}.{}", dicom_case_id(input), out_type.extension()))
        } else {
            if out_type == OutputType::Nifti && !is_nifti(output) {
                return Err(Error::Path(format!(
                    "output {} must end in .nii or .nii.gz, .dcm (DICOM SEG), or be an existing \
                     folder",
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
            input_kind: kind,
            output_type: out_type,
            statistics: None,
            preview: None,
        }]
    } else if input.is_dir() {
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
                input_kind: kind,
                output_type: out_type,
                statistics: None,
                preview: None,
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
            input_kind: kind,
            output_type: out_type,
            statistics: None,
            preview: None,
        }]
    };
    for job in &mut jobs {
        let per_case = |p: &Option<PathBuf>| -> Option<PathBuf> {
            let p = p.as_ref()?;
            if !folder {
                return Some(p.clone());
            }
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Some(output.join(format!("{}_{name}", case_id(&job.input))))
        };
        job.statistics = per_case(&request.statistics);
        job.preview = per_case(&request.preview);
        if !folder {
            for p in [&job.statistics, &job.preview].into_iter().flatten() {
                require_dir(p.parent().unwrap_or(Path::new(".")), "output", p)?;
            }
        }
    }
    refuse_overwrites(&jobs)?;
    if folder {
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
