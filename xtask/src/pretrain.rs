//! `cargo xtask pretrain [args]`: builds medseg-pretrain in release and runs its `pretrain` binary.
//! With no arguments it pretrains the SSL head on the generated phantom (CPU, a few minutes).
use anyhow::Result;

use crate::{cargo, run_cmd};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments passed through to the `pretrain` binary (e.g. `--config research`, `--resume RUN`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "medseg-pretrain", "--bin", "pretrain", "--"]);
    cmd.args(&args.rest);
    run_cmd(&mut cmd)
}
