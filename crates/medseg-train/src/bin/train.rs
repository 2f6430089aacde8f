//! The `train` binary (`cargo xtask train`): trains a segmentation network from a TOML config or a
//! preset. With no arguments it runs the `phantom` preset: generates the synthetic phantom under
//! `data/phantom/` if absent and writes the run to `runs/phantom-<timestamp>/`.
//! A thin wrapper over [`medseg_train::cli`], which `medseg train` shares.
use std::process::ExitCode;

use clap::Parser;
use medseg_train::cli::TrainArgs;

/// Train a 3-D segmentation network (config fields: docs/training.md).
#[derive(Debug, Parser)]
#[command(name = "train", version)]
struct Args {
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> anyhow::Result<ExitCode> {
    medseg_ops::tune_allocator();
    medseg_train::cli::run(Args::parse().train)
}
