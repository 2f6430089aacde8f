//! The command line of training, shared by the `train` binary (`cargo xtask train`) and
//! `medseg train`: [`TrainArgs`] (clap) and [`run`]. With no arguments the `phantom` preset runs:
//! the synthetic phantom is generated under `data/phantom/` if absent and the run is written to
//! `runs/phantom-<timestamp>/`.
//!
//! Ctrl-C sets a stop flag: the loop finishes the current step, saves `last` and [`run`] returns
//! exit status 130; a second Ctrl-C exits at once without saving.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use crate::{RunOptions, TrainConfig, Trainer, device_from_str};

/// Arguments of training (config fields: docs/training.md).
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// TOML config file, or a preset name: phantom (default), phantom_unet, btcv, msd_spleen,
    /// totalseg_smt.
    #[arg(long, default_value = "phantom")]
    pub config: String,
    /// Device override: cpu, cuda, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Seed override.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output folder override (receives the run folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (uses the run's config.toml).
    #[arg(long, conflicts_with_all = ["config", "seed", "out"])]
    pub resume: Option<PathBuf>,
    /// Start the Swin encoder from a pretrained checkpoint (`train.init_from`): a medseg-pretrain
    /// run's checkpoint or MONAI's `model_swinvit.pt`.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
}

/// Installs the process-wide Ctrl-C handler of the training binaries: the first Ctrl-C sets the
/// returned flag (the loop saves a checkpoint after the current step and returns), a second one
/// exits with status 130 without saving. Call it once per process.
pub fn install_stop_handler() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: saving a checkpoint after the current step (press again to abort)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Trains (or resumes) as `args` say; prints the final validation Dice and the run folder.
///
/// Returns exit status 0 for a complete run and 130 when Ctrl-C stopped it (checkpoint saved).
/// Installs a process-wide Ctrl-C handler, so call it once per process.
pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let stop = install_stop_handler()?;
    let mut trainer = match &args.resume {
        Some(dir) => {
            let cfg_dev = TrainConfig::from_toml(
                &std::fs::read_to_string(dir.join("config.toml"))
                    .with_context(|| format!("reading {}", dir.join("config.toml").display()))?,
                &dir.join("config.toml"),
            )?
            .device;
            let device = device_from_str(args.device.as_deref().unwrap_or(&cfg_dev))?;
            Trainer::resume(dir, device).with_context(|| format!("resuming {}", dir.display()))?
        }
        None => {
            let mut cfg = TrainConfig::load(&args.config)
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
            if let Some(p) = &args.init_from {
                cfg.train.init_from = Some(p.clone());
            }
            let device = device_from_str(&cfg.device)?;
            let plan = cfg.resolve()?;
            eprintln!("run folder: {}", plan.run_dir.display());
            Trainer::new(plan, device)?
        }
    };
    let opts = RunOptions { stop: Some(Arc::clone(&stop)), stop_after: None };
    let outcome = trainer.run(&opts)?;
    if outcome.interrupted {
        eprintln!(
            "stopped at step {}; checkpoint saved. resume with: cargo xtask train --resume {}",
            outcome.step,
            outcome.run_dir.display()
        );
        return Ok(ExitCode::from(130));
    }
    if let Some(rep) = &outcome.report {
        let mean = rep.mean.first().map_or(0.0, |r| r.value);
        println!("final validation mean Dice {mean:.4}");
        for c in &rep.per_class {
            println!("  {:<14} Dice {:.4}", c.name, c.values[0].value);
        }
    }
    println!("run folder: {}", outcome.run_dir.display());
    Ok(ExitCode::SUCCESS)
}
