//! The command line of training, shared by the `train` binary (`cargo xtask train`) and
//! `medseg train`: [`TrainArgs`] (clap) and [`run`]. With no arguments the `phantom` preset runs:
//! the synthetic phantom is generated under `data/phantom/` if absent and the run is written to
//! `runs/phantom-<timestamp>/`.
//!
//! Ctrl-C sets a stop flag: the loop finishes the current step, saves a checkpoint and [`run`]
//! returns exit status 130; a second Ctrl-C exits at once, and the last complete checkpoint stays
//! usable (medseg-run `stop`, `checkpoint`).
//!
//! Data parallel (docs/cuda.md §5): with `MEDSEG_WORLD_SIZE` > 1 (and `MEDSEG_RANK`,
//! `MEDSEG_LOCAL_RANK`, set by `cargo xtask train --gpus N` or a cluster launcher) this process is
//! one rank: it trains on `cuda:{MEDSEG_LOCAL_RANK}`, in the shared `--run-dir` (or `--resume`
//! folder), and joins the others through NCCL (feature `nccl`).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use medseg_run::checkpoint::Fault;

use crate::distributed::{GradientReducer, World};
use crate::{RunOptions, TrainConfig, Trainer, device_from_str};

/// How long ranks other than 0 wait for rank 0's NCCL rendezvous file.
pub const RENDEZVOUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

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
    /// Use exactly this run folder instead of `<out>/<name>-<timestamp>`: the ranks of a
    /// multi-GPU run must share one (`cargo xtask train --gpus N` passes it).
    #[arg(long, conflicts_with = "resume")]
    pub run_dir: Option<PathBuf>,
}

/// The device of this rank: `requested` for a single process; `cuda:{local_rank}` in a world of
/// several ranks, which needs a `cuda` request.
pub fn rank_device(requested: &str, world: &World) -> Result<String> {
    if world.world_size == 1 {
        return Ok(requested.to_string());
    }
    if requested != "cuda" && !requested.starts_with("cuda:") {
        anyhow::bail!(
            "MEDSEG_WORLD_SIZE={} (multi-GPU data parallel) needs device = \"cuda\", got {requested:?}",
            world.world_size
        );
    }
    Ok(world.cuda_device())
}

/// Connects this rank to the others (NCCL, rendezvous file in `run_dir`); `None` for a single
/// process.
#[cfg(feature = "nccl")]
fn connect(
    world: World,
    device: &candle::Device,
    run_dir: &std::path::Path,
) -> Result<Option<Box<dyn GradientReducer>>> {
    if world.world_size == 1 {
        return Ok(None);
    }
    let id = crate::distributed::id_file(run_dir);
    eprintln!("rank {}/{}: NCCL rendezvous through {}", world.rank, world.world_size, id.display());
    let r = crate::cuda_nccl::NcclReducer::connect(world, device, &id, RENDEZVOUS_TIMEOUT)
        .with_context(|| format!("rank {}: joining the NCCL world", world.rank))?;
    Ok(Some(Box::new(r)))
}

/// Without the `nccl` feature only the single-process world exists.
#[cfg(not(feature = "nccl"))]
fn connect(
    world: World,
    _device: &candle::Device,
    _run_dir: &std::path::Path,
) -> Result<Option<Box<dyn GradientReducer>>> {
    if world.world_size == 1 {
        return Ok(None);
    }
    anyhow::bail!(
        "MEDSEG_WORLD_SIZE={} asks for multi-GPU training, but this binary was built without the \
         `nccl` feature (build with `--features nccl`, as `cargo xtask train --gpus N` does)",
        world.world_size
    )
}

/// The test-only environment variable through which the fault tests cut checkpoint saves
/// (`abort:<step>:<point>` or `disk_full:<bytes>`; medseg-run `checkpoint::Fault::parse`).
/// Real runs never set it.
pub const FAULT_VAR: &str = "MEDSEG_TEST_CHECKPOINT_FAULT";

/// The checkpoint fault requested by [`FAULT_VAR`], if any.
fn checkpoint_fault() -> Result<Option<Fault>> {
    match std::env::var(FAULT_VAR) {
        Ok(v) => Fault::parse(&v).map(Some).with_context(|| {
            format!("{FAULT_VAR}={v:?}: expected abort:<step>:<point> or disk_full:<bytes>")
        }),
        Err(_) => Ok(None),
    }
}

