//! Fault tests of the run machinery through the real `train` binary: checkpoint saves cut at
//! every point (an injected abort between and inside files, and randomised real SIGKILLs) resume
//! to the uninterrupted loss sequence; two processes started together into one `--out` get two
//! folders; a live run's folder is refused; outputs respect the umask; a killed run's temporary
//! files are cleaned by the next run in the folder.
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle::Device;
use medseg_run::checkpoint::{SavePoint, resume_point};
use medseg_train::{RunOptions, Trainer};
use rand::{Rng, SeedableRng};

use crate::train_loop::tiny_config;

const STEPS: u64 = 5;

/// A TOML config for the child: the tiny test run, a checkpoint every step, validation only at
/// the end.
fn child_config(dir: &Path) -> PathBuf {
    let mut c = tiny_config(dir, STEPS);
    c.train.checkpoint_every = 1;
    c.train.val_every = 1000;
    c.output.overlays = false;
    let path = dir.join("tiny.toml");
    std::fs::write(&path, c.to_toml().expect("toml")).expect("write config");
    path
}

fn train(args: &[&std::ffi::OsStr], fault: Option<String>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.args(args).env("RAYON_NUM_THREADS", "1").env_remove(medseg_train::cli::FAULT_VAR);
    if let Some(f) = fault {
        cmd.env(medseg_train::cli::FAULT_VAR, f);
    }
    cmd
}

fn new_run(config: &Path, out: &Path, fault: Option<String>) -> Command {
    train(&["--config".as_ref(), config.as_os_str(), "--out".as_ref(), out.as_os_str()], fault)
}

fn resume(run: &Path) -> Output {
    train(&["--resume".as_ref(), run.as_os_str()], None).output().expect("spawn resume")
}

/// The single run folder under `out`.
fn only_run(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("out")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The exact losses of every step, from the newest complete checkpoint's state.
fn losses(run: &Path) -> Vec<f64> {
    let p = resume_point(run).expect("a complete checkpoint");
    let (_, state) = medseg_train::checkpoint::load_state(&p.state, &Device::Cpu).expect("state");
    state.history.iter().map(|r| r.loss).collect()
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").map(|e| e.expect("e")) {
        if e.file_name().to_string_lossy().starts_with(".medseg-tmp-") {
            out.push(e.path());
        } else if e.path().is_dir() {
            out.extend(temporaries(&e.path()));
        }
    }
    out
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {:?}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_save_killed_anywhere_resumes_to_the_uninterrupted_losses() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = child_config(tmp.path());
    let reference = tmp.path().join("reference");
    ok(&new_run(&config, &reference, None).output().expect("spawn"), "uninterrupted run");
    let want = losses(&only_run(&reference));
    assert_eq!(want.len(), STEPS as usize);

    // The writer aborts (no destructors, no flushing: what kill -9 leaves) at each point of the
    // save of step 2, and at two points of the final step's save.
    let mut cuts: Vec<(u64, SavePoint)> = SavePoint::ALL.iter().map(|&p| (2, p)).collect();
    cuts.extend([(STEPS, SavePoint::AfterState), (STEPS, SavePoint::AfterRename)]);
    for (step, at) in cuts {
        let out = tmp.path().join(format!("cut-{step}-{}", at.name()));
        let fault = format!("abort:{step}:{}", at.name());
        let o = new_run(&config, &out, Some(fault.clone())).output().expect("spawn");
        assert_eq!(o.status.signal(), Some(6), "{fault}: the injected abort did not happen");
        let run = only_run(&out);
        ok(&resume(&run), &format!("resume after {fault}"));
        assert_eq!(losses(&run), want, "{fault}: resumed losses differ");
        assert!(temporaries(&run).is_empty(), "{fault}: {:?}", temporaries(&run));
    }

    // Real SIGKILLs at seeded random moments once checkpoints are being written.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for k in 0..3 {
        let out = tmp.path().join(format!("sigkill-{k}"));
        let mut child = new_run(&config, &out, None)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let started = std::time::Instant::now();
        let first_checkpoint = || {
            std::fs::read_dir(&out).ok().and_then(|mut d| d.next()).is_some_and(|e| {
                // Linked after the first complete generation, never removed.
                e.is_ok_and(|e| e.path().join("checkpoints/last.safetensors").exists())
            })
        };
        while !first_checkpoint() && started.elapsed().as_secs() < 120 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(0..120)));
        child.kill().expect("kill -9");
        child.wait().expect("wait");
        let run = only_run(&out);
        ok(&resume(&run), &format!("resume after SIGKILL {k}"));
        assert_eq!(losses(&run), want, "SIGKILL {k}: resumed losses differ");
    }
}

