//! `cargo xtask train`: builds the `medseg` binary in release and runs `medseg train`.
use anyhow::{Result, bail};

use crate::project_root;

#[derive(clap::Args)]
pub struct Args {
    /// Arguments passed through to `medseg train` (e.g. `--config FILE`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let cli = project_root().join("crates/medseg-train");
    if !cli.exists() {
        bail!(
            "training is not in this build yet: it lands with issue 6 (medseg-train); \
             arguments given: {:?}",
            args.rest
        );
    }
    let mut cmd = crate::cargo();
    cmd.args(["run", "--release", "-p", "medseg-cli", "--bin", "medseg", "--", "train"]);
    cmd.args(&args.rest);
    crate::run_cmd(&mut cmd)
}
