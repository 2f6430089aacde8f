//! `cargo xtask golden`: regenerate the golden files from PyTorch/MONAI with
//! `tools/golden/*_golden.py`.
use anyhow::{Context, Result, bail};

use crate::{project_root, reference_python, run_cmd};

#[derive(clap::Args)]
pub struct Args {
    /// Only scripts whose file name contains this (e.g. `ops`).
    filter: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let Some(python) = reference_python() else {
        bail!(
            "no reference venv: create it with `python3 -m venv ~/.venvs/ref && \
             ~/.venvs/ref/bin/pip install -r tools/golden/requirements.txt` or set MEDSEG_REF_PYTHON"
        );
    };
    let dir = project_root().join("tools/golden");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_golden.py")))
        .filter(|p| args.filter.as_ref().is_none_or(|f| p.to_string_lossy().contains(f.as_str())))
        .collect();
    scripts.sort();
    for s in scripts {
        run_cmd(std::process::Command::new(&python).arg(s))?;
    }
    Ok(())
}
