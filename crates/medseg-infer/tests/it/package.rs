//! One-file model packages through the library: a run folder with a checkpoint generation, a
//! training state, `metrics.csv` and a git header exports its provenance, classes and config,
//! and `read_package` / `describe` read them back.
use std::collections::HashMap;
use std::path::Path;

use candle::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use medseg_infer::package::{KEY_FORMAT, read_header_metadata};
use medseg_infer::preprocess::{Pipeline, Preprocessing};
use medseg_infer::sliding_window::{BlendMode, SlidingWindowConfig};
use medseg_infer::{
    InferenceConfig, ModelConfig, ModelSource, TinyUnetConfig, describe, export_package,
    read_package,
};
use medseg_run::checkpoint::{safetensors_bytes, save, varmap_tensors};

fn config() -> InferenceConfig {
    InferenceConfig {
        model: ModelConfig::TinyUnet(TinyUnetConfig {
            in_channels: 1,
            out_channels: 3,
            features: 2,
            levels: 2,
        }),
        preprocessing: Preprocessing {
            pipeline: Pipeline::Btcv,
            pixdim: [1.5, 1.5, 2.0],
            a_min: -175.0,
            a_max: 250.0,
            roi: [16; 3],
            steps: Vec::new(),
        },
        window: SlidingWindowConfig {
            roi: [16; 3],
            sw_batch_size: 2,
            overlap: 0.25,
            mode: BlendMode::Gaussian,
            sigma_scale: 0.125,
        },
    }
}

/// A run folder as the trainer leaves it after 7 steps (best Dice 0.61 at step 5).
fn make_run(dir: &Path) -> std::path::PathBuf {
    let run = dir.join("phantom-20261206-050000");
    std::fs::create_dir_all(&run).expect("run");
    let cfg = config();
    let toml = toml::to_string(&cfg).expect("toml");
    std::fs::write(
        run.join("config.toml"),
        format!("# resolved configuration\n# git 0123abc\n{toml}"),
    )
    .expect("config");
    std::fs::write(
        run.join("metrics.csv"),
        "step,epoch,loss,lr,grad_norm,elapsed_s,val_mean_dice,dice_liver,dice_spleen\n",
    )
    .expect("metrics");
    let varmap = VarMap::new();
    cfg.model.build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("model");
    let tensors = varmap_tensors(&varmap).expect("tensors");
    let weights =
        safetensors_bytes(&tensors, HashMap::from([("medseg_step".to_string(), "7".to_string())]))
            .expect("weights");
    let state_json = r#"{"step":7,"epoch":1,"batch_in_epoch":0,"best_mean_dice":0.61,"best_step":5,"history":[],"elapsed_s":1.0}"#;
    let state = safetensors_bytes(
        &tensors[..1],
        HashMap::from([("medseg_state".to_string(), state_json.to_string())]),
    )
    .expect("state");
    save(&run.join("checkpoints"), 7, &weights, &state, None).expect("generation");
    run
}

#[test]
fn export_records_config_classes_and_provenance_and_reads_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path());
    let out = tmp.path().join("model.safetensors");
    let info = export_package(&run, &out, None).expect("export");
    let back = read_package(&out).expect("read back");
    assert_eq!(back.config, config());
    assert_eq!(back.classes, ["background", "liver", "spleen"]);
    assert_eq!(back.merge_order, None);
    let p = &back.provenance;
    assert_eq!(p.run.as_deref(), Some("phantom-20261206-050000"));
    assert_eq!(p.weights_file.as_deref(), Some("checkpoints/step-000007/weights.safetensors"));
    assert_eq!(p.git_commit.as_deref(), Some("0123abc"));
    assert_eq!((p.training_steps, p.weights_step, p.best_step), (Some(7), Some(7), Some(5)));
    assert_eq!(p.best_val_dice, Some(0.61));
    assert_eq!(p.exported_at.len(), "2026-12-06T05:10:00Z".len());
    assert_eq!(back, info);
    assert_eq!(read_header_metadata(&out).expect("metadata")[KEY_FORMAT], "medseg-model/1");

    let source = ModelSource::from_path(&out, None).expect("package source");
    assert!(matches!(source, ModelSource::Package { .. }), "{source:?}");
    let d = describe(&source).expect("describe");
    assert_eq!(d.provenance.as_ref(), Some(p));
    // levels 2, features 2, 1 → 3: blocks (1→2, 2→2, 2→4, 4→4, 4→2 after the skip), the
    // transposed 4→2 convolution and the 2→3 output convolution.
    let block = |ci: usize, co: usize| co * ci * 27 + 3 * co;
    let want = block(1, 2)
        + block(2, 2)
        + block(2, 4)
        + block(4, 4)
        + block(4, 2)
        + 4 * 2 * 8
        + 2
        + 3 * 2
        + 3;
    assert_eq!(d.parameters, want);
    let text = d.to_string();
    assert!(text.contains("git 0123abc") && text.contains("best validation Dice 0.6100"), "{text}");

    // Classes of the wrong length are refused, naming the output.
    let err = export_package(&run, &tmp.path().join("x.safetensors"), Some(vec!["a".into()]))
        .expect_err("1 class name for 3 channels");
    assert!(err.to_string().contains("1 class names for a model with 3"), "{err}");
    assert!(!tmp.path().join("x.safetensors").exists());
}

