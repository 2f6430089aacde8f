//! `cargo xtask`: the project's task runner. It links no ML crate; every task shells out to cargo
//! (and, for comparisons, to the reference Python venv when one exists).
mod bench;
mod cuda;
mod golden;
mod gpu_bundle;
#[cfg(test)]
mod layers;
mod pretrain;
mod test;
#[cfg(test)]
mod tidy;
mod train;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "medseg task runner")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the test suite (the README's test command).
    Test(test::Args),
    /// Run benchmarks and write JSON under target/bench/.
    Bench(bench::Args),
    /// Train a model (the embedded default: a tiny Swin UNETR on a generated phantom, CPU).
    Train(train::Args),
    /// Install the CUDA 13 build toolchain from PyPI wheels (no GPU needed); see docs/cuda.md.
    CudaSetup(cuda::Args),
    /// Build stripped `cuda` test/release binaries + inputs + run.sh into target/gpu-bundle.
    GpuBundle(gpu_bundle::Args),
    /// Self-supervised pretraining of the Swin encoder (embedded default: the phantom, CPU).
    Pretrain(pretrain::Args),
    /// Regenerate golden files from PyTorch/MONAI (needs the reference venv; never run in CI).
    Golden(golden::Args),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test(a) => test::run(a),
        Task::Bench(a) => bench::run(a),
        Task::Train(a) => train::run(a),
        Task::Golden(a) => golden::run(a),
        Task::Pretrain(a) => pretrain::run(a),
        Task::CudaSetup(a) => cuda::run(a),
        Task::GpuBundle(a) => gpu_bundle::run(a),
    }
}

/// The workspace root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs `cmd` in the project root, echoing it, and fails with its exit status.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(project_root());
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo` as invoked by the user (respects `$CARGO`).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The reference Python (PyTorch + MONAI) if present: `$MEDSEG_REF_PYTHON`, else
/// `~/.venvs/ref/bin/python`.
pub fn reference_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MEDSEG_REF_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".venvs/ref/bin/python");
    p.exists().then_some(p)
}
