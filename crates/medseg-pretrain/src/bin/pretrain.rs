//! The `pretrain` binary (`cargo xtask pretrain`): self-supervised pretraining of the Swin UNETR
//! encoder from a TOML config or a preset. With no arguments it runs the `phantom` preset:
//! generates the phantom under `data/phantom/` if absent and writes `runs/pretrain_phantom-<stamp>/`.
//! Fine-tune from the result with `cargo xtask train --config … --init-from RUN/checkpoints/last.safetensors`.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use medseg_pretrain::{PretrainConfig, Pretrainer, RunOptions};
use medseg_train::device_from_str;

/// Self-supervised pretraining of the Swin UNETR encoder (config fields: docs/pretraining.md).
#[derive(Debug, Parser)]
#[command(name = "pretrain", version)]
struct Args {
    /// TOML config file, or a preset name: phantom (default), research.
    #[arg(long, default_value = "phantom")]
    config: String,
    /// Device override: cpu, cuda, cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Seed override.
    #[arg(long)]
    seed: Option<u64>,
    /// Output folder override (receives the run folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Step count override (`train.max_steps`).
    #[arg(long)]
    steps: Option<u64>,
    /// Continue the run in this folder from its last checkpoint (uses the run's config.toml).
    #[arg(long, conflicts_with_all = ["config", "seed", "out", "steps"])]
    resume: Option<PathBuf>,
}

fn main() -> Result<()> {
    medseg_ops::tune_allocator();
    let args = Args::parse();
    let stop = medseg_run::stop::install_stop_handler()?;
    let mut pre = match &args.resume {
        Some(dir) => {
            let path = dir.join("config.toml");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cfg_dev = PretrainConfig::from_toml(&text, &path)?.device;
            let device = device_from_str(args.device.as_deref().unwrap_or(&cfg_dev))?;
            Pretrainer::resume(dir, device)
                .with_context(|| format!("resuming {}", dir.display()))?
        }
        None => {
            let mut cfg = PretrainConfig::load(&args.config)
                .with_context(|| format!("loading config {}", args.config))?;
            if let Some(d) = &args.device {
                cfg.device = d.clone();
            }
            if let Some(s) = args.seed {
                cfg.seed = s;
            }
            if let Some(o) = &args.out {
                cfg.output.dir = o.clone();
            }
            if let Some(n) = args.steps {
                cfg.train.max_steps = n;
            }
            let device = device_from_str(&cfg.device)?;
            let p = Pretrainer::new(cfg.resolve()?, device)?;
            eprintln!("run folder: {}", p.run_dir().display());
            p
        }
    };
    let outcome = pre.run(&RunOptions { stop: Some(Arc::clone(&stop)), stop_after: None })?;
    if outcome.interrupted {
        eprintln!(
            "stopped at step {}; checkpoint saved. resume with: cargo xtask pretrain --resume {}",
            outcome.step,
            outcome.run_dir.display()
        );
        std::process::exit(130);
    }
    let h = &pre.state().history;
    if let (Some(a), Some(b)) = (h.first(), h.last()) {
        println!(
            "loss step {}: {:.4} (rot {:.4}, contrast {:.4}, recon {:.4}) -> step {}: {:.4} (rot {:.4}, contrast {:.4}, recon {:.4})",
            a.step, a.loss, a.rot, a.contrast, a.recon, b.step, b.loss, b.rot, b.contrast, b.recon
        );
    }
    println!(
        "encoder for fine-tuning: {}",
        outcome.run_dir.join("checkpoints/last.safetensors").display()
    );
    println!("run folder: {}", outcome.run_dir.display());
    Ok(())
}
