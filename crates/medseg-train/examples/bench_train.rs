//! Training-step and sliding-window speed of the presets' models on CPU (f32, random weights and
//! data), one fresh child process per case so `VmHWM` is that case's peak.
//!
//! `cargo run --release -p medseg-train --example bench_train -- --out target/bench/train.json
//!  [--cases tiny,base] [--steps N]`
//!
//! Cases (shapes from the presets, so the numbers follow them):
//! - `tiny`: the `phantom` preset (the `cargo xtask train` default): its model, its patch batch
//!   (`batch_size × num_samples` patches of `data.roi`), and sliding-window inference with its
//!   `[inference]` settings over a 64³ volume (the phantom's size);
//! - `base`: the `btcv` preset's model (Swin UNETR fs48) with one 96³ patch per step (the recipe's
//!   4 patches per step would take minutes per step on 2 cores) and one 96³ window.
//!
//! A step is what the trainer does: forward, MONAI DiceCE loss, backward, AdamW update. The first
//! step is a warm-up and is not timed. `tools/bench/train_monai.py --rust-json PATH` runs MONAI's
//! loop on the same shapes and prints both side by side.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_train::loss::segmentation_loss;
use medseg_train::{AdamW, Grads, TrainConfig, sliding_window_inference};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// (preset, patches per step, training patch, sliding-window volume, default timed steps).
fn case(name: &str) -> anyhow::Result<(TrainConfig, usize, [usize; 3], [usize; 3], usize)> {
    match name {
        "tiny" => {
            let cfg = TrainConfig::preset("phantom")?;
            let b = cfg.data.batch_size * cfg.data.num_samples;
            let roi = cfg.data.roi;
            Ok((cfg, b, roi, [64, 64, 64], 5))
        }
        "base" => {
            let cfg = TrainConfig::preset("btcv")?;
            Ok((cfg, 1, [96, 96, 96], [96, 96, 96], 2))
        }
        other => anyhow::bail!("unknown case {other:?}: expected tiny or base"),
    }
}

/// Child: runs one case and prints one JSON object.
fn child(name: &str, steps: Option<usize>) -> anyhow::Result<()> {
    medseg_ops::tune_allocator();
    let (cfg, batch, roi, volume, default_steps) = case(name)?;
    let steps = steps.unwrap_or(default_steps).max(1);
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = cfg.model.build(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mut opt = AdamW::from_varmap(&varmap, cfg.optim.clone())?;
    let nc = cfg.model.out_channels();
    let x =
        Tensor::randn(0f32, 1f32, (batch, cfg.model.in_channels(), roi[0], roi[1], roi[2]), &dev)?;
    // Labels in blocks (not i.i.d. noise) so the Dice terms see realistic foreground fractions.
    let n = roi.iter().product::<usize>();
    let y: Vec<f32> = (0..batch * n).map(|i| ((i % n) * nc / n) as f32).collect();
    let y = Tensor::from_vec(y, (batch, 1, roi[0], roi[1], roi[2]), &dev)?;
    let lcfg = cfg.loss.dice_ce();
    let mut step_times = Vec::with_capacity(steps);
    for s in 0..=steps {
        let t = Instant::now();
        let logits = model.forward_t(&x, true)?;
        let loss = segmentation_loss(cfg.loss.kind, &logits, &y, &lcfg)?;
        let g = loss.backward()?;
        let mut grads = Grads::new();
        grads.accumulate(&g, opt.vars().map(|(_, v)| v), 1.0)?;
        drop(g);
        opt.step(&grads)?;
        if s > 0 {
            step_times.push(t.elapsed().as_secs_f64());
        }
    }
    drop(opt);
    // Inference on detached weights, as the trainer's validation and `medseg predict` do.
    let frozen = cfg.model.build(medseg_models::frozen_var_builder(&varmap)?)?;
    let vol = Tensor::randn(
        0f32,
        1f32,
        (1, cfg.model.in_channels(), volume[0], volume[1], volume[2]),
        &dev,
    )?;
    let mut sw_times = Vec::new();
    for _ in 0..if name == "tiny" { 3 } else { 1 } {
        let t = Instant::now();
        let out =
            sliding_window_inference(&vol, &cfg.inference, |w| Ok(frozen.forward_t(w, false)?))?;
        drop(out);
        sw_times.push(t.elapsed().as_secs_f64());
    }
    let step = median(&step_times);
    let rec = serde_json::json!({
        "case": name,
        "model": cfg.model,
        "loss": cfg.loss.kind,
        "optim": cfg.optim,
        "batch": batch,
        "patch": roi,
        "step_median_s": step,
        "steps_per_s": 1.0 / step,
        "step_times_s": step_times,
        "sw_volume": volume,
        "inference": cfg.inference,
        "sw_median_s": median(&sw_times),
        "sw_times_s": sw_times,
        "peak_rss_mb": peak_rss_mb(),
    });
    println!("{rec}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: Option<usize> = arg(&args, "--steps").map(|r| r.parse()).transpose()?;
    if let Some(name) = arg(&args, "--child") {
        return child(&name, steps);
    }
    let out = PathBuf::from(arg(&args, "--out").unwrap_or("target/bench/train.json".into()));
    let cases = arg(&args, "--cases").unwrap_or("tiny,base".into());
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for name in cases.split(',').filter(|s| !s.is_empty()) {
        case(name)?;
        eprintln!("bench train {name}");
        let mut cmd = Command::new(&exe);
        cmd.args(["--child", name]);
        if let Some(s) = steps {
            cmd.args(["--steps", &s.to_string()]);
        }
        let o = cmd.output()?;
        if !o.status.success() {
            anyhow::bail!("{name} failed: {}", String::from_utf8_lossy(&o.stderr))
        }
        let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim())?;
        eprintln!(
            "  step {:.3} s ({:.3} steps/s), sliding window {:.3} s/volume, peak RSS {:.0} MB",
            v["step_median_s"].as_f64().unwrap_or(f64::NAN),
            v["steps_per_s"].as_f64().unwrap_or(f64::NAN),
            v["sw_median_s"].as_f64().unwrap_or(f64::NAN),
            v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        );
        results.push(v);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
