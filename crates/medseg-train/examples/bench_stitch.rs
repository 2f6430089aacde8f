//! Peak memory and time of sliding-window stitching into a label map, full vs streamed: what
//! `medseg predict` did before (`sliding_window_inference`, the scores copied out, argmax) and
//! what it does now (`sliding_window_argmax`). One fresh child process per mode, so `VmHWM` is
//! that mode's peak.
//!
//! `cargo run --release -p medseg-train --example bench_stitch -- [--volume D,H,W] [--classes K]
//!  [--out PATH]`
//!
//! The window settings are the `totalseg_smt` preset's (roi 128³, overlap 0.5, gaussian,
//! sw batch 1); the default is its 118 classes over a 160×160×320 volume (a 24 × 24 × 64 cm field of view at the preset's 1.5 × 1.5 × 2 mm). The predictor is a
//! per-channel affine map of the window (no network, one output buffer per window), so the numbers are the stitching alone;
//! a real run adds the model's own memory to both modes.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle::{Device, Tensor};
use medseg_testkit::bench::{arg, child_record, parse_dims, peak_rss_mb};
use medseg_train::{TrainConfig, sliding_window_argmax, sliding_window_inference};

/// Child: stitches once in `mode` and prints one JSON object.
fn child(mode: &str, volume: [usize; 3], classes: usize) -> anyhow::Result<()> {
    medseg_ops::tune_allocator(); // as the `medseg` and `train` binaries
    let cfg = TrainConfig::preset("totalseg_smt")?.inference;
    let dev = Device::Cpu;
    // Seeded, so both children stitch the same input.
    let x = medseg_testkit::random_tensor(&[1, 1, volume[0], volume[1], volume[2]], 1, &dev)?;
    // score_k(v) = sin(0.37k − 3)·x(v) + cos(1.3·sin(0.37k − 3)): one `[n, K, roi]` buffer per
    // call, like a network's output layer.
    let scale: Vec<f32> = (0..classes).map(|k| (0.37 * k as f32 - 3.0).sin()).collect();
    let predictor = |t: &Tensor| {
        let (n, _, d, h, w) = t.dims5()?;
        let xs: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let vox = d * h * w;
        let mut out = Vec::with_capacity(n * classes * vox);
        for item in xs.chunks(vox) {
            for a in &scale {
                let b = (1.3 * a).cos();
                out.extend(item.iter().map(|v| a * v + b));
            }
        }
        Ok(Tensor::from_vec(out, (n, classes, d, h, w), t.device())?)
    };
    let t = Instant::now();
    let labels: Vec<u8> = match mode {
        "full" => {
            // predict's former path: the scores, copied to a channel-major buffer, argmax.
            let y = sliding_window_inference(&x, &cfg, predictor)?;
            let p: Vec<f32> = y.flatten_all()?.to_vec1()?;
            drop(y);
            let n = p.len() / classes;
            let mut best = vec![0u8; n];
            let mut val = p[..n].to_vec();
            for (c, row) in p.chunks(n).enumerate().skip(1) {
                for ((b, m), &v) in best.iter_mut().zip(val.iter_mut()).zip(row) {
                    if v > *m {
                        *m = v;
                        *b = c as u8;
                    }
                }
            }
            best
        }
        "stream" => sliding_window_argmax(&x, &cfg, predictor)?.flatten_all()?.to_vec1()?,
        other => anyhow::bail!("unknown mode {other:?}: expected full or stream"),
    };
    let secs = t.elapsed().as_secs_f64();
    // A checksum so both modes can be compared (they must give the same labels).
    let checksum: u64 =
        labels.iter().enumerate().map(|(i, &l)| (i as u64 % 977 + 1) * l as u64).sum();
    let rec = serde_json::json!({
        "mode": mode,
        "volume": volume,
        "classes": classes,
        "inference": cfg,
        "seconds": secs,
        "peak_rss_mb": peak_rss_mb(),
        "scores_gb": (classes * volume.iter().product::<usize>() * 4) as f64 / 1e9,
        "labels_checksum": checksum,
    });
    println!("{rec}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let volume = arg(&args, "--volume")
        .map(|v| parse_dims("--volume", &v).map_err(anyhow::Error::msg))
        .transpose()?
        .unwrap_or([160, 160, 320]);
    let classes: usize = arg(&args, "--classes")
        .map(|c| c.parse().with_context(|| format!("--classes {c:?}")))
        .transpose()?
        .unwrap_or(118);
    if !(2..=256).contains(&classes) {
        anyhow::bail!("--classes must be in 2..=256 (u8 labels), got {classes}");
    }
    if let Some(mode) = arg(&args, "--child") {
        return child(&mode, volume, classes);
    }
    let out = PathBuf::from(arg(&args, "--out").unwrap_or("target/bench/stitch.json".into()));
    let mut results = Vec::new();
    for mode in ["full", "stream"] {
        eprintln!("bench stitch {mode}: {classes} classes over {volume:?}");
        let args = [
            "--child".to_string(),
            mode.to_string(),
            "--classes".to_string(),
            classes.to_string(),
            "--volume".to_string(),
            format!("{},{},{}", volume[0], volume[1], volume[2]),
        ];
        let v = child_record(&args, mode).map_err(anyhow::Error::msg)?;
        eprintln!(
            "  {:.1} s, peak RSS {:.0} MB (scores alone {:.2} GB)",
            v["seconds"].as_f64().unwrap_or(f64::NAN),
            v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            v["scores_gb"].as_f64().unwrap_or(f64::NAN),
        );
        results.push(v);
    }
    if results[0]["labels_checksum"] != results[1]["labels_checksum"] {
        anyhow::bail!(
            "full and streamed label maps differ (checksums {} vs {})",
            results[0]["labels_checksum"],
            results[1]["labels_checksum"]
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
