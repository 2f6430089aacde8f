//! `cargo xtask gpu-bundle`: one folder (≤ 64 MiB) to run the CUDA tests and benches on a GPU
//! machine that has the CUDA 13 libraries but no Rust toolchain and no network.
//!
//! Builds (in `target/cuda`, with the `cuda-setup` toolchain) the `cuda` test binaries of the crates
//! with CUDA tests and the release binaries (`train`, `medseg`, the `bench_ops`/`bench_models`
//! examples), stripped, xz-compressed (a stripped CUDA binary is ≈ 40 MB, mostly candle's PTX; xz
//! makes it ≈ 5 MB), plus a few small inputs and `run.sh`, into `target/gpu-bundle/`. Fails if the
//! folder exceeds the size limit.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, cuda, project_root, run_cmd};

/// Crates whose test binaries carry CUDA tests (they skip with a printed reason on CPU); run.sh
/// runs only the tests whose name contains `cuda` (the others read fixtures from the source tree).
const TEST_CRATES: &[&str] = &["medseg-ops", "medseg-models"];

/// `(package, kind, name)` of the release binaries.
const BINARIES: &[(&str, &str, &str)] = &[
    ("medseg-train", "bin", "train"),
    ("medseg-cli", "bin", "medseg"),
    ("medseg-ops", "example", "cuda_bench"),
];

/// Small inputs copied into `data/` (relative to the project root).
const INPUTS: &[&str] = &[
    "crates/medseg-train/configs/phantom.toml",
    "crates/medseg-ops/tests/golden/ops.safetensors",
    "crates/medseg-data/tests/golden/nifti/sform_i16.nii.gz",
];

#[derive(clap::Args)]
pub struct Args {
    /// Output folder (default `target/gpu-bundle`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Size limit of the folder in MiB.
    #[arg(long, default_value_t = 64)]
    max_mib: u64,
    /// Toolchain prefix of `cargo xtask cuda-setup`.
    #[arg(long)]
    prefix: Option<PathBuf>,
    /// Compute capability for candle's kernels (H100/H200: 90).
    #[arg(long, default_value = "90")]
    compute_cap: String,
}

