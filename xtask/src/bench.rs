//! `cargo xtask bench [ops|models|metrics|data|train|stitch|all]`: release benchmarks writing
//! `target/bench/<suite>.json`, followed by the PyTorch/MONAI comparison script of the suite (when
//! it has one) when the reference venv exists.
use std::process::Command;

use anyhow::Result;

use crate::{cargo, project_root, reference_python, run_cmd};

#[derive(clap::Args)]
pub struct Args {
    /// Which suite to run.
    #[arg(value_enum, default_value = "all")]
    suite: Suite,
    /// Extra arguments for the Rust benchmark binary (e.g. `--quick`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Suite {
    Ops,
    Models,
    Metrics,
    Data,
    Train,
    /// Sliding-window stitching of 118 classes: full scores vs streamed argmax (memory).
    Stitch,
    All,
}

/// (suite, package, example, `target/bench/<name>.json`, comparison script)
const SUITES: [(Suite, &str, &str, &str, Option<&str>); 6] = [
    (Suite::Ops, "medseg-ops", "bench_ops", "ops", Some("tools/bench/ops_torch.py")),
    (Suite::Models, "medseg-models", "bench_models", "models", Some("tools/bench/models_monai.py")),
    (
        Suite::Metrics,
        "medseg-metrics",
        "bench_metrics",
        "metrics",
        Some("tools/bench/metrics_monai.py"),
    ),
    (Suite::Data, "medseg-data", "bench_data", "data", Some("tools/bench/data_nibabel.py")),
    (Suite::Train, "medseg-train", "bench_train", "train", Some("tools/bench/train_monai.py")),
    (Suite::Stitch, "medseg-train", "bench_stitch", "stitch", None),
];

/// Scratch folder of the data benchmark (its NIfTI files are shared with the Python side).
const DATA_WORKDIR: &str = "target/bench-data";

pub fn run(args: Args) -> Result<()> {
    let root = project_root();
    std::fs::create_dir_all(root.join("target/bench"))?;
    for (suite, package, example, name, script) in SUITES {
        if args.suite != Suite::All && args.suite != suite {
            continue;
        }
        let crate_dir = package.trim_start_matches("medseg-");
        let example_file = root.join(format!("crates/medseg-{crate_dir}/examples/{example}.rs"));
        if !example_file.exists() {
            eprintln!("skipping {package}: {} does not exist yet", example_file.display());
            continue;
        }
        let json = format!("target/bench/{name}.json");
        let mut cmd = cargo();
        cmd.args(["run", "--release", "--quiet", "-p", package, "--example", example, "--"]);
        // The data benchmark takes positional arguments: a work folder and the JSON path.
        if suite == Suite::Data {
            cmd.args([DATA_WORKDIR, &json]);
        } else {
            cmd.args(["--out", &json]);
        }
        run_cmd(cmd.args(&args.rest))?;
        let Some(script) = script else { continue };
        match reference_python() {
            Some(py) if root.join(script).exists() => {
                let mut py = Command::new(py);
                if suite == Suite::Data {
                    py.args([script, DATA_WORKDIR, "target/bench/data.python.json"]);
                } else {
                    py.args([script, "--rust-json", &json]);
                }
                run_cmd(&mut py)?
            }
            Some(_) => eprintln!("no comparison script {script}"),
            None => eprintln!(
                "no reference venv (~/.venvs/ref or MEDSEG_REF_PYTHON): skipping the PyTorch comparison"
            ),
        }
    }
    Ok(())
}
