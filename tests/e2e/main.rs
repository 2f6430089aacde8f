//! End-to-end tests through the real `medseg` binary (the workspace's top-level `tests/`, owned by
//! medseg-cli so that Cargo builds the binary first): train a few steps on the generated phantom,
//! segment its validation cases with the trained run, score them; and an interrupted run resumed
//! to the end reproduces the uninterrupted loss sequence.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use medseg_train::{ModelConfig, TinyUnetConfig, TrainConfig};

/// A tiny U-Net on 32³ patches of the phantom: `steps` optimiser steps, a checkpoint every step,
/// validation at the end; the data set is generated under `dir/phantom` on first use.
fn tiny_run_config(dir: &Path, steps: u64) -> PathBuf {
    let mut c = TrainConfig::preset("phantom_unet").expect("phantom_unet preset");
    c.model = ModelConfig::TinyUnet(TinyUnetConfig {
        in_channels: 1,
        out_channels: 6,
        features: 4,
        levels: 2,
    });
    c.data.datalist = dir.join("phantom/dataset.json");
    c.data.roi = [32; 3];
    c.data.num_workers = 1;
    c.inference.roi = [32; 3];
    c.train.max_steps = steps;
    c.train.val_every = steps;
    c.train.checkpoint_every = 1;
    c.output.dir = dir.join("runs");
    c.output.progress = false;
    c.output.overlays = false;
    let path = dir.join(format!("tiny-{steps}.toml"));
    std::fs::write(&path, c.to_toml().expect("toml")).expect("writing the config");
    path
}

fn medseg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medseg"))
}

fn ok(out: Output, what: &str) -> String {
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The only run folder under `runs`.
fn only_run(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .expect("runs folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "expected one run folder in {}: {dirs:?}", runs.display());
    dirs[0].clone()
}

/// Training loss per step from a run's `metrics.csv`.
fn losses(run: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("metrics.csv header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect("metrics.csv column");
    let (step, loss) = (col("step"), col("loss"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[step].parse().expect("step"), f[loss].to_string())
        })
        .collect()
}

#[test]
fn train_then_predict_then_eval() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tiny_run_config(tmp.path(), 3);
    ok(medseg().args(["train", "--config", s(&cfg)]).output().expect("medseg train"), "train");
    let run = only_run(&tmp.path().join("runs"));
    assert_eq!(losses(&run).len(), 3, "one metrics row per step");

    // The phantom's validation cases: images into one folder, labels into another.
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("phantom/dataset.json")).expect("dataset.json"),
    )
    .expect("dataset.json is JSON");
    let (images, gt, pred) =
        (tmp.path().join("val_img"), tmp.path().join("val_gt"), tmp.path().join("pred"));
    for d in [&images, &gt] {
        std::fs::create_dir(d).expect("folder");
    }
    let val = list["validation"].as_array().expect("validation list");
    assert!(!val.is_empty());
    for case in val {
        for (key, dest) in [("image", &images), ("label", &gt)] {
            let src = tmp.path().join("phantom").join(case[key].as_str().expect("path"));
            let name = src.file_name().expect("file name");
            std::fs::copy(&src, dest.join(name)).expect("copying a validation case");
        }
    }

    ok(
        medseg()
            .args(["predict", "-i", s(&images), "-o", s(&pred), "--model", s(&run)])
            .output()
            .expect("medseg predict"),
        "predict",
    );
    // bf16 convolution products: the same command succeeds and says which precision ran (bf16
    // with AVX-512 BF16, else f32); an unknown precision is a usage error naming the value.
    let pred_bf16 = tmp.path().join("pred_bf16");
    let out = medseg()
        .args(["predict", "-i", s(&images), "-o", s(&pred_bf16), "--model", s(&run)])
        .args(["--precision", "bf16"])
        .output()
        .expect("medseg predict --precision bf16");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out, "predict --precision bf16");
    assert!(err.contains("precision: bf16"), "the run names its precision:\n{err}");
    assert_eq!(
        std::fs::read_dir(&pred_bf16).expect("bf16 predictions").count(),
        val.len(),
        "one bf16 prediction per validation image"
    );
    let bad = medseg()
        .args(["predict", "-i", s(&images), "-o", s(&pred_bf16), "--model", s(&run)])
        .args(["--precision", "f16"])
        .output()
        .expect("medseg predict --precision f16");
    assert!(!bad.status.success(), "--precision f16 must fail");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"f16\""), "the error names the value");

    let report = tmp.path().join("report.json");
    let text = ok(
        medseg()
            .args([
                "eval",
                "--pred",
                s(&pred),
                "--gt",
                s(&gt),
                "--classes",
                "6",
                "--dice-only",
                "--out",
                s(&report),
            ])
            .output()
            .expect("medseg eval"),
        "eval",
    );
    assert!(text.contains("| dice |"), "eval prints a Dice table:\n{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report.json"))
            .expect("JSON report");
    let cases = json["cases"].as_array().expect("report.json has cases");
    assert_eq!(cases.len(), val.len(), "one scored case per validation image");
}

#[test]
fn an_interrupted_run_resumes_to_the_uninterrupted_losses() {
    const STEPS: u64 = 6;
    let tmp = tempfile::tempdir().expect("tempdir");

    // Uninterrupted reference.
    let a = tmp.path().join("a");
    std::fs::create_dir(&a).expect("folder");
    let cfg_a = tiny_run_config(&a, STEPS);
    ok(medseg().args(["train", "--config", s(&cfg_a)]).output().expect("medseg train"), "train a");
    let want = losses(&only_run(&a.join("runs")));
    assert_eq!(want.len() as u64, STEPS);

    // The same run, stopped by Ctrl-C (SIGINT) once its first step is logged, then resumed.
    let b = tmp.path().join("b");
    std::fs::create_dir(&b).expect("folder");
    let cfg_b = tiny_run_config(&b, STEPS);
    let mut child = medseg()
        .args(["train", "--config", s(&cfg_b)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("medseg train");
    let start = Instant::now();
    let interrupted = loop {
        if let Some(status) = child.try_wait().expect("waiting for train") {
            break status;
        }
        let logged = std::fs::read_dir(b.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("metrics.csv").exists());
        if logged {
            let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            assert!(sent.is_ok_and(|s| s.success()), "sending SIGINT");
            break child.wait().expect("waiting for train");
        }
        assert!(start.elapsed() < Duration::from_secs(300), "train never logged a step");
        std::thread::sleep(Duration::from_millis(20));
    };
    let run_b = only_run(&b.join("runs"));
    eprintln!("train b exited with {interrupted} after {} steps", losses(&run_b).len());
    if interrupted.code() == Some(130) {
        assert!((losses(&run_b).len() as u64) < STEPS, "an interrupted run stops early");
        ok(
            medseg()
                .args(["train", "--resume", s(&run_b)])
                .output()
                .expect("medseg train --resume"),
            "resume",
        );
    } else {
        // The run finished before the signal reached it: nothing to resume, same check below.
        assert!(interrupted.success(), "train b exited with {interrupted}");
    }
    assert_eq!(losses(&run_b), want, "resumed losses differ from the uninterrupted run");
}