#[test]
fn a_swin_package_records_the_merge_order_of_the_weights_metadata() {
    // A Swin UNETR config without `merge_order` whose weights record `legacy`: the package
    // writes the order into its config and names its source, so later defaults cannot change it.
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("swin-run");
    std::fs::create_dir_all(run.join("checkpoints")).expect("run");
    let mut swin = medseg_models::SwinUnetrConfig::tiny();
    swin.merge_order = None;
    swin.out_channels = 3;
    let mut cfg = config();
    cfg.model = ModelConfig::SwinUnetr(Box::new(swin.clone()));
    cfg.window.roi = [32; 3];
    std::fs::write(run.join("config.toml"), toml::to_string(&cfg).expect("toml")).expect("config");
    let varmap = VarMap::new();
    cfg.model.build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("model");
    let weights = safetensors_bytes(
        &varmap_tensors(&varmap).expect("tensors"),
        HashMap::from([("merge_order".to_string(), "legacy".to_string())]),
    )
    .expect("weights");
    medseg_run::write_atomic(&run.join("checkpoints/best.safetensors"), &weights).expect("best");
    let out = tmp.path().join("swin.safetensors");
    export_package(&run, &out, None).expect("export");
    let back = read_package(&out).expect("read back");
    let m = back.merge_order.expect("a Swin package records its merge order");
    assert_eq!(m.order, medseg_models::MergeOrder::Legacy);
    assert_eq!(m.source, "weights' metadata");
    assert_eq!(back.config.merge_order(), Some(medseg_models::MergeOrder::Legacy));
    assert_eq!(back.classes, ["class_0", "class_1", "class_2"]);
    assert_eq!(back.provenance.git_commit, None);
    assert_eq!(back.provenance.training_steps, None);
    let d = describe(&ModelSource::from_path(&out, None).expect("source")).expect("describe");
    assert_eq!(d.parameters, medseg_models::count_parameters(&swin).expect("count"));
    assert!(d.to_string().contains("merge order    Legacy (weights' metadata)"), "{d}");
    // The package predicts with the recorded order even though the config alone says Fixed.
    let loaded = ModelSource::from_path(&out, None)
        .and_then(|s| s.resolve())
        .and_then(|r| r.load(&Device::Cpu))
        .expect("load");
    assert_eq!(loaded.config.merge_order(), Some(medseg_models::MergeOrder::Legacy));
    assert_eq!(swin.resolved_merge_order(), medseg_models::MergeOrder::Fixed);
}

/// A run folder (pipeline `btcv`, its steps recorded) predicts with `--resample probabilities`
/// too: with TTA, the written probabilities are the interpolated ones the labels are the
/// arg-max of, they sum to 1 inside the foreground crop and are 0 outside it (label 0 there).
#[test]
fn a_run_folder_resamples_probabilities_through_its_recorded_steps() {
    use medseg_infer::{PredictOptions, Predictor, Quiet, Resample, plan_jobs};
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path());
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bundle_tiny/image.nii.gz");
    let resolved = ModelSource::from_path(&run, None).expect("source").resolve().expect("resolve");
    assert_eq!(resolved.resample, Resample::Labels, "a run folder's default");
    let out = tmp.path().join("seg.nii.gz");
    let probs = tmp.path().join("probs");
    let mut jobs = plan_jobs(&image, &out, Some(&probs)).expect("plan");
    let opts = PredictOptions {
        resample: Some(Resample::Probabilities),
        tta: true,
        ..PredictOptions::default()
    };
    let p = Predictor::new(resolved.load(&Device::Cpu).expect("load"), Device::Cpu, opts);
    assert_eq!(p.resample(), Resample::Probabilities);
    p.predict(&jobs.remove(0), &Quiet).expect("predict");
    let labels = medseg_data::read_volume::<u8>(&out).expect("labels");
    let ch: Vec<_> = (0..3)
        .map(|c| {
            medseg_data::read_volume::<f32>(probs.join(format!("prob_{c:03}.nii.gz")))
                .expect("prob")
        })
        .collect();
    let (mut inside, mut outside) = (0, 0);
    for (i, &l) in labels.data().iter().enumerate() {
        let v: Vec<f32> = ch.iter().map(|c| c.data()[i]).collect();
        let sum: f32 = v.iter().sum();
        if sum == 0.0 {
            outside += 1;
            assert_eq!(l, 0, "voxel {i} outside the crop");
            continue;
        }
        inside += 1;
        let best = (0..3).fold(0, |b, c| if v[c] > v[b] { c } else { b });
        assert_eq!(usize::from(l), best, "voxel {i}: {v:?}");
    }
    assert!(inside > 1000 && outside > 1000, "inside {inside}, outside {outside}");
    // Away from the crop's edge (where the zero padding takes part in the interpolation, as in
    // MONAI) the probabilities sum to 1; nowhere above 1.
    let sums: Vec<f32> =
        (0..labels.len()).map(|i| ch.iter().map(|c| c.data()[i]).sum::<f32>()).collect();
    assert!(sums.iter().all(|s| (0.0..=1.0 + 1e-5).contains(s)), "a sum outside [0, 1]");
    let full = sums.iter().filter(|s| (**s - 1.0).abs() < 1e-5).count();
    assert!(full * 2 > inside, "{full} of {inside} voxels sum to 1");
}
