//! End-to-end tests of the loop on a tiny phantom (24³, 3 cases) and a tiny U-Net.
use std::path::Path;

use candle::{DType, Device};
use candle_nn::VarMap;
use medseg_data::phantom::{PhantomConfig, generate};
use medseg_train::seeded::SeededVarMap;
use medseg_train::{
    DiceCeConfig, Error, ModelConfig, RunOptions, TinyUnetConfig, TrainConfig, Trainer,
    loss::dice_ce_loss,
};

pub(crate) fn tiny_config(dir: &Path, steps: u64) -> TrainConfig {
    let data = dir.join("data");
    if !data.join("dataset.json").exists() {
        let pc = PhantomConfig {
            n_cases: 3,
            n_validation: 1,
            shape: [24, 24, 24],
            ..PhantomConfig::default()
        };
        generate(&data, &pc).expect("phantom");
    }
    let mut c = TrainConfig::preset("phantom").expect("preset");
    c.model = ModelConfig::TinyUnet(TinyUnetConfig {
        in_channels: 1,
        out_channels: 6,
        features: 4,
        levels: 2,
    });
    c.data.datalist = data.join("dataset.json");
    c.data.generate_phantom = false;
    c.data.roi = [16, 16, 16];
    c.data.num_samples = 1;
    c.data.num_workers = 1;
    c.data.flip_prob = 0.5;
    c.train.max_steps = steps;
    c.train.val_every = 3;
    c.train.checkpoint_every = 2;
    c.schedule.warmup = 2;
    c.schedule.max = steps;
    c.inference.roi = [16, 16, 16];
    c.output.dir = dir.join("runs");
    c.output.progress = false;
    c
}

#[test]
fn resume_reproduces_the_uninterrupted_loss_sequence() {
    let tmp = tempfile::tempdir().expect("tmp");
    let n = 5;
    let mut full = Trainer::new(tiny_config(tmp.path(), n).resolve().expect("plan"), Device::Cpu)
        .expect("trainer");
    let a = full.run(&RunOptions::default()).expect("run");
    assert_eq!(a.losses.len(), n as usize);
    assert!(a.report.is_some() && !a.interrupted);
    let run_dir = a.run_dir.clone();
    for f in
        ["config.toml", "metrics.csv", "loss.png", "dice.png", "report.md", "overlays/final.png"]
    {
        assert!(run_dir.join(f).exists(), "{f} missing");
    }
    for f in ["last.safetensors", "last.state.safetensors", "best.safetensors"] {
        assert!(run_dir.join("checkpoints").join(f).exists(), "{f} missing");
    }
    let csv = std::fs::read_to_string(run_dir.join("metrics.csv")).expect("csv");
    assert_eq!(csv.lines().count(), n as usize + 1, "{csv}");
    assert!(csv.starts_with("step,epoch,loss,lr,grad_norm,elapsed_s,val_mean_dice,dice_liver"));

    // second run, same config: stop after k steps, then resume in a fresh Trainer
    let mut cfg = tiny_config(tmp.path(), n);
    cfg.name = "second".into();
    let mut first = Trainer::new(cfg.resolve().expect("plan"), Device::Cpu).expect("trainer");
    let k = 2;
    let b1 = first.run(&RunOptions { stop: None, stop_after: Some(k) }).expect("run");
    assert!(b1.interrupted);
    assert_eq!(b1.losses, a.losses[..k as usize].to_vec(), "same seed, same first losses");
    let mut resumed = Trainer::resume(&b1.run_dir, Device::Cpu).expect("resume");
    assert_eq!(resumed.state().step, k);
    let b2 = resumed.run(&RunOptions::default()).expect("resumed run");
    assert_eq!(b2.losses, a.losses[k as usize..].to_vec(), "resumed losses differ");
    assert_eq!(resumed.state().history.len(), n as usize);
}

#[test]
fn non_finite_loss_is_reported_with_its_step() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = tiny_config(tmp.path(), 6);
    cfg.optim.lr = 1e30;
    cfg.train.grad_clip = 0.0;
    cfg.schedule.kind = medseg_train::ScheduleKind::Constant;
    let mut t = Trainer::new(cfg.resolve().expect("plan"), Device::Cpu).expect("trainer");
    match t.run(&RunOptions::default()) {
        Err(Error::NonFiniteLoss { step, value, .. }) => {
            assert!(step >= 2, "step {step}");
            assert!(!value.is_finite());
        }
        other => panic!("expected NonFiniteLoss, got {other:?}"),
    }
}

#[test]
fn missing_datalist_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = tiny_config(tmp.path(), 3);
    cfg.data.datalist = tmp.path().join("nope/dataset.json");
    let e = Trainer::new(cfg.resolve().expect("plan"), Device::Cpu).expect_err("missing");
    assert!(e.to_string().contains("nope"), "{e}");
    // a resume from a folder without checkpoints
    let e = Trainer::resume(tmp.path(), Device::Cpu).expect_err("no run");
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn encoder_lr_scale_on_a_model_without_encoder_is_rejected() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = tiny_config(tmp.path(), 3);
    cfg.optim.encoder_lr_scale = 0.1;
    let e = Trainer::new(cfg.resolve().expect("plan"), Device::Cpu).expect_err("no encoder");
    assert!(matches!(e, Error::Config(_)) && e.to_string().contains("swinViT"), "{e}");
}

