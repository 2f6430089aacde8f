//! `medseg export`: a run folder → one model package file (weights + configuration, classes,
//! merge order and provenance in its safetensors metadata); `medseg_infer::export_package`.
use std::path::PathBuf;

use anyhow::{Context, Result};

/// Arguments of `medseg export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run folder (`config.toml` + checkpoints; its best weights, else the newest).
    pub run: PathBuf,
    /// The package file to write (`.safetensors`), written atomically.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Class names by label value, background first, comma-separated (default: the names the
    /// run recorded in `metrics.csv`, else `class_<n>`).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> Result<()> {
    if args.output.extension().is_none_or(|e| e != "safetensors") {
        anyhow::bail!("export output {} must end in .safetensors", args.output.display());
    }
    let info = medseg_infer::export_package(&args.run, &args.output, args.classes.clone())
        .with_context(|| format!("exporting run {}", args.run.display()))?;
    eprintln!(
        "wrote {} ({} {} classes, format {})",
        info.path.display(),
        info.config.model.kind(),
        info.classes.len(),
        medseg_infer::package::FORMAT
    );
    Ok(())
}