#[test]
fn two_runs_started_together_into_one_out_get_two_folders() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = child_config(tmp.path());
    let out = tmp.path().join("runs");
    // Occupy the folder names of the next half minute, so both processes collide with an
    // existing folder and with each other whatever second they start in.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let name = medseg_train::TrainConfig::from_toml(
        &std::fs::read_to_string(&config).expect("read"),
        &config,
    )
    .expect("config")
    .name;
    for s in now - 1..now + 30 {
        let d = out.join(format!("{name}-{}", medseg_run::config::utc_stamp_at(s)));
        std::fs::create_dir_all(d).expect("occupy");
    }
    let a = new_run(&config, &out, None).output_async();
    let b = new_run(&config, &out, None).output_async();
    let (a, b) = (a.join().expect("a"), b.join().expect("b"));
    ok(&a, "first process");
    ok(&b, "second process");
    let runs: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("e").path())
        .filter(|p| p.join("config.toml").exists())
        .collect();
    assert_eq!(runs.len(), 2, "two processes, two run folders: {runs:?}");
    // Every `<name>-<stamp>` folder existed before: both runs must have taken a suffix rather
    // than writing into an existing folder.
    for r in &runs {
        let n = r.file_name().expect("name").to_string_lossy().into_owned();
        assert!(n.ends_with("-2") || n.ends_with("-3"), "{n}: wrote into an existing folder");
    }
    for r in &runs {
        let text = std::fs::read_to_string(r.join("config.toml")).expect("config");
        assert!(
            text.contains(&r.display().to_string()),
            "{} holds another run's config",
            r.display()
        );
        assert_eq!(losses(r).len(), STEPS as usize, "{}", r.display());
    }
}

/// Spawns the command on a thread and collects its output there.
trait OutputAsync {
    fn output_async(self) -> std::thread::JoinHandle<Output>;
}

impl OutputAsync for Command {
    fn output_async(mut self) -> std::thread::JoinHandle<Output> {
        std::thread::spawn(move || self.output().expect("spawn"))
    }
}

#[test]
fn a_folder_held_by_a_live_run_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut first = Trainer::new(tiny_config(tmp.path(), 4).resolve().expect("plan"), Device::Cpu)
        .expect("trainer");
    let out = first.run(&RunOptions { stop: None, stop_after: Some(1) }).expect("run");
    // A live process holds the folder (this one, through a fresh trainer).
    let holder = Trainer::resume(&out.run_dir, Device::Cpu).expect("resume");
    let o = resume(&out.run_dir);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("in use by process") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    let e = Trainer::resume(&out.run_dir, Device::Cpu).expect_err("held in this process too");
    assert!(e.to_string().contains("in use"), "{e}");
    drop(holder);
    Trainer::resume(&out.run_dir, Device::Cpu).expect("free again");
}

/// The process umask (Linux `/proc/self/status`).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = status.lines().find(|l| l.starts_with("Umask:")).expect("Umask line");
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).expect("octal")
}

#[test]
fn outputs_respect_the_umask_and_stale_temporaries_are_cleaned() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Trainer::new(tiny_config(tmp.path(), 4).resolve().expect("plan"), Device::Cpu)
        .expect("trainer");
    let out = t.run(&RunOptions { stop: None, stop_after: Some(3) }).expect("run");
    let run = out.run_dir;
    let want = 0o666 & !umask();
    let g = resume_point(&run).expect("checkpoint").generation.expect("generation");
    for f in [
        run.join("config.toml"),
        run.join("metrics.csv"),
        run.join("loss.png"),
        run.join("dice.png"),
        run.join("checkpoints/best.safetensors"),
        g.weights(),
        g.state(),
        g.dir.join("manifest.json"),
    ] {
        let mode = std::fs::metadata(&f).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, want, "{}: mode {mode:o}, umask says {want:o}", f.display());
    }
    // What kill -9 leaves: 0-byte and partial temporaries of our naming, a partial generation.
    let stale = [
        run.join(".medseg-tmp-999999-0-metrics.csv"),
        run.join("checkpoints/.medseg-tmp-999999-1-best.safetensors"),
        run.join("overlays/.medseg-tmp-999999-2-step_000003.png"),
    ];
    for (i, f) in stale.iter().enumerate() {
        std::fs::write(f, vec![0u8; i * 10]).expect("stale file");
    }
    std::fs::create_dir(run.join("checkpoints/.medseg-tmp-999999-3-step-000004")).expect("dir");
    let mut r = Trainer::resume(&run, Device::Cpu).expect("resume");
    assert!(temporaries(&run).is_empty(), "left: {:?}", temporaries(&run));
    r.run(&RunOptions::default()).expect("finish");
    assert!(run.join("report.md").exists());
}