/// Trains (or resumes) as `args` say; prints the final validation Dice and the run folder.
///
/// Returns exit status 0 for a complete run and 130 when Ctrl-C stopped it (checkpoint saved).
/// Installs a process-wide Ctrl-C handler, so call it once per process.
pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let world = World::from_vars(|k| std::env::var(k).ok())
        .context("reading MEDSEG_RANK / MEDSEG_WORLD_SIZE / MEDSEG_LOCAL_RANK")?;
    let stop = medseg_run::stop::install_stop_handler()?;
    let checkpoint_fault = checkpoint_fault()?;
    let mut trainer = match &args.resume {
        Some(dir) => {
            let cfg_dev = TrainConfig::from_toml(
                &std::fs::read_to_string(dir.join("config.toml"))
                    .with_context(|| format!("reading {}", dir.join("config.toml").display()))?,
                &dir.join("config.toml"),
            )?
            .device;
            let device =
                device_from_str(&rank_device(args.device.as_deref().unwrap_or(&cfg_dev), &world)?)?;
            let reducer = connect(world, &device, dir)?;
            Trainer::resume_in_world(dir, device, reducer)
                .with_context(|| format!("resuming {}", dir.display()))?
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
            cfg.device = rank_device(&cfg.device, &world)?;
            let device = device_from_str(&cfg.device)?;
            let mut plan = cfg.resolve()?;
            match &args.run_dir {
                Some(d) => {
                    plan.run_dir = std::path::absolute(d)
                        .with_context(|| format!("resolving {}", d.display()))?;
                    plan.fresh_run_dir = false;
                    // Every rank needs the folder for the rendezvous file.
                    std::fs::create_dir_all(&plan.run_dir)
                        .with_context(|| format!("creating {}", plan.run_dir.display()))?;
                }
                None if world.world_size > 1 => anyhow::bail!(
                    "MEDSEG_WORLD_SIZE={}: every rank needs the same --run-dir (or --resume)",
                    world.world_size
                ),
                None => {}
            }
            let reducer = connect(world, &device, &plan.run_dir)?;
            let t = Trainer::new_in_world(plan, device, reducer)?;
            if world.is_writer() {
                eprintln!("run folder: {}", t.run_dir().display());
            }
            t
        }
    };
    trainer.set_checkpoint_fault(checkpoint_fault);
    let opts = RunOptions { stop: Some(Arc::clone(&stop)), stop_after: None };
    let outcome = trainer.run(&opts)?;
    if !world.is_writer() {
        return Ok(if outcome.interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS });
    }
    if outcome.interrupted {
        let gpus = match world.world_size {
            1 => String::new(),
            n => format!("--gpus {n} "),
        };
        eprintln!(
            "stopped at step {}; checkpoint saved. resume with: cargo xtask train {gpus}--resume {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_train_on_their_local_gpu_and_refuse_cpu() {
        let w = World::new(3, 4, 1).expect("world");
        assert_eq!(rank_device("cuda", &w).expect("cuda"), "cuda:1");
        assert_eq!(rank_device("cuda:0", &w).expect("cuda:0"), "cuda:1", "local rank wins");
        let e = rank_device("cpu", &w).expect_err("cpu").to_string();
        assert!(e.contains("MEDSEG_WORLD_SIZE=4") && e.contains("cuda"), "{e}");
        assert_eq!(rank_device("cpu", &World::SINGLE).expect("single"), "cpu");
    }

    #[cfg(not(feature = "nccl"))]
    #[test]
    fn a_world_without_the_nccl_feature_is_one_clear_error() {
        let w = World::new(0, 2, 0).expect("world");
        let dir = std::path::Path::new("unused");
        let e = connect(w, &candle::Device::Cpu, dir).err().expect("no nccl").to_string();
        assert!(!e.contains('\n') && e.contains("--features nccl"), "{e}");
        assert!(connect(World::SINGLE, &candle::Device::Cpu, dir).expect("single").is_none());
    }
}
