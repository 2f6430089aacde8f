//! bf16 mixed precision through the trainer (`precision = "bf16"`, docs/cuda.md §4), on CPU: the
//! models' ops accept bf16 there too, so the path that runs on CUDA is exercised end to end.
use candle::{DType, Device};
use medseg_train::precision::Precision;
use medseg_train::{RunOptions, Trainer};

use crate::train_loop::tiny_config;

#[test]
fn bf16_training_steps_track_f32_and_keep_f32_checkpoints() {
    let tmp = tempfile::tempdir().expect("tmp");
    let steps = 4;
    let run = |precision: Precision| {
        let mut c = tiny_config(tmp.path(), steps);
        c.name = format!("{precision:?}");
        c.precision = precision;
        let mut t = Trainer::new(c.resolve().expect("plan"), Device::Cpu).expect("trainer");
        let out = t.run(&RunOptions::default()).expect("run");
        (out, t)
    };
    let (f32_run, _) = run(Precision::F32);
    let (bf16_run, t16) = run(Precision::Bf16);
    assert_eq!(bf16_run.losses.len(), steps as usize);
    // Step 1 starts from the same weights: only bf16 rounding separates the losses; later steps
    // also carry slightly different updates.
    for (i, (a, b)) in f32_run.losses.iter().zip(&bf16_run.losses).enumerate() {
        let tol = if i == 0 { 1e-2 } else { 3e-2 };
        assert!((a - b).abs() <= tol * a.abs(), "step {}: f32 loss {a} vs bf16 {b}", i + 1);
    }
    assert!(
        f32_run.losses.iter().zip(&bf16_run.losses).any(|(a, b)| a != b),
        "bf16 gave the f32 losses bit for bit: the casts are not in the path"
    );
    // The masters, the optimiser state and the checkpoint stay f32.
    assert!(t16.varmap().all_vars().iter().all(|v| v.dtype() == DType::F32));
    let ckpt = bf16_run.run_dir.join("checkpoints/last.safetensors");
    let tensors = candle::safetensors::load(&ckpt, &Device::Cpu).expect("checkpoint");
    assert!(!tensors.is_empty() && tensors.values().all(|t| t.dtype() == DType::F32));
    // The final validation ran through the bf16 model and produced a report.
    assert!(bf16_run.report.is_some());
    let cfg = std::fs::read_to_string(bf16_run.run_dir.join("config.toml")).expect("config");
    assert!(cfg.contains("precision = \"bf16\""), "{cfg}");
}

#[test]
fn swin_unetr_runs_forward_and_backward_in_bf16_on_cpu() {
    use medseg_train::precision::precision_var_builder;
    use medseg_train::seeded::SeededVarMap;
    use medseg_train::{DiceCeConfig, loss::dice_ce_loss};
    let cfg = crate::tiny_swin_unetr();
    let vm = candle_nn::VarMap::new();
    cfg.build(SeededVarMap::var_builder(&vm, 3, DType::F32, &Device::Cpu)).expect("masters");
    let m = cfg
        .build(precision_var_builder(&vm, Precision::Bf16, &Device::Cpu).expect("casts"))
        .expect("bf16 swin");
    let x = medseg_testkit::random_tensor(&[1, 1, 64, 32, 32], 4, &Device::Cpu).expect("x");
    let y = x.ge(0.5f32).expect("ge").to_dtype(DType::U32).expect("u32");
    let logits = m.forward_t(&x.to_dtype(DType::BF16).expect("bf16"), true).expect("forward");
    assert_eq!(logits.dtype(), DType::BF16);
    let logits = logits.to_dtype(DType::F32).expect("f32");
    let loss = dice_ce_loss(&logits, &y, &DiceCeConfig::monai()).expect("loss");
    assert!(loss.to_scalar::<f32>().expect("scalar").is_finite());
    let grads = loss.backward().expect("backward");
    medseg_testkit::assert_all_vars_have_grad(&vm, &grads);
    assert!(
        vm.all_vars()
            .iter()
            .all(|v| grads.get(v.as_tensor()).is_some_and(|g| g.dtype() == DType::F32))
    );
}
