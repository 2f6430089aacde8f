//! MONAI bundles: the model zoo's `swin_unetr_btcv_segmentation` configs (text copies in
//! `tools/bundle/zoo`) read into medseg settings, hostile and unsupported configs refused with
//! the key and the file, and a tiny bundle end to end against MONAI 1.6.1's own bundle run
//! (`tools/bundle/bundle_parity.py tiny`: labels and inverted probabilities of
//! `Invertd(nearest_interp=False)`, and the labels of `nearest_interp=True`).
use std::path::{Path, PathBuf};

use candle::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use medseg_data::spatial::{Interp, Padding};
use medseg_infer::{
    BlendMode, ModelSource, PredictOptions, Predictor, Quiet, Resample, Step, describe, plan_jobs,
    read_bundle,
};
use medseg_models::{MergeOrder, SwinUnetr, SwinUnetrConfig};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A bundle folder in `tmp` with the configs of `configs` and an empty weights placeholder
/// (reading a bundle only checks that the file exists).
fn bundle_from(configs: &Path, tmp: &Path) -> PathBuf {
    let dir = tmp.join("bundle");
    std::fs::create_dir_all(dir.join("configs")).expect("mkdir");
    std::fs::create_dir_all(dir.join("models")).expect("mkdir");
    for name in ["inference.json", "metadata.json"] {
        std::fs::copy(configs.join(name), dir.join("configs").join(name)).expect("copy");
    }
    std::fs::write(dir.join("models/model.pt"), b"").expect("placeholder");
    dir
}

fn zoo(version: &str) -> PathBuf {
    repo().join("tools/bundle/zoo").join(version).join("configs")
}

#[test]
fn the_model_zoo_btcv_bundle_reads_as_monai_runs_it() {
    for (version, monai) in [("0.3.7", "1.0.1"), ("0.5.6", "1.4.0")] {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = bundle_from(&zoo(version), tmp.path());
        let b = read_bundle(&dir).expect("zoo bundle");
        let want = SwinUnetrConfig {
            merge_order: Some(MergeOrder::Legacy),
            ..SwinUnetrConfig::monai_default(1, 14)
        };
        assert_eq!(b.model, SwinUnetrConfig { feature_size: 48, ..want }, "{version}");
        assert!(b.merge_order_from.contains(monai), "{}", b.merge_order_from);
        assert_eq!(
            b.steps,
            vec![
                Step::Orientation { axcodes: "RAS".into() },
                Step::Spacing {
                    pixdim: [1.5, 1.5, 2.0],
                    mode: Interp::Linear,
                    padding: Padding::Border
                },
                Step::ScaleIntensityRange {
                    a_min: -175.0,
                    a_max: 250.0,
                    b_min: 0.0,
                    b_max: 1.0,
                    clip: true
                },
            ]
        );
        assert_eq!(b.no_ops.len(), 3, "{:?}", b.no_ops);
        assert!(b.no_ops[0].contains("ITKReader"), "{:?}", b.no_ops);
        assert_eq!(b.window.roi, [96; 3]);
        assert_eq!((b.window.sw_batch_size, b.window.overlap), (4, 0.5));
        assert_eq!((b.window.mode, b.window.sigma_scale), (BlendMode::Constant, 0.125));
        assert_eq!(b.resample, Resample::Probabilities);
        let classes = b.classes.clone().expect("classes");
        assert_eq!(classes.len(), 14);
        assert_eq!((classes[0].as_str(), classes[1].as_str()), ("background", "spleen"));
        assert_eq!(classes[13], "Left adrenal gland");
        assert_eq!(b.weights, dir.join("models/model.pt"));

        let info = describe(&ModelSource::from_path(&dir, None).expect("source")).expect("info");
        let text = info.to_string();
        for want in [
            "MONAI bundle",
            "62,187,296",
            "Legacy",
            "resample       probabilities",
            "Spacing [1.5, 1.5, 2.0] mm (bilinear, Border padding)",
            "Invertd (nearest_interp false)",
            "Left adrenal gland",
        ] {
            assert!(text.contains(want), "{version}: no {want:?} in\n{text}");
        }
    }
}

#[test]
fn class_names_fall_back_to_pred_classes_and_versions_set_the_merge_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = bundle_from(&zoo("0.3.7"), tmp.path());
    let meta = dir.join("configs/metadata.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).expect("read")).expect("json");
    let obj = m.as_object_mut().expect("object");
    obj.remove("network_data_format");
    obj.insert("monai_version".into(), "1.5.0".into());
    std::fs::write(&meta, m.to_string()).expect("write");
    let b = read_bundle(&dir).expect("bundle");
    let classes = b.classes.expect("pred_classes");
    assert_eq!((classes[1].as_str(), classes[3].as_str()), ("spleen", "Left Kideny"));
    assert_eq!(b.model.merge_order, Some(MergeOrder::Fixed));
    let (names, from) = medseg_infer::class_names(&dir, 14);
    assert_eq!((names[2].as_str(), from.contains("metadata.json")), ("Right Kidney", true));
}

