//! Forward and forward+backward time and peak RSS of SwinUNETR on CPU (f32, batch 1, random
//! weights), one fresh child process per configuration so `VmHWM` is that configuration's peak.
//!
//! `cargo run --release -p medseg-models --example bench_models -- --out target/bench/models.json
//!  [--configs fs12@64:fwd,fs12@64:train,...] [--reps 3]`
//! Mode `bf16` is the inference forward with `Precision::Bf16` (bf16 convolution products on CPUs
//! with AVX-512 BF16); the MONAI side times it under `torch.autocast("cpu", torch.bfloat16)`.
//! Writes a JSON array of `{fs, size, mode, median_s, times_s, median_cpu_s, cpu_s, peak_rss_mb}`
//! (`cpu_s`: process CPU seconds per repetition, which on a shared machine track the work where
//! wall time also counts the waiting);
//! `tools/bench/models_monai.py --rust-json PATH` times MONAI on the same list.
use std::path::PathBuf;
use std::time::Instant;

use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::{SwinUnetr, SwinUnetrConfig};
use medseg_testkit::bench::{arg, child_record, cpu_seconds, peak_rss_mb};

/// The default list: fits in ≈ 5 min on 2 cores.
const DEFAULT: &str = "fs12@64:fwd,fs12@64:train,fs24@64:fwd,fs24@64:train,fs48@96:fwd";

fn parse_spec(spec: &str) -> anyhow::Result<(usize, usize, String)> {
    let (model, mode) = spec.split_once(':').unwrap_or((spec, "fwd"));
    let (fs, size) = model
        .strip_prefix("fs")
        .and_then(|m| m.split_once('@'))
        .ok_or_else(|| anyhow::anyhow!("bad config {spec:?}: expected fsN@S[:fwd|train|bf16]"))?;
    if !["fwd", "train", "bf16"].contains(&mode) {
        anyhow::bail!("bad mode {mode:?} in {spec:?}: expected fwd, train or bf16")
    }
    Ok((fs.parse()?, size.parse()?, mode.to_string()))
}

/// Child: runs one configuration and prints one JSON object.
fn child(spec: &str, reps: usize) -> anyhow::Result<()> {
    medseg_ops::tune_allocator();
    let (fs, size, mode) = parse_spec(spec)?;
    let cfg = SwinUnetrConfig { feature_size: fs, ..SwinUnetrConfig::monai_default(1, 14) };
    let varmap = VarMap::new();
    let model = SwinUnetr::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    // Inference runs on detached weights so no autograd graph keeps activations alive.
    let model = if mode != "train" {
        SwinUnetr::new(&cfg, medseg_models::frozen_var_builder(&varmap)?)?
    } else {
        model
    };
    let x = Tensor::randn(0f32, 1f32, (1, 1, size, size, size), &Device::Cpu)?;
    let mut times = Vec::with_capacity(reps);
    let mut cpu = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let c = cpu_seconds();
        let out = if mode == "bf16" {
            medseg_ops::with_precision(medseg_ops::Precision::Bf16, || model.forward_t(&x, false))?
        } else {
            model.forward_t(&x, mode == "train")?
        };
        if mode == "train" {
            let g = out.sqr()?.mean_all()?.backward()?;
            drop(g);
        }
        drop(out);
        times.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mut cpu_sorted = cpu.clone();
    cpu_sorted.sort_by(f64::total_cmp);
    let rec = serde_json::json!({
        "fs": fs, "size": size, "mode": mode, "median_s": median, "times_s": times,
        "median_cpu_s": cpu_sorted[cpu_sorted.len() / 2], "cpu_s": cpu,
        "peak_rss_mb": peak_rss_mb(), "threads": std::env::var("RAYON_NUM_THREADS").ok(),
    });
    println!("{rec}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = arg(&args, "--reps").map(|r| r.parse()).transpose()?.unwrap_or(3);
    if let Some(spec) = arg(&args, "--child") {
        return child(&spec, reps);
    }
    let out = PathBuf::from(arg(&args, "--out").unwrap_or("target/bench/models.json".into()));
    let configs = arg(&args, "--configs").unwrap_or(DEFAULT.into());
    let mut results = Vec::new();
    for spec in configs.split(',').filter(|s| !s.is_empty()) {
        let (fs, size, _) = parse_spec(spec)?;
        // fs48 at 96³ costs ≈ 1 min per forward on 2 cores: one repetition unless `--reps` says.
        let big = fs * size * size * size > 24 * 64 * 64 * 64;
        let r = if big && arg(&args, "--reps").is_none() { 1 } else { reps };
        eprintln!("bench {spec} ({r} reps)");
        let args = ["--child", spec, "--reps", &r.to_string()].map(String::from);
        let v = child_record(&args, spec).map_err(anyhow::Error::msg)?;
        eprintln!("  {v}");
        results.push(v);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
