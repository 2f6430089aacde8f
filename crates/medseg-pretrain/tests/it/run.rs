//! The pretraining loop on a tiny generated phantom: resume exactness, run outputs, bad inputs.
use std::path::{Path, PathBuf};

use candle::Device;
use medseg_data::phantom::{PhantomConfig, generate};
use medseg_pretrain::{Error, PretrainConfig, Pretrainer, RunOptions};

/// Two 64×32×32 phantom cases (one trains, one validates) under `dir`.
fn tiny_phantom(dir: &Path) -> PathBuf {
    let cfg = PhantomConfig {
        n_cases: 2,
        n_validation: 1,
        shape: [64, 32, 32],
        spacing: [2.0, 2.0, 2.0],
        ..PhantomConfig::default()
    };
    generate(dir, &cfg).expect("phantom")
}

fn tiny_config(dir: &Path, steps: u64) -> PretrainConfig {
    let mut c = PretrainConfig::preset("phantom").expect("preset");
    c.data.datalists = vec![tiny_phantom(&dir.join("data"))];
    c.data.generate_phantom = false;
    c.data.num_samples = 1;
    c.data.num_workers = 0;
    c.train.max_steps = steps;
    c.train.val_every = 2;
    c.train.checkpoint_every = 1;
    c.schedule.warmup_steps = 1;
    c.output.dir = dir.join("runs");
    c.output.progress = false;
    c
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_losses_and_writes_outputs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tiny_config(tmp.path(), 3);
    let mut full = Pretrainer::new(cfg.clone().resolve().expect("plan"), Device::Cpu).expect("new");
    let a = full.run(&RunOptions::default()).expect("run");
    assert_eq!(a.losses.len(), 3);
    assert!(a.losses.iter().flatten().all(|v| v.is_finite()));

    let fs = cfg.model.feature_size;
    let mut cfg2 = cfg;
    cfg2.name = "resumed".into();
    let mut first = Pretrainer::new(cfg2.resolve().expect("plan"), Device::Cpu).expect("new");
    let b1 = first.run(&RunOptions { stop: None, stop_after: Some(1) }).expect("run 1");
    assert!(b1.interrupted && b1.step == 1);
    let dir = first.run_dir().to_path_buf();
    drop(first);
    let mut second = Pretrainer::resume(&dir, Device::Cpu).expect("resume");
    let b2 = second.run(&RunOptions::default()).expect("run 2");
    let resumed: Vec<[f64; 4]> = b1.losses.into_iter().chain(b2.losses).collect();
    assert_eq!(resumed.len(), a.losses.len());
    // Weights, moments, batches and pretext draws are restored bit for bit, and every kernel
    // reduces in a fixed order, so the whole resumed sequence equals the uninterrupted one.
    assert_eq!(resumed, a.losses, "resumed losses must equal the uninterrupted run's exactly");

    for f in [
        "config.toml",
        "metrics.csv",
        "loss.png",
        "recon/step_000002.png",
        "recon/step_000003.png",
        "checkpoints/last.safetensors",
        "checkpoints/last.state.safetensors",
        "checkpoints/best.safetensors",
    ] {
        assert!(a.run_dir.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(a.run_dir.join("metrics.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.lines().nth(2).is_some_and(|l| !l.ends_with(",,")),
        "validation columns on step 2: {csv}"
    );
    // the feature participation ratios inside the body: 1 ≤ PR ≤ channels of the stage at
    // stages 0–2; the 16³ and 32³ cells of stages 3–4 are too coarse to lie inside the body of
    // these small crops (NaN)
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let row: Vec<&str> = csv.lines().nth(2).expect("row").split(',').collect();
    for stage in 0..5 {
        let col = header.iter().position(|h| *h == format!("val_pr{stage}")).expect("pr column");
        let pr: f64 = row[col].parse().unwrap_or_else(|_| panic!("val_pr{stage} {:?}", row[col]));
        let channels = (fs << stage) as f64;
        if stage < 3 {
            assert!(
                (1.0..=channels).contains(&pr),
                "stage {stage}: PR {pr} of {channels} channels"
            );
        } else {
            assert!(pr.is_nan() || (1.0..=channels).contains(&pr), "stage {stage}: PR {pr}");
        }
    }
}

#[test]
fn sgd_runs_and_resumes_with_its_momentum() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = tiny_config(tmp.path(), 2);
    cfg.optim.kind = medseg_pretrain::config::OptimKind::Sgd;
    cfg.optim.lr = 1e-2;
    cfg.train.val_every = 10;
    cfg.output.recon_png = false;
    let mut p = Pretrainer::new(cfg.resolve().expect("plan"), Device::Cpu).expect("new");
    let r = p.run(&RunOptions { stop: None, stop_after: Some(1) }).expect("run");
    let dir = r.run_dir;
    drop(p);
    let state =
        candle::safetensors::load(dir.join("checkpoints/last.state.safetensors"), &Device::Cpu)
            .expect("state");
    assert!(state.keys().any(|k| k.starts_with("buf.swinViT.")), "momentum buffers saved");
    let mut p = Pretrainer::resume(&dir, Device::Cpu).expect("resume");
    assert_eq!(p.run(&RunOptions::default()).expect("run").step, 2);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    // missing datalist without phantom generation
    let mut c = PretrainConfig::preset("phantom").expect("preset");
    c.data.datalists = vec![tmp.path().join("nope.json")];
    c.data.generate_phantom = false;
    c.output.dir = tmp.path().join("runs");
    let e = Pretrainer::new(c.resolve().expect("plan"), Device::Cpu).expect_err("missing datalist");
    assert!(matches!(e, Error::Datalist { .. }) && e.to_string().contains("nope.json"), "{e}");
    // a datalist naming a missing image
    let json = tmp.path().join("list.json");
    std::fs::write(&json, r#"{"training": [{"image": "gone.nii.gz"}]}"#).expect("write");
    let e = medseg_pretrain::data::read_json_list(&json, None).expect_err("missing image");
    assert!(e.to_string().contains("gone.nii.gz"), "{e}");
    // a folder without NIfTI files
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    assert!(medseg_pretrain::data::read_folder(&empty).is_err());
    // unknown config field and an unknown preset
    let text = medseg_pretrain::config::preset_text("phantom")
        .expect("text")
        .replace("[train]", "[train]\nepochs = 3");
    assert!(matches!(
        PretrainConfig::from_toml(&text, Path::new("x.toml")),
        Err(Error::ConfigParse { .. })
    ));
    assert!(PretrainConfig::load("no-such-preset-or-file").is_err());
    // resuming a folder without checkpoints
    assert!(Pretrainer::resume(tmp.path(), Device::Cpu).is_err());
}

#[test]
fn the_label_scarce_experiment_configs_parse_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/label_scarce");
    let pre = dir.join("pretrain.toml");
    let text = std::fs::read_to_string(&pre).expect("read");
    let c = PretrainConfig::from_toml(&text, &pre).expect("pretrain.toml parses");
    c.validate().expect("pretrain.toml validates");
    // The pretraining window must be the fine-tuning one (the point of the experiment's config).
    let ft = dir.join("finetune.toml");
    let text = std::fs::read_to_string(&ft).expect("read");
    let t = medseg_train::TrainConfig::from_toml(&text, &ft).expect("finetune.toml parses");
    t.validate().expect("finetune.toml validates");
    assert_eq!((c.data.a_min, c.data.a_max), (t.data.a_min, t.data.a_max));
    let medseg_train::ModelConfig::SwinUnetr(m) = &t.model else { panic!("not a Swin UNETR") };
    assert_eq!(m.feature_size, c.model.feature_size);
    assert_eq!(m.merge_order, Some(c.model.merge_order));
}

#[test]
fn a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_resumes_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tiny_config(tmp.path(), 2);
    let mut full = Pretrainer::new(cfg.clone().resolve().expect("plan"), Device::Cpu).expect("new");
    let a = full.run(&RunOptions::default()).expect("run");
    let mut cfg2 = cfg;
    cfg2.name = "disk_full".into();
    let mut p = Pretrainer::new(cfg2.resolve().expect("plan"), Device::Cpu).expect("new");
    p.run(&RunOptions { stop: None, stop_after: Some(1) }).expect("step 1");
    // The disk fills up in the middle of step 2's checkpoint.
    p.set_checkpoint_fault(Some(medseg_run::checkpoint::Fault::DiskFullAfter(4096)));
    let e = p.run(&RunOptions::default()).expect_err("disk full");
    assert!(e.to_string().contains("no space left"), "{e}");
    let dir = p.run_dir().to_path_buf();
    drop(p);
    let mut resumed = Pretrainer::resume(&dir, Device::Cpu).expect("step 1 is still complete");
    assert_eq!(resumed.state().step, 1);
    let b = resumed.run(&RunOptions::default()).expect("finish");
    assert_eq!(b.losses, a.losses[1..].to_vec(), "resumed losses differ");
}
