//! `medseg`: the command-line entry point. One module per subcommand; only `forward` exists so
//! far (train, predict and eval are added by their crates' owners).
use clap::{Parser, Subcommand};

mod forward;

/// medseg — 3-D medical image segmentation in Rust.
#[derive(Debug, Parser)]
#[command(name = "medseg", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one forward pass of a SwinUNETR / Swin SMT model on a tensor (debugging ports).
    Forward(forward::Args),
}

fn main() -> anyhow::Result<()> {
    medseg_ops::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Forward(args) => forward::run(&args),
    }
}