pub fn run(args: Args) -> Result<()> {
    let root = project_root();
    let out = args.out.unwrap_or_else(|| root.join("target/gpu-bundle"));
    let prefix = match args.prefix {
        Some(p) => p,
        None => cuda::default_prefix()?,
    };
    let mut env = cuda::build_env(&prefix, &args.compute_cap)?;
    // Stripped, no debug info: the bundle is size-limited.
    for profile in ["RELEASE", "BENCH"] {
        env.push((format!("CARGO_PROFILE_{profile}_STRIP"), "symbols".into()));
        env.push((format!("CARGO_PROFILE_{profile}_DEBUG"), "false".into()));
    }
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    for sub in ["tests", "bin", "data"] {
        std::fs::create_dir_all(out.join(sub))?;
    }

    // One `cargo test --no-run` builds the test binaries, the binaries (for integration tests)
    // and the examples with one feature resolution; its JSON messages name every executable.
    let mut cmd = cargo();
    cmd.args(["test", "--no-run", "--release", "--features", "cuda", "--message-format=json"]);
    for c in TEST_CRATES.iter().chain(BINARIES.iter().map(|(p, _, _)| p)) {
        cmd.args(["-p", c]);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let json = output_of(&mut cmd)?;
    let artifacts = executables(&json);
    let mut tests = 0;
    // The library unit-test binaries hold the `cuda` tests.
    let cuda_tests =
        |a: &&Artifact| a.test && a.kind == "lib" && TEST_CRATES.contains(&&*a.package);
    for a in artifacts.iter().filter(cuda_tests) {
        pack(&a.path, &out.join("tests"))?;
        tests += 1;
    }
    if tests == 0 {
        bail!("cargo test --no-run listed no test executables of {TEST_CRATES:?}");
    }
    for (package, kind, name) in BINARIES {
        let exe = artifacts
            .iter()
            .find(|a| !a.test && a.package == *package && a.kind == *kind && a.name == *name)
            .with_context(|| format!("no {kind} `{name}` of {package} in cargo's output"))?;
        pack(&exe.path, &out.join("bin"))?;
    }
    for input in INPUTS {
        let src = root.join(input);
        let name = src.file_name().context("input has a file name")?;
        std::fs::copy(&src, out.join("data").join(name))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    let script = out.join("run.sh");
    std::fs::write(&script, RUN_SH)?;
    run_cmd(Command::new("chmod").arg("+x").arg(&script))?;

    let bytes = folder_size(&out)?;
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if bytes > args.max_mib * 1024 * 1024 {
        bail!("gpu bundle {} is {mib:.1} MiB, over the {} MiB limit", out.display(), args.max_mib);
    }
    eprintln!("gpu-bundle: {} ({mib:.1} MiB ≤ {} MiB)", out.display(), args.max_mib);
    Ok(())
}

/// Runs `cmd` in the project root (stderr passed through) and returns its stdout.
fn output_of(cmd: &mut Command) -> Result<String> {
    cmd.current_dir(project_root()).stderr(std::process::Stdio::inherit());
    let out = cmd.output().context("starting cargo")?;
    if !out.status.success() {
        bail!("cargo failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One executable reported by cargo.
struct Artifact {
    path: PathBuf,
    /// Package name (from the package id `…/crates/<name>#0.0.0`).
    package: String,
    /// First target kind: `lib`, `bin`, `example`, `test`, …
    kind: String,
    /// Target name.
    name: String,
    /// Built with the test harness.
    test: bool,
}

/// The string value after `key` (`"key":"value"`) in `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let end = line[start..].find('"')?;
    Some(&line[start..start + end])
}

/// The compiler-artifact messages with an executable (cargo's JSON, one object per line).
fn executables(json: &str) -> Vec<Artifact> {
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(|line| {
            let path = PathBuf::from(field(line, "executable")?);
            let id = field(line, "package_id")?;
            let package = id.rsplit('/').next()?.split(['#', '@', ' ']).next()?.to_string();
            let target = &line[line.find("\"target\":")?..];
            let kind = target.split("\"kind\":[\"").nth(1)?.split('"').next()?.to_string();
            let name = field(target, "name")?.to_string();
            // The profile's `test` flag (the target object has its own `test` key).
            let profile = &line[line.find("\"profile\":{")?..];
            let test = profile[..profile.find('}')?].contains("\"test\":true");
            Some(Artifact { path, package, kind, name, test })
        })
        .collect()
}

/// Copies `exe` into `dir` as `<name>.xz` (xz -9, kept executable after decompression by run.sh).
fn pack(exe: &Path, dir: &Path) -> Result<()> {
    let name = exe.file_name().context("executable has a file name")?;
    let dest = dir.join(name);
    std::fs::copy(exe, &dest).with_context(|| format!("copying {}", exe.display()))?;
    run_cmd(Command::new("strip").arg(&dest))?;
    run_cmd(Command::new("xz").args(["-9", "-T1", "-f"]).arg(&dest))
}

fn folder_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() { folder_size(&e.path())? } else { meta.len() };
    }
    Ok(total)
}

/// The bundle's entry point on the GPU machine.
const RUN_SH: &str = r#"#!/usr/bin/env bash
# medseg GPU bundle (built by `cargo xtask gpu-bundle`). Needs an NVIDIA driver (libcuda.so.1) and
# the CUDA 13 libraries libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
# libnvrtc.so.13: set CUDA_LIBS to their folder if they are not on the loader path already.
# Usage: ./run.sh [tests|bench|train|all]   (default all). Logs go to ./logs/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
if [ -n "${CUDA_LIBS:-}" ]; then export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
mkdir -p logs
for f in tests/*.xz bin/*.xz; do
  [ -e "$f" ] || continue
  xz -dkf "$f" && chmod +x "${f%.xz}"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee logs/gpu.txt || true
what=${1:-all}
status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  for t in tests/*; do
    case "$t" in *.xz) continue;; esac
    echo "== $t"
    # --nocapture shows the "skipped, no CUDA device" lines if the device is missing.
    "$t" cuda --test-threads=1 --nocapture 2>&1 | tee "logs/$(basename "$t").txt" || status=1
  done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  ./bin/cuda_bench 2>&1 | tee logs/cuda_bench.jsonl || status=1
fi
if [ "$what" = train ] || [ "$what" = all ]; then
  timeout 900 ./bin/train --config data/phantom.toml --device cuda --out runs/phantom-cuda \
    2>&1 | tee logs/train.txt || status=1
fi
echo "run.sh: exit status $status (logs in $here/logs)"
exit $status
"#;
