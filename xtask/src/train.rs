//! `cargo xtask train [args]`: builds medseg-train in release and runs its `train` binary.
//! With no arguments it trains the embedded default (tiny Swin UNETR on a generated phantom, CPU).
use anyhow::{Result, bail};

use crate::{cargo, project_root, run_cmd};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments passed through to the `train` binary (e.g. `--config FILE`, `--resume RUN`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if !project_root().join("crates/medseg-train").exists() {
        bail!("training is not in this build yet: it lands with issue 6 (crates/medseg-train)");
    }
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "medseg-train", "--bin", "train", "--"]);
    cmd.args(&args.rest);
    run_cmd(&mut cmd)
}
