//! `cargo xtask train [--gpus N] [args]`: builds medseg-train in release and runs its `train`
//! binary. With no arguments it trains the embedded default (tiny Swin UNETR on a generated
//! phantom, CPU).
//!
//! `--gpus N` (must come first) is data-parallel training on N GPUs of this machine
//! (docs/cuda.md §5): `train` is built with `--features nccl` (with the `cuda-setup` toolchain when
//! one is installed), then N processes start, rank `r` with `MEDSEG_RANK=r`,
//! `MEDSEG_WORLD_SIZE=N`, `MEDSEG_LOCAL_RANK=r` (GPU `cuda:r`) and one shared run folder
//! (`--run-dir`, or the `--resume` folder), where rank 0 writes the NCCL rendezvous file. Ctrl-C is
//! forwarded to every rank once per press (the first one makes them save and stop after the same
//! step); when a rank fails the others are killed; each rank's exit is printed.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{cargo, cuda, project_root, run_cmd};

#[derive(clap::Args)]
pub struct Args {
    /// Data-parallel training on this many GPUs of this machine (one `train` process each, NCCL).
    /// Must come before the `train` arguments.
    #[arg(long)]
    gpus: Option<usize>,
    /// Arguments passed through to the `train` binary (e.g. `--config FILE`, `--resume RUN`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(gpus) = args.gpus {
        return run_gpus(gpus, &args.rest);
    }
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "medseg-train", "--bin", "train", "--"]);
    cmd.args(&args.rest);
    run_cmd(&mut cmd)
}

/// What every rank of a `--gpus N` launch gets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Launch {
    /// The shared run folder (holds the NCCL rendezvous file `nccl-id`).
    run_dir: PathBuf,
    /// The `train` arguments, the same for every rank.
    args: Vec<String>,
    /// Per rank: the launcher variables.
    envs: Vec<Vec<(String, String)>>,
}

/// The value of `--name VALUE` or `--name=VALUE` in `args`.
fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name { args.get(i + 1).map(String::as_str) } else { a.strip_prefix(&prefix) }
    })
}

/// The launcher variables of rank `rank` of `gpus` processes on one machine.
fn rank_env(rank: usize, gpus: usize) -> Vec<(String, String)> {
    vec![
        ("MEDSEG_RANK".into(), rank.to_string()),
        ("MEDSEG_WORLD_SIZE".into(), gpus.to_string()),
        ("MEDSEG_LOCAL_RANK".into(), rank.to_string()),
    ]
}

/// Plans a launch of `gpus` ranks with the user's `train` arguments `rest`; a fresh run folder is
/// `<--out or runs>/<config name>-<gpus>gpu-<stamp>` under `cwd`.
fn plan_launch(gpus: usize, rest: &[String], cwd: &Path, stamp: u64) -> Result<Launch> {
    if gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    if let Some(d) = flag_value(rest, "--device")
        && d != "cuda"
        && !d.starts_with("cuda:")
    {
        bail!("--gpus {gpus} trains on cuda:0..{}; drop --device {d}", gpus - 1);
    }
    let mut args = rest.to_vec();
    if flag_value(rest, "--device").is_none() {
        args.extend(["--device".into(), "cuda".into()]);
    }
    let run_dir = if let Some(r) = flag_value(rest, "--resume") {
        cwd.join(r)
    } else if let Some(r) = flag_value(rest, "--run-dir") {
        cwd.join(r)
    } else {
        let config = flag_value(rest, "--config").unwrap_or("phantom");
        let name = Path::new(config)
            .file_stem()
            .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
        let out = cwd.join(flag_value(rest, "--out").unwrap_or("runs"));
        let dir = out.join(format!("{name}-{gpus}gpu-{stamp}"));
        args.extend(["--run-dir".into(), dir.display().to_string()]);
        dir
    };
    let envs = (0..gpus).map(|r| rank_env(r, gpus)).collect();
    Ok(Launch { run_dir, args, envs })
}

/// Builds `train` with `--features nccl` and runs the ranks of [`plan_launch`].
fn run_gpus(gpus: usize, rest: &[String]) -> Result<()> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let launch = plan_launch(gpus, rest, &cwd, stamp)?;

    // The cuda-setup toolchain when installed and no CUDA is configured already.
    let mut build_env: Vec<(String, String)> = Vec::new();
    let mut run_libs: Vec<PathBuf> = Vec::new();
    if std::env::var_os("CUDA_HOME").is_none()
        && let Ok(prefix) = cuda::default_prefix()
        && let Ok(env) = cuda::build_env(&prefix, "90")
    {
        build_env = env;
        // At run time the real driver's libcuda.so.1 must win: the toolchain's libraries, not
        // its stubs.
        run_libs.push(cuda::cuda_home(&prefix)?.join("lib"));
        run_libs.extend(cuda::nccl_lib(&prefix).ok());
    }
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "medseg-train",
        "--bin",
        "train",
        "--features",
        "nccl",
    ]);
    build.envs(build_env.iter().map(|(k, v)| (k, v)));
    run_cmd(&mut build).context("building `train` with --features nccl (needs the CUDA toolchain and libnccl: `cargo xtask cuda-setup`)")?;
    let target = build_env
        .iter()
        .find(|(k, _)| k == "CARGO_TARGET_DIR")
        .map(|(_, v)| PathBuf::from(v))
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| project_root().join("target"));
    let exe = target.join("release/train");

    std::fs::create_dir_all(&launch.run_dir)
        .with_context(|| format!("creating {}", launch.run_dir.display()))?;
    // A rendezvous file left by a crashed launch would hand the ranks a dead id.
    let stale = launch.run_dir.join("nccl-id");
    if stale.exists() {
        std::fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
    }
    let ld_path = {
        let mut parts: Vec<String> = run_libs.iter().map(|p| p.display().to_string()).collect();
        parts.extend(std::env::var("LD_LIBRARY_PATH").ok().filter(|p| !p.is_empty()));
        parts.join(":")
    };
    let presses = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&presses);
    ctrlc::set_handler(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;

    eprintln!("train --gpus {gpus}: run folder {}", launch.run_dir.display());
    let mut ranks: Vec<(usize, Child)> = Vec::with_capacity(gpus);
    for (rank, env) in launch.envs.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.args(&launch.args).envs(env.iter().map(|(k, v)| (k, v)));
        if !ld_path.is_empty() {
            cmd.env("LD_LIBRARY_PATH", &ld_path);
        }
        // Its own process group: a terminal Ctrl-C reaches only this launcher, which forwards it
        // exactly once per press (a second SIGINT makes `train` exit without saving).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("starting rank {rank}: {}", exe.display()));
        match child {
            Ok(c) => ranks.push((rank, c)),
            Err(e) => {
                kill_all(&mut ranks);
                return Err(e);
            }
        }
    }
    let statuses = supervise(&mut ranks, &presses)?;
    let failed: Vec<String> = statuses
        .iter()
        .filter(|(_, s)| !s.success())
        .map(|(r, s)| format!("rank {r}: {s}"))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    if statuses.iter().all(|(_, s)| s.code() == Some(130)) {
        bail!(
            "stopped by Ctrl-C (checkpoint saved); continue with: cargo xtask train --gpus {gpus} --resume {}",
            launch.run_dir.display()
        );
    }
    bail!("data-parallel training failed: {}", failed.join(", "))
}