#[test]
fn every_tiny_unet_parameter_gets_a_gradient_and_seeding_is_deterministic() {
    let cfg = ModelConfig::TinyUnet(TinyUnetConfig {
        in_channels: 1,
        out_channels: 3,
        features: 4,
        levels: 3,
    });
    let build = |seed| {
        let vm = VarMap::new();
        let m =
            cfg.build(SeededVarMap::var_builder(&vm, seed, DType::F32, &Device::Cpu)).expect("m");
        (vm, m)
    };
    let (vm, m) = build(7);
    let x = medseg_testkit::random_tensor(&[2, 1, 8, 8, 8], 1, &Device::Cpu).expect("x");
    let y = (medseg_testkit::random_tensor(&[2, 1, 8, 8, 8], 2, &Device::Cpu)
        .expect("y")
        .abs()
        .expect("a")
        * 1.4)
        .expect("s")
        .floor()
        .expect("f")
        .clamp(0f32, 2f32)
        .expect("c")
        .to_dtype(DType::U32)
        .expect("u");
    let logits = m.forward_t(&x, true).expect("forward");
    assert_eq!(logits.dims(), &[2, 3, 8, 8, 8]);
    let loss = dice_ce_loss(&logits, &y, &DiceCeConfig::monai()).expect("loss");
    let grads = loss.backward().expect("backward");
    medseg_testkit::assert_all_vars_have_grad(&vm, &grads);
    let w = |vm: &VarMap| {
        medseg_train::checkpoint::varmap_tensors(vm)
            .expect("t")
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().expect("f").to_vec1::<f32>().expect("v")))
            .collect::<Vec<_>>()
    };
    assert_eq!(w(&vm), w(&build(7).0), "same seed, same weights");
    assert_ne!(w(&vm), w(&build(8).0), "different seed, different weights");
}

#[test]
fn a_raised_stop_flag_saves_and_returns_after_one_step() {
    // What the binary's Ctrl-C handler does: set the flag; the loop saves `last` and returns.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Trainer::new(tiny_config(tmp.path(), 4).resolve().expect("plan"), Device::Cpu)
        .expect("trainer");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let out = t.run(&RunOptions { stop: Some(stop), stop_after: None }).expect("run");
    assert!(out.interrupted);
    assert_eq!(out.step, 1);
    let ck = out.run_dir.join("checkpoints");
    assert_eq!(
        medseg_train::checkpoint::read_step(&ck.join("last.safetensors")).expect("s"),
        Some(1)
    );
    assert!(out.report.is_none());
    let resumed = Trainer::resume(&out.run_dir, Device::Cpu).expect("resume");
    assert_eq!(resumed.state().step, 1);
}

#[test]
fn swin_unetr_trains_through_the_trainer_path_with_correct_decay_groups() {
    let cfg = crate::tiny_swin_unetr();
    assert_eq!(cfg.size_divisor(), 32);
    let vm = VarMap::new();
    let m = cfg.build(SeededVarMap::var_builder(&vm, 3, DType::F32, &Device::Cpu)).expect("swin");
    let opt = medseg_train::AdamW::from_varmap(
        &vm,
        medseg_train::AdamWConfig::new(1e-4, 1e-5, [0.9, 0.999], 1e-8),
    )
    .expect("opt");
    // a 32³ patch leaves a 1-voxel bottleneck (instance norm of one voxel: no gradient)
    let mut tc = TrainConfig::preset("phantom").expect("preset");
    tc.data.roi = [32, 32, 32];
    assert!(tc.validate().expect_err("32³").to_string().contains("bottleneck"));
    let (decay, no_decay) = opt.groups();
    assert!(
        decay.iter().all(|n| !n.contains("relative_position_bias_table") && !n.contains("norm"))
    );
    assert!(no_decay.iter().any(|n| n.contains("relative_position_bias_table")));
    assert!(no_decay.iter().any(|n| n.ends_with(".bias")));
    assert!(decay.iter().any(|n| n.starts_with("swinViT.") && n.ends_with("qkv.weight")));
    let x = medseg_testkit::random_tensor(&[1, 1, 64, 32, 32], 4, &Device::Cpu).expect("x");
    let y = x.ge(0.5f32).expect("ge").to_dtype(DType::U32).expect("u32");
    let logits = m.forward_t(&x, true).expect("forward");
    assert_eq!(logits.dims(), &[1, 3, 64, 32, 32]);
    let loss = dice_ce_loss(&logits, &y, &DiceCeConfig::monai()).expect("loss");
    let grads = loss.backward().expect("backward");
    medseg_testkit::assert_all_vars_have_grad(&vm, &grads);
}
