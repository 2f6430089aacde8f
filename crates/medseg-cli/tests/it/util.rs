//! Shared fixtures: a tiny run folder with random weights, a synthetic CT sampled on any grid,
//! and helpers to run the `medseg` binary.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle::{DType, Device};
use candle_nn::VarMap;
use medseg_data::{Affine, Volume};
use medseg_train::seeded::SeededVarMap;
use medseg_train::{ModelConfig, TinyUnetConfig, TrainConfig, checkpoint};

/// Classes of the test model (background + 2).
pub const CLASSES: usize = 3;

/// The training config of the test runs: tiny U-Net (2 levels, 4 features), BTCV validation
/// pipeline at 2 mm, sliding window roi 16³, overlap 0.5, gaussian.
pub fn tiny_config(out_channels: usize) -> TrainConfig {
    let mut c = TrainConfig::preset("phantom").expect("phantom preset");
    c.model = ModelConfig::TinyUnet(TinyUnetConfig {
        in_channels: 1,
        out_channels,
        features: 4,
        levels: 2,
    });
    c.data.pixdim = [2.0, 2.0, 2.0];
    c.data.roi = [16; 3];
    c.inference.roi = [16; 3];
    c.output.progress = false;
    c
}

/// A run folder with `config.toml` and `checkpoints/best.safetensors` (seeded random weights).
pub fn make_run(dir: &Path, out_channels: usize, seed: u64) -> PathBuf {
    let run = dir.join(format!("run-{out_channels}-{seed}"));
    std::fs::create_dir_all(run.join("checkpoints")).expect("run folder");
    let cfg = tiny_config(out_channels);
    std::fs::write(run.join("config.toml"), cfg.to_toml().expect("toml")).expect("config");
    let varmap = VarMap::new();
    cfg.model
        .build(SeededVarMap::var_builder(&varmap, seed, DType::F32, &Device::Cpu))
        .expect("model");
    checkpoint::save_weights(&varmap, &run.join("checkpoints/best.safetensors"), 0)
        .expect("weights");
    run
}

/// HU of a synthetic abdomen at world point `p` (mm): air outside an ellipsoidal body, a
/// bright sphere and a darker one inside, and a deterministic ripple.
pub fn ct_hu(p: [f64; 3]) -> f32 {
    let body = (p[0] / 26.0).powi(2) + (p[1] / 20.0).powi(2) + (p[2] / 24.0).powi(2);
    if body > 1.0 {
        return -1000.0;
    }
    let d1 = ((p[0] - 8.0).powi(2) + (p[1] + 4.0).powi(2) + (p[2] - 5.0).powi(2)).sqrt();
    let d2 = ((p[0] + 10.0).powi(2) + (p[1] - 6.0).powi(2) + (p[2] + 6.0).powi(2)).sqrt();
    let ripple = 15.0 * (0.7 * p[0] + 0.3 * p[1] - 0.5 * p[2]).sin();
    let base = if d1 < 7.0 {
        220.0
    } else if d2 < 6.0 {
        -60.0
    } else {
        40.0
    };
    (base + ripple) as f32
}

/// `ct_hu` sampled on the grid `(shape, affine)`.
pub fn ct_volume(shape: [usize; 3], affine: Affine) -> Volume<f32> {
    Volume::from_fn(shape, affine, |i, j, k| ct_hu(affine.apply([i as f64, j as f64, k as f64])))
}

/// A RAS grid of `shape` voxels of `spacing` mm centred on the world origin.
pub fn ras_grid(shape: [usize; 3], spacing: [f64; 3]) -> Affine {
    let t: [f64; 3] = std::array::from_fn(|d| -(shape[d] as f64 - 1.0) / 2.0 * spacing[d]);
    Affine::from_parts([[spacing[0], 0.0, 0.0], [0.0, spacing[1], 0.0], [0.0, 0.0, spacing[2]]], t)
}

/// `medseg <args…>`; returns the output (success not checked).
pub fn medseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medseg")).args(args).output().expect("running medseg")
}

/// `medseg <args…>` that must succeed; returns stderr.
pub fn medseg_ok(args: &[&str]) -> String {
    let o = medseg(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "medseg {args:?} failed:\n{err}");
    err
}

/// `medseg <args…>` that must fail; returns stderr.
pub fn medseg_err(args: &[&str]) -> String {
    let o = medseg(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "medseg {args:?} should have failed:\n{err}");
    assert!(!err.contains("panicked"), "medseg {args:?} panicked:\n{err}");
    err
}

/// A path as `&str` for command lines.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Names of the entries of `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Flips C-ordered `data` of `shape` along the given axes.
pub fn flip3<T: Copy>(data: &[T], shape: [usize; 3], axes: &[usize]) -> Vec<T> {
    let f = |a: usize, i: usize| if axes.contains(&a) { shape[a] - 1 - i } else { i };
    let mut out = Vec::with_capacity(data.len());
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                out.push(data[(f(0, i) * shape[1] + f(1, j)) * shape[2] + f(2, k)]);
            }
        }
    }
    out
}
