//! `cargo xtask gpu-bundle`: one folder (≤ 64 MiB) to run the CUDA tests and benches on a GPU
//! machine that has the CUDA 13 libraries but no Rust toolchain and no network.
//!
//! Builds (in `target/cuda`, with the `cuda-setup` toolchain) the `cuda` test binaries of the crates
//! with CUDA tests and the release binaries (`train`, `medseg`, the `cuda_bench` and `bench_train`
//! examples), stripped, xz-compressed (a stripped CUDA binary is ≈ 40 MB, mostly candle's PTX; xz
//! makes it ≈ 5 MB), plus a few small inputs, the PyTorch comparison scripts with the pure-Python
//! wheels they need beyond torch and numpy (for an offline install), and `run.sh`, into
//! `target/gpu-bundle/`. Fails if the folder exceeds the size limit.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, cuda, project_root, reference_python, run_cmd};

/// Crates whose test binaries carry CUDA tests (they skip with a printed reason on CPU); run.sh
/// runs only the tests whose name contains `cuda` (the others read fixtures from the source tree).
const TEST_CRATES: &[&str] = &["medseg-ops", "medseg-models"];

/// `(package, kind, name)` of the release binaries.
const BINARIES: &[(&str, &str, &str)] = &[
    ("medseg-train", "bin", "train"),
    ("medseg-cli", "bin", "medseg"),
    ("medseg-ops", "example", "cuda_bench"),
    ("medseg-train", "example", "bench_train"),
];

/// The PyTorch comparison of `run.sh bench` (copied into `py/`): the script and the Swin SMT twin
/// it imports (the golden generator's `build_structure`).
const PY_FILES: &[&str] = &["tools/bench/train_monai.py", "tools/golden/models_golden.py"];

