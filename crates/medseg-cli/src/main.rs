//! `medseg`: the command-line entry point, one module per subcommand: `predict` (NIfTI in, label
//! map on the input grid out), `eval` (folders of predictions vs ground truth), `train` (the same
//! as `cargo xtask train`, from `medseg_train::cli`), `check-data` (the training data pre-flight
//! check alone), `export` (a run as one model package), `info` (what a model holds) and
//! `forward` (debugging ports against PyTorch).
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check_data;
mod convert;
mod eval;
mod export;
mod forward;
mod info;
mod predict;
mod prepare;

/// medseg — 3-D medical image segmentation in Rust.
#[derive(Debug, Parser)]
#[command(name = "medseg", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Segment NIfTI images or a DICOM series with a trained run or MONAI weights; outputs
    /// (NIfTI or DICOM SEG, statistics, preview) match the input grid.
    Predict(Box<predict::Args>),
    /// Score a folder of predictions against ground truth (Dice, IoU, HD95, ASSD, NSD).
    Eval(eval::Args),
    /// Train a network from a TOML config or preset (the same as `cargo xtask train`).
    Train(medseg_train::cli::TrainArgs),
    /// Check a training config's datalist (headers, label grids and values) without training.
    CheckData(check_data::Args),
    /// Convert a DICOM series (folder, zip or multi-frame file) to NIfTI; `--list` shows the series.
    Convert(convert::Args),
    /// Export a training run as one model package file (weights + config + provenance).
    Export(export::Args),
    /// Show what a model holds: architecture, parameters, classes, preprocessing, window.
    Info(info::Args),
    /// Prepare a public data set (MSD task, TotalSegmentator v2) and print its datalist line.
    Prepare(prepare::Args),
    /// Run one forward pass of a SwinUNETR / Swin SMT model on a tensor (debugging ports).
    Forward(forward::Args),
}

fn main() -> ExitCode {
    medseg_ops::tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Predict(args) => predict::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Train(args) => medseg_train::cli::run(args),
        Command::CheckData(args) => check_data::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Convert(args) => convert::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => export::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Info(args) => info::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Prepare(args) => prepare::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Forward(args) => forward::run(&args).map(|()| ExitCode::SUCCESS),
    };
    // One line per error: the context chain, outermost first (no backtrace dump).
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

/// The configuration named by `--preset` or `--config` (predict and info share these flags), as the inference
/// settings of a training config; `None` when neither is given.
fn explicit_config(
    preset: Option<&str>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<Option<medseg_infer::ConfigSource>> {
    use anyhow::Context;
    use medseg_train::TrainConfig;
    Ok(match (preset, config) {
        (Some(p), _) => Some(medseg_infer::ConfigSource {
            config: TrainConfig::preset(p)
                .with_context(|| format!("loading preset {p}"))?
                .inference_config(),
            origin: format!("preset {p}"),
        }),
        (None, Some(c)) => {
            let text = std::fs::read_to_string(c)
                .with_context(|| format!("reading config {}", c.display()))?;
            let cfg = TrainConfig::from_toml(&text, c)?;
            Some(medseg_infer::ConfigSource {
                config: cfg.inference_config(),
                origin: c.display().to_string(),
            })
        }
        (None, None) => None,
    })
}