/// Rewrites `configs/inference.json` of `dir` with `edit` and returns the read error.
fn error_after(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let path = dir.join("configs/inference.json");
    let original = std::fs::read_to_string(&path).expect("read");
    let mut v: serde_json::Value = serde_json::from_str(&original).expect("json");
    edit(&mut v);
    std::fs::write(&path, v.to_string()).expect("write");
    let e = read_bundle(dir).expect_err("must be refused").to_string();
    std::fs::write(&path, original).expect("restore");
    e
}

#[test]
fn unsupported_and_hostile_configs_name_the_key_and_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = bundle_from(&zoo("0.5.6"), tmp.path());
    let tr = |v: &mut serde_json::Value| v["preprocessing"]["transforms"].clone();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "RandFlipd",
            Box::new(|v| {
                v["preprocessing"]["transforms"][3] =
                    serde_json::json!({"_target_": "RandFlipd", "keys": "image", "prob": 0.5});
            }),
        ),
        ("argument `sigma`", Box::new(|v| v["preprocessing"]["transforms"][3]["sigma"] = 1.into())),
        ("UNet", Box::new(|v| v["network_def"]["_target_"] = "UNet".into())),
        ("argument `use_hyena`", Box::new(|v| v["network_def"]["use_hyena"] = true.into())),
        ("inferer::roi_size", Box::new(|v| v["inferer"]["roi_size"] = "$[@image_key] * 3".into())),
        ("KeepLargestConnectedComponentd", {
            Box::new(|v| {
                v["postprocessing"]["transforms"][1]["_target_"] =
                    "KeepLargestConnectedComponentd".into()
            })
        }),
        (
            "no AsDiscreted",
            Box::new(|v| {
                let post = v["postprocessing"]["transforms"].as_array_mut().expect("list");
                post.remove(2);
            }),
        ),
        (
            "names no config id",
            Box::new(|v| v["preprocessing"]["transforms"][0]["keys"] = "@nope".into()),
        ),
        (
            "select_fn",
            Box::new(move |v| {
                let mut t = tr(v);
                t.as_array_mut().expect("list").push(serde_json::json!({
                    "_target_": "CropForegroundd", "keys": "image",
                    "select_fn": "$lambda x: x > 1"}));
                v["preprocessing"]["transforms"] = t;
            }),
        ),
    ];
    for (want, edit) in cases {
        let e = error_after(&dir, edit);
        assert!(e.contains(want) && e.contains("inference.json"), "want {want:?}: {e}");
    }
    // Malformed JSON and TorchScript-only weights.
    std::fs::write(dir.join("configs/inference.json"), "{\"network_def\": ").expect("write");
    let e = read_bundle(&dir).expect_err("malformed").to_string();
    assert!(e.contains("not valid JSON") && e.contains("inference.json"), "{e}");
    let tmp2 = tempfile::tempdir().expect("tmp");
    let dir2 = bundle_from(&zoo("0.3.7"), tmp2.path());
    std::fs::remove_file(dir2.join("models/model.pt")).expect("rm");
    std::fs::write(dir2.join("models/model.ts"), b"").expect("ts");
    let e = read_bundle(&dir2).expect_err("torchscript").to_string();
    assert!(e.contains("TorchScript is not supported"), "{e}");
    // A bundle takes no --config.
    let e = medseg_infer::source::ConfigSource {
        config: read_bundle(&bundle_from(&zoo("0.3.7"), tmp2.path().join("x").as_path()))
            .expect("bundle")
            .inference_config(),
        origin: "x.toml".into(),
    };
    let e = ModelSource::from_path(&dir2, Some(e)).expect_err("config with a bundle").to_string();
    assert!(e.contains("carries its own configuration"), "{e}");
}

// ------------------------------------------------------------------ tiny bundle end to end

/// `tools/golden/models_golden.py`'s `uniform(seed, n)`.
fn uniform(seed: u64, n: usize) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let mut z = (seed << 32).wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// `tools/golden/models_golden.py`'s `formula(key, shape)`.
fn formula(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let seed = key.bytes().enumerate().map(|(j, b)| (j as u64 + 1) * b as u64).sum::<u64>() % 997;
    let norm_scale = key.ends_with(".gamma") || (key.contains("norm") && key.ends_with(".weight"));
    let amp = (3.0 / (if shape.is_empty() { 1 } else { n / shape[0] }) as f64).sqrt();
    uniform(seed + 1, n)
        .into_iter()
        .map(|b| {
            (if norm_scale {
                1.0 + 0.1 * b
            } else if key.ends_with(".bias") {
                0.05 * b
            } else if key.ends_with("relative_position_bias_table") {
                0.5 * b
            } else {
                b * amp
            }) as f32
        })
        .collect()
}

