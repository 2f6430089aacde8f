//! Whole-CT inference, the job a deployer runs: `medseg predict` on the shared abdomen/pelvis CT
//! (`../shared/data/ts-abdomen-pelvis-3mm/ct.nii.gz`) with the BTCV recipe's preprocessing
//! (RAS, 1.5×1.5×2 mm, HU −175…250 → 0…1) and window (roi 96, overlap 0.5, sw_batch_size 4,
//! Gaussian blending), Swin UNETR fs48 with seeded random weights (speed does not depend on
//! them), back to the input grid and written as NIfTI. `tools/bench/wholect_monai.py` runs
//! MONAI's equivalent (transforms, `sliding_window_inference`, `Invertd`, `SaveImage`) on the
//! same file and weights.
//!
//! `cargo run --release -p medseg-cli --example bench_wholect -- --medseg target/release/medseg
//!  --out target/bench/wholect.json [--reps N] [--crop X,Y,Z] [--precision P] [--work DIR]`
//!
//! Each rep is one `medseg predict` process: its wall time (process start to exit, model
//! loading and file I/O included) and its peak resident memory (`ru_maxrss` from `wait4`).
//! `--crop X,Y,Z` predicts a centred sub-box of the input grid (voxels) instead of the whole CT,
//! for quick runs; `--precision P` is passed on to `medseg predict` (`--precision`), when the
//! binary has the flag. Without the shared data the bench prints why and writes no record.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle::{DType, Device};
use candle_nn::VarMap;
use medseg_data::Volume;
use medseg_data::nifti_io::{read_volume, write_volume};
use medseg_data::spatial::crop;
use medseg_testkit::bench::{arg, parse_dims};
use medseg_train::{BlendMode, TrainConfig, seeded::SeededVarMap};

/// One `medseg predict` process: wall seconds and peak RSS in MiB.
fn run_predict(bin: &Path, args: &[String], log: &Path) -> Result<(f64, f64)> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let t = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value; `wait4` fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is a child of this process that nothing else waits for.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    if r != pid {
        bail!("wait4 on {pid}: {}", std::io::Error::last_os_error())
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!("medseg predict failed (status {status}); its log:\n{text}")
    }
    Ok((secs, usage.ru_maxrss as f64 / 1024.0))
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(arg(&args, "--out").unwrap_or("target/bench/wholect.json".into()));
    let bin = PathBuf::from(arg(&args, "--medseg").unwrap_or("target/release/medseg".into()));
    let work = PathBuf::from(arg(&args, "--work").unwrap_or("target/bench-wholect".into()));
    let reps: usize = arg(&args, "--reps").map_or(Ok(1), |r| r.parse()).context("--reps")?;
    let crop_box = arg(&args, "--crop")
        .map(|c| parse_dims("--crop", &c).map_err(anyhow::Error::msg))
        .transpose()?;
    let precision = arg(&args, "--precision");
    let Some(data) = medseg_testkit::shared_data_dir(env!("CARGO_MANIFEST_DIR")) else {
        eprintln!("bench wholect skipped: no shared data folder, so no CT to predict");
        return Ok(());
    };
    let ct = data.join("ts-abdomen-pelvis-3mm/ct.nii.gz");
    if !ct.exists() {
        eprintln!("bench wholect skipped: {} does not exist", ct.display());
        return Ok(());
    }
    if !bin.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p medseg-cli`",
            bin.display()
        )
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // The input: the CT, or a centred box of it.
    let original: Volume<f32> =
        read_volume(&ct).with_context(|| format!("reading {}", ct.display()))?;
    let input = match crop_box {
        None => ct.clone(),
        Some(size) => {
            let shape = original.shape();
            let start: [isize; 3] =
                std::array::from_fn(|d| (shape[d] as isize - size[d] as isize).max(0) / 2);
            let size: [usize; 3] = std::array::from_fn(|d| size[d].min(shape[d]));
            let path = work.join(format!("ct_{}x{}x{}.nii.gz", size[0], size[1], size[2]));
            write_volume(&path, &crop(&original, start, size, 0f32)?)?;
            path
        }
    };
    let input_shape =
        if crop_box.is_some() { read_volume::<f32>(&input)?.shape() } else { original.shape() };
    // The BTCV preset with Gaussian blending, and seeded random fs48 weights.
    let mut cfg = TrainConfig::preset("btcv")?;
    cfg.inference.mode = BlendMode::Gaussian;
    let config = work.join("btcv_gaussian.toml");
    std::fs::write(&config, cfg.to_toml()?)
        .with_context(|| format!("writing {}", config.display()))?;
    let weights = work.join("swin_unetr_fs48_seed0.safetensors");
    let varmap = VarMap::new();
    cfg.model.build(SeededVarMap::var_builder(&varmap, 0, DType::F32, &Device::Cpu))?;
    varmap.save(&weights).with_context(|| format!("writing {}", weights.display()))?;
    let prediction = work.join("medseg_pred.nii.gz");
    let mut cmd: Vec<String> = vec!["predict".into(), "-i".into(), input.display().to_string()];
    cmd.extend(["-o".into(), prediction.display().to_string()]);
    cmd.extend(["--model".into(), weights.display().to_string()]);
    cmd.extend(["--config".into(), config.display().to_string()]);
    if let Some(p) = &precision {
        cmd.extend(["--precision".into(), p.clone()]);
    }
    eprintln!(
        "bench wholect: {} {:?} (input {:?}), {reps} rep(s)",
        bin.display(),
        cmd,
        input_shape
    );
    let mut times = Vec::with_capacity(reps);
    let mut peak: f64 = 0.0;
    for r in 0..reps.max(1) {
        if prediction.exists() {
            std::fs::remove_file(&prediction)?;
        }
        let (secs, rss) = run_predict(&bin, &cmd, &work.join("medseg_predict.log"))?;
        eprintln!("  rep {r}: {secs:.1} s, peak RSS {rss:.0} MiB");
        times.push(secs);
        peak = peak.max(rss);
    }
    let rec = serde_json::json!({
        "case": "wholect",
        "input": input,
        "input_shape": input_shape,
        "crop": crop_box,
        "weights": weights,
        "config": config,
        "model": cfg.model,
        "pixdim": cfg.data.pixdim,
        "a_min": cfg.data.a_min,
        "a_max": cfg.data.a_max,
        "inference": cfg.inference,
        "precision": precision.unwrap_or_else(|| "f32".into()),
        "medseg_cmd": cmd,
        "prediction": prediction,
        "times_s": times,
        "median_s": median(&times),
        "peak_rss_mb": peak,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&rec)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
