//! `medseg info`: what a model source holds (run folder, `medseg export` package, MONAI bundle
//! folder, weights with `--preset`/`--config`): architecture, parameter count, classes, preprocessing, sliding
//! window, merge order, provenance; text or `--json`. `medseg_infer::describe` does the work.
use std::path::PathBuf;

use anyhow::{Context, Result};
use medseg_infer::ModelSource;

/// Arguments of `medseg info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run folder, a model package, a MONAI bundle folder (`configs/inference.json`), or a
    /// weights file (`.safetensors`, MONAI `.pt`/`.pth`) with `--preset` or `--config`.
    pub model: PathBuf,
    /// Embedded training preset describing a weights file.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// Training config TOML describing a weights file (overrides a run's or package's own).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> Result<()> {
    let explicit = crate::explicit_config(args.preset.as_deref(), args.config.as_deref())?;
    let source = ModelSource::from_path(&args.model, explicit)?;
    let info = medseg_infer::describe(&source)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info).context("serialising the summary")?);
    } else {
        print!("{info}");
    }
    Ok(())
}
