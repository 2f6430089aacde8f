//! Pretraining on the real CTs of `../shared/data` as unlabelled data (skipped with a printed
//! reason when absent): an int32 RAS abdomen and an int16 LPS thorax at another spacing train,
//! the abdominal crop validates.
use candle::Device;
use medseg_pretrain::{PretrainConfig, Pretrainer, RunOptions};

#[test]
fn pretraining_runs_on_the_shared_ct_volumes() {
    let Some(shared) = medseg_testkit::shared_data_dir(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let ct = |case: &str| shared.join(case).join("ct.nii.gz");
    let (abdomen, thorax, small) =
        (ct("ts-abdomen-pelvis-3mm"), ct("ts-thorax-aorta-1.5mm"), ct("ts-abdomen-3mm-small"));
    if let Some(missing) = [&abdomen, &thorax, &small].into_iter().find(|p| !p.exists()) {
        eprintln!("skipping: {} is absent", missing.display());
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let json = tmp.path().join("ct.json");
    let list = serde_json::json!({
        "training": [{"image": abdomen}, {"image": thorax}],
        "validation": [{"image": small}],
    });
    std::fs::write(&json, list.to_string()).expect("write datalist");

    let mut c = PretrainConfig::preset("phantom").expect("preset");
    c.data.datalists = vec![json];
    c.data.generate_phantom = false;
    // The research window; one crop from each volume per step.
    (c.data.a_min, c.data.a_max) = (-1000.0, 1000.0);
    (c.data.batch_size, c.data.num_samples, c.data.num_workers) = (2, 1, 0);
    c.train.max_steps = 2;
    c.train.val_every = 2;
    c.train.checkpoint_every = 2;
    c.schedule.warmup_steps = 1;
    c.output.dir = tmp.path().join("runs");
    c.output.progress = false;
    c.output.recon_png = false;
    let fs = c.model.feature_size as f64;
    let mut p = Pretrainer::new(c.resolve().expect("plan"), Device::Cpu).expect("loads both CTs");
    let out = p.run(&RunOptions::default()).expect("run");
    assert_eq!(out.step, 2);
    assert!(out.losses.iter().flatten().all(|v| v.is_finite()), "{:?}", out.losses);
    assert!(out.run_dir.join("checkpoints/last.safetensors").is_file());
    // The validation crop lies in the body: the stage-0 collapse check found body cells.
    let csv = std::fs::read_to_string(out.run_dir.join("metrics.csv")).expect("csv");
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let row: Vec<&str> = csv.lines().nth(2).expect("step 2").split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).expect(name)];
    let recon: f64 = col("val_recon").parse().expect("validation reconstruction");
    assert!(recon.is_finite() && recon > 0.0, "{recon}");
    let pr0: f64 = col("val_pr0").parse().expect("val_pr0");
    assert!((1.0..=fs).contains(&pr0), "stage-0 participation ratio {pr0}");
}
