//! `cargo xtask test`: the whole workspace test suite on CPU (what CI runs).
use anyhow::Result;

use crate::{cargo, run_cmd};

#[derive(clap::Args)]
pub struct Args {
    /// Also run the slow variants (the NIfTI fuzz with 102,000 mutated inputs instead of 600):
    /// sets MEDSEG_SLOW_TESTS=1.
    #[arg(long)]
    slow: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--locked"]);
    if args.slow {
        cmd.env("MEDSEG_SLOW_TESTS", "1");
    }
    run_cmd(&mut cmd)
}
