//! Fine-tuning the tiny Swin UNETR on the shared real CT `ts-abdomen-pelvis-3mm` (skipped with a
//! printed reason when `../shared/data` is absent): the loss falls and the Dice of the large
//! organs rises within a short CPU run. Longer runs of the same setup: `docs/training.md`.
use std::path::{Path, PathBuf};

use candle::Device;
use medseg_data::Volume;
use medseg_data::nifti_io::{read_volume, write_volume};
use medseg_train::{ModelConfig, TrainConfig, Trainer};

/// TotalSegmentator indices of the organs kept, in their new order 1..=4.
pub const ORGANS: [(u8, &str); 4] =
    [(5, "liver"), (1, "spleen"), (2, "kidney_right"), (3, "kidney_left")];

/// Writes the four-organ label map and a datalist that trains and validates on the one case.
pub fn four_organ_datalist(case: &Path, dir: &Path) -> PathBuf {
    let seg: Volume<u8> = read_volume(case.join("seg.nii.gz")).expect("reading seg.nii.gz");
    let remap = |v: u8| ORGANS.iter().position(|&(t, _)| t == v).map_or(0, |i| i as u8 + 1);
    write_volume(dir.join("organs.nii.gz"), &seg.map(remap)).expect("writing organs.nii.gz");
    let item = serde_json::json!({
        "image": case.join("ct.nii.gz"),
        "label": dir.join("organs.nii.gz"),
    });
    let mut labels = serde_json::Map::new();
    labels.insert("0".into(), "background".into());
    for (i, (_, name)) in ORGANS.iter().enumerate() {
        labels.insert((i + 1).to_string(), (*name).into());
    }
    let dl = serde_json::json!({
        "name": "ts-abdomen-pelvis-3mm, 4 organs",
        "labels": labels,
        "training": [item.clone()],
        "validation": [item],
    });
    let path = dir.join("dataset.json");
    std::fs::write(&path, serde_json::to_string_pretty(&dl).expect("json")).expect("datalist");
    path
}

/// The setup of the test and of the documented longer run: the phantom preset's tiny Swin UNETR
/// (fs12) with 5 classes, the CT at 6 mm (61×51×56 voxels), 64×64×32 patches (the whole axial
/// plane, half the slices), BTCV intensity window.
pub fn real_ct_config(datalist: PathBuf, out: &Path, steps: u64) -> TrainConfig {
    let mut c = TrainConfig::preset("phantom").expect("preset");
    let ModelConfig::SwinUnetr(m) = &mut c.model else {
        panic!("the phantom preset is expected to train a Swin UNETR")
    };
    m.out_channels = 1 + ORGANS.len();
    c.data.datalist = datalist;
    c.data.generate_phantom = false;
    c.data.pixdim = [6.0, 6.0, 6.0];
    c.data.a_min = -175.0;
    c.data.a_max = 250.0;
    c.data.roi = [64, 64, 32];
    c.data.num_samples = 1;
    c.data.num_workers = 1;
    c.train.max_steps = steps;
    c.schedule.warmup = 5;
    c.schedule.max = steps;
    c.inference.roi = [64, 64, 32];
    c.inference.overlap = 0.25;
    c.output.dir = out.to_path_buf();
    c.output.progress = false;
    c.output.overlays = false;
    c
}

#[test]
fn fine_tune_on_real_ct_lowers_loss_and_raises_organ_dice() {
    let Some(shared) = medseg_testkit::shared_data_dir(env!("CARGO_MANIFEST_DIR")) else {
        eprintln!("skipping: ../shared/data is absent (real-CT fine-tune test)");
        return;
    };
    let case = shared.join("ts-abdomen-pelvis-3mm");
    if !case.join("ct.nii.gz").exists() {
        eprintln!("skipping: {} is absent", case.display());
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let datalist = four_organ_datalist(&case, tmp.path());
    // MEDSEG_REAL_CT_STEPS sets a longer run (docs/training.md quotes one); the test's 30 steps
    // take about 2 CPU-minutes.
    let steps = match std::env::var("MEDSEG_REAL_CT_STEPS") {
        Ok(v) => v.parse().expect("MEDSEG_REAL_CT_STEPS must be a step count"),
        Err(_) => 30,
    };
    let plan = real_ct_config(datalist, tmp.path(), steps).resolve().expect("plan");
    let mut t = Trainer::new(plan, Device::Cpu).expect("trainer");
    let dice = |t: &Trainer| -> Vec<(String, f64)> {
        let rep = t.validate(false, None).expect("validation");
        rep.per_class.iter().map(|c| (c.name.clone(), c.values[0].value)).collect()
    };
    let before = dice(&t);
    let losses: Vec<f64> = (0..steps).map(|_| t.train_step().expect("step").0).collect();
    assert!(losses.len() >= 10, "needs at least 10 steps to compare the loss");
    let after = dice(&t);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 5..]));
    eprintln!("loss (mean of 5 steps): {first:.4} → {last:.4}");
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        eprintln!("  {name:<14} Dice {b:.3} → {a:.3}");
    }
    assert!(last < 0.8 * first, "loss did not fall: {first:.4} → {last:.4}");
    let liver = |v: &[(String, f64)]| v.iter().find(|(n, _)| n == "liver").expect("liver scored").1;
    let (b, a) = (liver(&before), liver(&after));
    assert!(a > b + 0.2 && a > 0.4, "liver Dice did not rise enough: {b:.3} → {a:.3}");
}
