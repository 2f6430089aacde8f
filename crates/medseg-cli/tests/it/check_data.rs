//! `medseg check-data` and the pre-flight check of `medseg train`: every bad item in one error,
//! before step 1.
use std::path::Path;
use std::process::Command;

use medseg_data::{Affine, Volume, write_volume};

use crate::util::{medseg, medseg_err, s};

/// A phantom_unet config (6 classes) whose datalist is `dir/dataset.json`: 2 good items and, when
/// `bad`, a label on another grid and one with value 6.
fn setup(dir: &Path, bad: bool) -> std::path::PathBuf {
    let aff = Affine::from_diagonal([2.0, 2.0, 2.0]);
    let n = if bad { 4 } else { 2 };
    for i in 0..n {
        let img = Volume::from_fn([16, 16, 16], aff, |a, b, c| (a * b + c) as f32 - 100.0);
        write_volume(dir.join(format!("img{i}.nii.gz")), &img).expect("img");
        let shape = if i == 2 { [16, 16, 15] } else { [16, 16, 16] };
        let top = if i == 3 { 6 } else { 5 };
        let lbl = Volume::from_fn(shape, aff, |a, _, _| (a % (top + 1)) as u8);
        write_volume(dir.join(format!("lbl{i}.nii.gz")), &lbl).expect("lbl");
    }
    let item = |i: usize| format!(r#"{{"image": "img{i}.nii.gz", "label": "lbl{i}.nii.gz"}}"#);
    let training: Vec<String> = (1..n).map(item).collect();
    let json = format!(
        r#"{{"labels": {{"0": "bg", "1": "a", "2": "b", "3": "c", "4": "d", "5": "e"}},
            "training": [{}], "validation": [{}]}}"#,
        training.join(","),
        item(0)
    );
    std::fs::write(dir.join("dataset.json"), json).expect("json");
    let preset =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../medseg-train/configs/phantom_unet.toml");
    let text = std::fs::read_to_string(preset)
        .expect("preset")
        .replace(
            "datalist = \"data/phantom/dataset.json\"",
            &format!("datalist = {:?}", s(&dir.join("dataset.json"))),
        )
        .replace("generate_phantom = true", "generate_phantom = false")
        .replace("dir = \"runs\"", &format!("dir = {:?}", s(&dir.join("runs"))));
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, text).expect("config");
    cfg
}

#[test]
fn check_data_lists_every_bad_item_and_train_stops_before_step_1() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = setup(dir.path(), true);
    let e = medseg_err(&["check-data", "--config", s(&cfg)]);
    assert!(e.contains("pre-flight check found 2 problem(s) in 4 items"), "{e}");
    assert!(e.contains("lbl2.nii.gz: geometry mismatch"), "{e}");
    assert!(e.contains("lbl3.nii.gz: label value 6 is out of range (num_classes 6)"), "{e}");
    let e = medseg_err(&["train", "--config", s(&cfg)]);
    assert!(e.contains("the pre-flight check found") && e.contains("lbl3.nii.gz"), "{e}");
    assert!(!e.contains("step 1"), "{e}");
}

#[test]
fn check_data_passes_good_data_and_honours_the_size_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = setup(dir.path(), false);
    let o = medseg(&["check-data", "--config", s(&cfg)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("2 items OK (2 label files read, 0 from the cache)"), "{out}");
    let o = medseg(&["check-data", "--config", s(&cfg)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("(0 label files read, 2 from the cache)"), "{out}");
    let o = Command::new(env!("CARGO_BIN_EXE_medseg"))
        .args(["check-data", "--config", s(&cfg)])
        .env("MEDSEG_MAX_VOXELS", "1000")
        .output()
        .expect("run");
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("img0.nii.gz: volume of shape [16, 16, 16]") && e.contains("MEDSEG_MAX_VOXELS"),
        "{e}"
    );
}