/// Pure-Python wheels the comparison needs besides torch and numpy (MONAI's only requirements;
/// einops is soft-moe-pytorch's), pinned as in tools/golden/requirements.txt. Fetched once with
/// `pip download` into `target/cuda/wheels` (about 1.7 MB) and copied into `py/wheels/`; `run.sh`
/// installs them with `pip install --no-deps --no-index --target py/site`.
const WHEELS: &[(&str, &str)] = &[
    ("monai==1.6.1", "monai-1.6.1-py3-none-any.whl"),
    ("einops==0.8.2", "einops-0.8.2-py3-none-any.whl"),
    ("soft-moe-pytorch==0.1.9", "soft_moe_pytorch-0.1.9-py3-none-any.whl"),
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
    for sub in ["tests", "bin", "data", "py/wheels"] {
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
    // The `cuda` tests: medseg-models' in its library unit tests, medseg-ops' in its integration
    // test binary (`tests/it/device.rs`, the `_cuda` instances of `test_device!`).
    let cuda_tests = |a: &&Artifact| {
        a.test
            && TEST_CRATES.contains(&&*a.package)
            && (a.kind == "lib"
                || (a.package == "medseg-ops" && a.kind == "test" && a.name == "it"))
    };
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
    for file in PY_FILES {
        let src = root.join(file);
        let name = src.file_name().context("script has a file name")?;
        std::fs::copy(&src, out.join("py").join(name))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    let cache = root.join("target/cuda/wheels");
    fetch_wheels(&cache)?;
    for (_, file) in WHEELS {
        std::fs::copy(cache.join(file), out.join("py/wheels").join(file))
            .with_context(|| format!("copying {}", cache.join(file).display()))?;
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

/// Downloads the missing [`WHEELS`] into `cache` with pip (the reference venv's, else `python3`'s;
/// no dependencies, wheels only).
fn fetch_wheels(cache: &Path) -> Result<()> {
    let missing: Vec<&str> =
        WHEELS.iter().filter(|(_, f)| !cache.join(f).exists()).map(|(spec, _)| *spec).collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let python = reference_python().unwrap_or_else(|| PathBuf::from("python3"));
    run_cmd(
        Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d"])
            .arg(cache)
            .args(&missing),
    )
    .with_context(|| format!("pip download {missing:?} (needs network once)"))?;
    for (_, file) in WHEELS {
        if !cache.join(file).exists() {
            bail!("pip download did not produce {}", cache.join(file).display());
        }
    }
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
# bench: BENCH_STEPS (timed training steps, default 10), BENCH_CASES (default base,smt),
# BENCH_DEVICE (default cuda), PYTHON (an interpreter with torch + numpy, default python3; MONAI,
# einops and soft-moe-pytorch come from py/wheels, installed into py/site without network).
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
  # Training steps on the GPU (docs/cuda.md §3): Swin UNETR fs48 @ 96³ (base) and Swin SMT @ 128³
  # (smt), one patch per step, f32 and bf16 mixed precision; median of BENCH_STEPS timed steps.
  steps=${BENCH_STEPS:-10}
  for p in f32 bf16; do
    rm -f "logs/bench_train_cuda_$p.json"
    ./bin/bench_train --device "${BENCH_DEVICE:-cuda}" --precision "$p" --cases "${BENCH_CASES:-base,smt}" \
      --steps "$steps" --out "logs/bench_train_cuda_$p.json" 2>&1 | tee "logs/bench_train_cuda_$p.txt" || status=1
  done
  # The same steps in PyTorch eager (f32, and bf16 AMP) with MONAI 1.6.1 from py/wheels, offline.
  py=${PYTHON:-python3}
  if ! "$py" -c 'import torch, numpy' >/dev/null 2>&1; then
    echo "run.sh: $py cannot import torch and numpy: PyTorch comparison skipped (set PYTHON=...)" | tee logs/bench_monai.txt
  elif ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "run.sh: torch sees no CUDA device: PyTorch comparison skipped" | tee logs/bench_monai.txt
    status=1
  else
    if [ ! -d py/site/monai ]; then
      "$py" -m pip install --no-deps --no-index --target py/site py/wheels/*.whl >logs/pip.txt 2>&1 \
        || "$py" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall("py/site") for w in sys.argv[1:]]' py/wheels/*.whl \
        || status=1
    fi
    export PYTHONPATH="$here/py/site:$here/py${PYTHONPATH:+:$PYTHONPATH}"
    tables=()
    for p in f32 bf16; do
      if [ ! -e "logs/bench_train_cuda_$p.json" ]; then
        echo "run.sh: no logs/bench_train_cuda_$p.json: skipping its comparison"
        continue
      fi
      amp=()
      if [ "$p" = bf16 ]; then amp=(--amp); fi
      "$py" py/train_monai.py --rust-json "logs/bench_train_cuda_$p.json" --device "${BENCH_DEVICE:-cuda}" ${amp[@]+"${amp[@]}"} \
        --out "logs/bench_train_cuda_$p.monai.json" 2>&1 | tee "logs/bench_monai_$p.txt" || status=1
      if [ -e "logs/bench_train_cuda_$p.monai.json" ]; then tables+=("logs/bench_train_cuda_$p.monai.json"); fi
    done
    if [ ${#tables[@]} -gt 0 ]; then
      "$py" py/train_monai.py --table "${tables[@]}" 2>&1 | tee logs/bench_train_table.md || status=1
    fi
  fi
fi
if [ "$what" = train ] || [ "$what" = all ]; then
  timeout 900 ./bin/train --config data/phantom.toml --device cuda --out runs/phantom-cuda \
    2>&1 | tee logs/train.txt || status=1
fi
echo "run.sh: exit status $status (logs in $here/logs)"
exit $status
"#;

#[cfg(test)]
mod tests {
    use super::{BINARIES, INPUTS, PY_FILES, RUN_SH, WHEELS};
    use crate::project_root;

    #[test]
    fn run_sh_is_valid_bash() {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", RUN_SH])
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "run.sh: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn bundled_files_exist_and_run_sh_uses_them() {
        for f in INPUTS.iter().chain(PY_FILES) {
            assert!(project_root().join(f).exists(), "{f} is missing");
        }
        // Every bundled binary but `medseg` (shipped for manual use) is run by run.sh.
        for (_, _, name) in BINARIES.iter().filter(|(_, _, n)| *n != "medseg") {
            assert!(RUN_SH.contains(&format!("./bin/{name} ")), "run.sh never runs bin/{name}");
        }
        for f in PY_FILES {
            let name = f.rsplit('/').next().unwrap_or(f);
            assert!(
                RUN_SH.contains(&format!("py/{name}")) || name == "models_golden.py",
                "run.sh never uses py/{name}"
            );
        }
        for (spec, file) in WHEELS {
            let (pkg, version) = spec.split_once("==").expect("pinned spec");
            assert!(file.starts_with(&format!("{}-{version}-", pkg.replace('-', "_"))), "{file}");
        }
    }
}
