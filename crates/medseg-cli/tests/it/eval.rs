//! `medseg eval` on hand-made pairs with known scores, and its errors.
use medseg_data::{Volume, write_volume};

use crate::util::{listing, medseg_err, medseg_ok, ras_grid, s};

/// 8³ labels: class 1 a 4³ cube at `(o, 2, 2)`, class 2 a 2³ cube at `(1, 0, 5)`.
fn labels(o: usize) -> Volume<u8> {
    Volume::from_fn([8; 3], ras_grid([8; 3], [1.0; 3]), |i, j, k| {
        if (o..o + 4).contains(&i) && (2..6).contains(&j) && (2..6).contains(&k) {
            1
        } else if (1..3).contains(&i) && (0..2).contains(&j) && (5..7).contains(&k) {
            2
        } else {
            0
        }
    })
}

#[test]
fn eval_gives_the_known_dice_in_every_format() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (pred, gt) = (tmp.path().join("pred"), tmp.path().join("gt"));
    std::fs::create_dir(&pred).expect("mkdir");
    std::fs::create_dir(&gt).expect("mkdir");
    // Class 1 shifted by one voxel: |P∩G| = 48 of 64 + 64 → Dice 0.75; class 2 exact → 1.
    write_volume(gt.join("case.nii.gz"), &labels(2)).expect("write");
    write_volume(pred.join("case.nii.gz"), &labels(3)).expect("write");
    let groups = tmp.path().join("groups.json");
    std::fs::write(
        &groups,
        r#"{"name": "toy", "labels": ["background", "cube", "small"],
            "groups": [{"name": "all", "classes": ["cube", "small"]}]}"#,
    )
    .expect("write");
    let (json, md, csv) =
        (tmp.path().join("r.json"), tmp.path().join("r.md"), tmp.path().join("r.csv"));
    medseg_ok(&[
        "eval",
        "--pred",
        s(&pred),
        "--gt",
        s(&gt),
        "--groups",
        s(&groups),
        "--out",
        s(&json),
        "--out",
        s(&md),
        "--out",
        s(&csv),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    let dice = |i: usize| v["per_class"][i]["mean"]["dice"]["value"].as_f64().expect("dice");
    assert_eq!(v["per_class"][0]["name"], "cube");
    assert!((dice(0) - 0.75).abs() < 1e-12, "cube Dice {}", dice(0));
    assert!((dice(1) - 1.0).abs() < 1e-12, "small Dice {}", dice(1));
    let overall = v["groups"]["overall"]["dice"]["value"].as_f64().expect("overall");
    assert!((overall - 0.875).abs() < 1e-12, "overall {overall}");
    assert!(std::fs::read_to_string(&md).expect("md").contains("| 1 | cube | 0.7500"));
    let csv_text = std::fs::read_to_string(&csv).expect("csv");
    assert!(
        csv_text.lines().nth(1).expect("row").starts_with("case,1,cube,64,64,0.75"),
        "{csv_text}"
    );
    assert!(tmp.path().join("r.groups.csv").exists());
}

#[test]
fn eval_errors_name_the_problem() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (pred, gt) = (tmp.path().join("pred"), tmp.path().join("gt"));
    std::fs::create_dir(&pred).expect("mkdir");
    std::fs::create_dir(&gt).expect("mkdir");
    write_volume(gt.join("case.nii.gz"), &labels(2)).expect("write");
    let e = medseg_err(&["eval", "--pred", s(&pred), "--gt", s(&gt), "--classes", "3"]);
    assert!(e.contains("case.nii.gz"), "missing prediction not named: {e}");
    write_volume(pred.join("case.nii.gz"), &labels(3)).expect("write");
    let e = medseg_err(&["eval", "--pred", s(&pred), "--gt", s(&gt), "--classes", "2"]);
    assert!(e.contains("case.nii.gz") && e.contains("num_classes"), "{e}");
    let e = medseg_err(&["eval", "--pred", s(&pred), "--gt", s(&gt)]);
    assert!(e.contains("--classes"), "{e}");
    let bad_out = tmp.path().join("nowhere/r.json");
    let e = medseg_err(&[
        "eval",
        "--pred",
        s(&pred),
        "--gt",
        s(&gt),
        "--classes",
        "3",
        "--out",
        s(&bad_out),
    ]);
    assert!(e.contains("nowhere") && e.contains("does not exist"), "{e}");
    let e = medseg_err(&[
        "eval",
        "--pred",
        s(&tmp.path().join("nope")),
        "--gt",
        s(&gt),
        "--classes",
        "3",
    ]);
    assert!(e.contains("nope"), "{e}");
    assert_eq!(listing(tmp.path()), ["gt", "pred"]);
}

#[test]
fn eval_refuses_another_affine_unless_told_and_names_corrupt_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (pred, gt) = (tmp.path().join("pred"), tmp.path().join("gt"));
    std::fs::create_dir(&pred).expect("mkdir");
    std::fs::create_dir(&gt).expect("mkdir");
    write_volume(gt.join("case.nii.gz"), &labels(2)).expect("write");
    // The same voxels written with a flipped affine: another place in the world.
    let mut flipped = labels(2);
    flipped.affine.0[0][0] = -1.0;
    write_volume(pred.join("case.nii.gz"), &flipped).expect("write");
    let args = ["eval", "--pred", s(&pred), "--gt", s(&gt), "--classes", "3"];
    let e = medseg_err(&args);
    assert!(
        e.contains("affine mismatch")
            && e.contains("pred/case.nii.gz")
            && e.contains("gt/case.nii.gz")
            && e.contains("[-1.0, 0.0, 0.0")
            && e.contains("[1.0, 0.0, 0.0")
            && e.contains("--ignore-affine"),
        "{e}"
    );
    // The user knows better: scored voxel by voxel.
    let mut ignore = args.to_vec();
    ignore.push("--ignore-affine");
    let out = crate::util::medseg(&ignore);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1.0000"));

    // A prediction cut short: one sentence naming the file, no Rust debug text.
    let bytes = std::fs::read(gt.join("case.nii.gz")).expect("read");
    std::fs::write(pred.join("case.nii.gz"), &bytes[..bytes.len() / 2]).expect("write");
    let e = medseg_err(&args);
    assert!(e.contains("cannot read prediction") && e.contains("pred/case.nii.gz"), "{e}");
    assert!(!e.contains("Custom {") && !e.contains("kind:") && !e.contains("Io("), "{e}");
}