/// The tiny bundle of `tests/golden/bundle_tiny` with formula weights as
/// `models/model.safetensors` (a full SwinUNETR `.pt` is ≥ 16 MB, too big to commit).
fn tiny_bundle(tmp: &Path) -> PathBuf {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bundle_tiny");
    let dir = bundle_from(&golden.join("configs"), tmp);
    std::fs::remove_file(dir.join("models/model.pt")).expect("rm placeholder");
    let b = {
        // The architecture as the bundle states it (weights are not read yet).
        std::fs::write(dir.join("models/model.safetensors"), b"").expect("placeholder");
        read_bundle(&dir).expect("tiny bundle")
    };
    let varmap = VarMap::new();
    SwinUnetr::new(&b.model, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
        .expect("model");
    for (k, var) in varmap.data().lock().expect("lock").iter() {
        let t = candle::Tensor::from_vec(formula(k, var.dims()), var.dims(), &Device::Cpu)
            .expect("tensor");
        var.set(&t).expect("set");
    }
    varmap.save(dir.join("models/model.safetensors")).expect("save");
    dir
}

#[test]
fn a_tiny_bundle_predicts_what_monai_predicts() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bundle_tiny");
    let expected =
        candle::safetensors::load(golden.join("expected.safetensors"), &Device::Cpu).expect("load");
    let want_labels: Vec<u8> = expected["labels"].flatten_all().expect("f").to_vec1().expect("v");
    let want_nearest: Vec<u8> =
        expected["labels_nearest_interp"].flatten_all().expect("f").to_vec1().expect("v");
    let want_probs: Vec<f32> =
        expected["probabilities"].flatten_all().expect("f").to_vec1().expect("v");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tiny_bundle(tmp.path());
    let resolved = ModelSource::from_path(&dir, None).expect("source").resolve().expect("resolve");
    assert_eq!(resolved.resample, Resample::Probabilities);
    assert!(matches!(&resolved.config.model, medseg_infer::ModelConfig::SwinUnetr(c)
        if c.merge_order == Some(MergeOrder::Fixed)));
    for mode in [Resample::Probabilities, Resample::Labels] {
        let out = tmp.path().join(format!("{}.nii.gz", mode.as_str()));
        let probs = tmp.path().join(format!("probs_{}", mode.as_str()));
        let mut jobs = plan_jobs(&golden.join("image.nii.gz"), &out, Some(&probs)).expect("plan");
        let loaded = resolved.clone().load(&Device::Cpu).expect("load");
        let opts = PredictOptions { resample: Some(mode), ..PredictOptions::default() };
        let p = Predictor::new(loaded, Device::Cpu, opts);
        p.predict(&jobs.remove(0), &Quiet).expect("predict");
        let got = medseg_data::nifti_io::read_volume::<u8>(&out).expect("labels");
        assert_eq!(got.shape(), [30, 26, 20]);
        // MONAI's labels for this mode: Invertd(nearest_interp) false resp. true. Voxels where
        // MONAI's probabilities are all below 1e-9 lie outside the foreground crop: there its
        // grid arithmetic leaves weights of ~1e-16 on the crop's edge (medseg's are exactly 0),
        // so its arg-max there is float noise; they are counted apart.
        let want = if mode == Resample::Probabilities { &want_labels } else { &want_nearest };
        let n = want_labels.len();
        let outside = |i: usize| (0..3).all(|c| want_probs[c * n + i] < 1e-9);
        let (mut same, mut counted) = (0usize, 0usize);
        for (i, (a, b)) in got.data().iter().zip(want).enumerate() {
            if mode == Resample::Probabilities && outside(i) {
                assert_eq!(*a, 0, "voxel {i} outside the crop");
                continue;
            }
            counted += 1;
            same += usize::from(a == b);
        }
        let pct = 100.0 * same as f64 / counted as f64;
        let mut worst = 0f32;
        for c in 0..3 {
            let ch = medseg_data::nifti_io::read_volume::<f32>(
                &probs.join(format!("prob_{c:03}.nii.gz")),
            )
            .expect("probability");
            for (a, b) in ch.data().iter().zip(&want_probs[c * n..(c + 1) * n]) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!(
            "tiny bundle, resample {}: {pct:.3} % of {counted} labels as MONAI ({} outside the \
             crop), max prob diff {worst:.2e}",
            mode.as_str(),
            n - counted
        );
        assert!(pct >= 99.9, "{}: labels agree with MONAI on {pct} % only", mode.as_str());
        if mode == Resample::Probabilities {
            assert!(worst <= 1e-4, "probabilities differ by {worst}");
        }
    }
}