/// Waits for every rank, forwarding Ctrl-C presses and killing the others when one fails; returns
/// each rank's exit status (rank order).
fn supervise(
    ranks: &mut [(usize, Child)],
    presses: &AtomicUsize,
) -> Result<Vec<(usize, ExitStatus)>> {
    let mut done: Vec<Option<ExitStatus>> = vec![None; ranks.len()];
    let mut forwarded = 0;
    let mut killing = false;
    loop {
        let pressed = presses.load(Ordering::SeqCst);
        while forwarded < pressed {
            forwarded += 1;
            for (i, (_, child)) in ranks.iter().enumerate() {
                if done[i].is_none() {
                    // std has no way to send SIGINT; `kill` is in every Unix base system.
                    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
                }
            }
        }
        for (i, (rank, child)) in ranks.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            if let Some(status) =
                child.try_wait().with_context(|| format!("waiting for rank {rank}"))?
            {
                eprintln!("train --gpus: rank {rank} exited: {status}");
                // 130 is a Ctrl-C stop (every rank stops after the same step).
                if !status.success() && status.code() != Some(130) && !killing {
                    eprintln!("train --gpus: rank {rank} failed; stopping the other ranks");
                    killing = true;
                }
                done[i] = Some(status);
            }
        }
        if killing {
            for (i, (_, child)) in ranks.iter_mut().enumerate() {
                if done[i].is_none() {
                    let _ = child.kill();
                }
            }
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(ranks.iter().zip(done).filter_map(|((r, _), s)| Some((*r, s?))).collect())
}

/// Kills and reaps every started rank (a later one failed to start).
fn kill_all(ranks: &mut [(usize, Child)]) {
    for (_, child) in ranks.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_rank_gets_its_variables_and_the_same_run_folder() {
        let cwd = Path::new("/work/x");
        let l = plan_launch(2, &strings(&["--config", "cfg/btcv.toml"]), cwd, 1700).expect("plan");
        assert_eq!(l.run_dir, Path::new("/work/x/runs/btcv-2gpu-1700"));
        assert_eq!(
            l.args,
            strings(&[
                "--config",
                "cfg/btcv.toml",
                "--device",
                "cuda",
                "--run-dir",
                "/work/x/runs/btcv-2gpu-1700"
            ])
        );
        let var = |r: usize, k: &str| {
            l.envs[r].iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).expect("set")
        };
        assert_eq!(l.envs.len(), 2);
        for r in 0..2 {
            assert_eq!(var(r, "MEDSEG_RANK"), r.to_string());
            assert_eq!(var(r, "MEDSEG_LOCAL_RANK"), r.to_string());
            assert_eq!(var(r, "MEDSEG_WORLD_SIZE"), "2");
        }
    }

    #[test]
    fn resume_out_and_explicit_folders_are_respected() {
        let cwd = Path::new("/w");
        let l = plan_launch(4, &strings(&["--resume", "runs/a"]), cwd, 1).expect("resume");
        assert_eq!(l.run_dir, Path::new("/w/runs/a"));
        assert_eq!(l.args, strings(&["--resume", "runs/a", "--device", "cuda"]));
        let l =
            plan_launch(2, &strings(&["--out=/tmp/o", "--device", "cuda:1"]), cwd, 9).expect("out");
        assert_eq!(l.run_dir, Path::new("/tmp/o/phantom-2gpu-9"));
        assert!(!l.args.iter().any(|a| a == "cuda"), "the user's --device is kept: {:?}", l.args);
        let l = plan_launch(2, &strings(&["--run-dir", "/r/x"]), cwd, 9).expect("run dir");
        assert_eq!((l.run_dir.as_path(), l.args.len()), (Path::new("/r/x"), 4));
    }

    #[test]
    fn impossible_launches_are_one_line_errors() {
        let cwd = Path::new("/w");
        let e = plan_launch(2, &strings(&["--device", "cpu"]), cwd, 1).expect_err("cpu");
        assert!(e.to_string().contains("cuda:0..1") && !e.to_string().contains('\n'), "{e}");
        assert!(plan_launch(0, &[], cwd, 1).is_err());
    }
}
