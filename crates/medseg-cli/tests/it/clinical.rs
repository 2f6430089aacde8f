//! `medseg predict`'s clinical flags end to end on a tiny random-weight run: statistics
//! (JSON/CSV, per case in folder mode), `--roi-subset` (and its unknown-name error),
//! `--largest-component` / `--remove-small`, `--preview`, DICOM input and DICOM SEG output (validated
//! by `dciodvfy` where dicom3tools is installed).
use std::path::{Path, PathBuf};

use medseg_data::{Volume, read_volume, write_volume};
use medseg_infer::components::{Connectivity, keep_largest};

use crate::util::{CLASSES, ct_volume, make_run, medseg_err, medseg_ok, ras_grid, s};

/// A synthetic CT and a run folder in `tmp`.
fn setup(tmp: &Path) -> (PathBuf, PathBuf) {
    let run = make_run(tmp, CLASSES, 3);
    let input = tmp.join("ct.nii.gz");
    write_volume(&input, &ct_volume([30, 28, 26], ras_grid([30, 28, 26], [1.7, 1.9, 2.3])))
        .expect("input");
    (run, input)
}

fn predict(run: &Path, input: &Path, out: &Path, extra: &[&str]) -> (Volume<u8>, String) {
    let mut args = vec!["predict", "-i", s(input), "-o", s(out), "--model", s(run)];
    args.extend_from_slice(extra);
    let log = medseg_ok(&args);
    (read_volume::<u8>(out).expect("prediction"), log)
}

fn count(v: &Volume<u8>, c: u8) -> u64 {
    v.data().iter().filter(|&&l| l == c).count() as u64
}

#[test]
fn statistics_subset_and_clean_up_act_on_the_written_label_map() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, input) = setup(tmp.path());
    let (base, _) = predict(&run, &input, &tmp.path().join("base.nii.gz"), &[]);
    assert!(count(&base, 1) > 0 && count(&base, 2) > 0, "both classes predicted");
    let image = read_volume::<f32>(&input).expect("image");
    // Statistics (JSON) of the full map: counts, ml and mean HU from the input.
    let stats = tmp.path().join("stats.json");
    let (full, _) =
        predict(&run, &input, &tmp.path().join("full.nii.gz"), &["--statistics", s(&stats)]);
    assert_eq!(full.data(), base.data());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("json");
    let voxel_ml = 1.7 * 1.9 * 2.3 / 1000.0;
    for c in 1..CLASSES as u8 {
        let e = &json[format!("class_{c}")];
        assert_eq!(e["voxels"], count(&base, c), "{json}");
        let ml = e["volume_ml"].as_f64().expect("ml");
        assert!((ml / (count(&base, c) as f64 * voxel_ml) - 1.0).abs() < 1e-6, "{ml}");
        let vals: Vec<f64> = base
            .data()
            .iter()
            .zip(image.data())
            .filter(|(l, _)| **l == c)
            .map(|(_, &v)| v as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let got = e["intensity"]["mean"].as_f64().expect("mean");
        assert!((got - mean).abs() < 1e-6 * mean.abs().max(1.0), "{got} vs {mean}");
    }
    // Subset: only class_2 written; the CSV then has zero voxels for class_1.
    let csv = tmp.path().join("stats.csv");
    let (sub, log) = predict(
        &run,
        &input,
        &tmp.path().join("sub.nii.gz"),
        &["--roi-subset", "class_2", "--statistics", s(&csv)],
    );
    assert!(log.contains("class names: generic"), "{log}");
    let expect: Vec<u8> = base.data().iter().map(|&l| if l == 2 { 2 } else { 0 }).collect();
    assert_eq!(sub.data(), &expect[..]);
    let text = std::fs::read_to_string(&csv).expect("csv");
    assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("1,class_1,0,0,")), "{text}");
    // Largest component of every class = the library's clean-up of the plain prediction.
    let (largest, _) =
        predict(&run, &input, &tmp.path().join("largest.nii.gz"), &["--largest-component"]);
    let mut want = base.data().to_vec();
    keep_largest(&mut want, base.shape(), &[1, 2], Connectivity::Faces);
    assert_eq!(largest.data(), &want[..]);
    // Removing everything below 1 litre empties the map.
    let (small, _) =
        predict(&run, &input, &tmp.path().join("small.nii.gz"), &["--remove-small", "1000"]);
    assert!(small.data().iter().all(|&l| l == 0));
    // An unknown class name lists the names that exist, and nothing is written.
    let bad = tmp.path().join("bad.nii.gz");
    let err = medseg_err(&[
        "predict",
        "-i",
        s(&input),
        "-o",
        s(&bad),
        "--model",
        s(&run),
        "--roi-subset",
        "liver",
    ]);
    assert!(err.contains("\"liver\"") && err.contains("class_1, class_2"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn preview_and_folder_mode_write_one_file_per_case() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, input) = setup(tmp.path());
    let png = tmp.path().join("preview.png");
    predict(&run, &input, &tmp.path().join("seg.nii.gz"), &["--preview", s(&png)]);
    let bytes = std::fs::read(&png).expect("png");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::copy(&input, dir.join("a.nii.gz")).expect("copy");
    std::fs::copy(&input, dir.join("b.nii.gz")).expect("copy");
    let out = tmp.path().join("out");
    medseg_ok(&[
        "predict",
        "-i",
        s(&dir),
        "-o",
        s(&out),
        "--model",
        s(&run),
        "--statistics",
        "st.csv",
        "--preview",
        "p.png",
    ]);
    for case in ["a", "b"] {
        assert!(out.join(format!("{case}_st.csv")).is_file(), "{case}");
        assert!(out.join(format!("{case}_p.png")).is_file(), "{case}");
    }
    let err = medseg_err(&[
        "predict",
        "-i",
        s(&input),
        "-o",
        s(&tmp.path().join("x.nii.gz")),
        "--model",
        s(&run),
        "--statistics",
        s(&tmp.path().join("st.txt")),
    ]);
    assert!(err.contains("must end in .json or .csv"), "{err}");
}

#[test]
fn a_dicom_series_is_predicted_on_its_grid_and_written_as_seg() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../medseg-dicom/tests/fixtures");
    let series = fixtures.join("axial");
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, nifti_input) = setup(tmp.path());
    let out = tmp.path().join("seg.nii.gz");
    let stats = tmp.path().join("st.json");
    let (pred, _) = predict(&run, &series, &out, &["--statistics", s(&stats)]);
    // The grid of `medseg convert` (the dcm2niix affine of the fixture).
    let ct = tmp.path().join("ct.nii.gz");
    medseg_ok(&["convert", "-i", s(&series), "-o", s(&ct)]);
    let conv = read_volume::<f32>(&ct).expect("converted");
    assert_eq!(pred.shape(), conv.shape());
    assert_eq!(pred.affine, conv.affine);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("json");
    assert_eq!(json["class_1"]["voxels"], count(&pred, 1));
    // DICOM SEG from the .dcm extension, or explicitly; refused for a NIfTI input.
    let seg = tmp.path().join("seg.dcm");
    assert!(pred.data().iter().any(|&l| l != 0), "the fixture gets foreground");
    let log = medseg_ok(&["predict", "-i", s(&series), "-o", s(&seg), "--model", s(&run)]);
    assert!(log.contains("DICOM SEG") && log.contains("segments"), "{log}");
    let bytes = std::fs::read(&seg).expect("seg");
    assert_eq!(&bytes[128..132], b"DICM");
    let explicit = tmp.path().join("seg_out");
    std::fs::create_dir(&explicit).expect("mkdir");
    medseg_ok(&[
        "predict",
        "-i",
        s(&series),
        "-o",
        s(&explicit),
        "--model",
        s(&run),
        "--output-type",
        "dicom-seg",
    ]);
    assert!(explicit.join("axial.dcm").is_file(), "folder output: <series folder name>.dcm");
    let err = medseg_err(&[
        "predict",
        "-i",
        s(&nifti_input),
        "-o",
        s(&tmp.path().join("x.dcm")),
        "--model",
        s(&run),
    ]);
    assert!(err.contains("needs a DICOM input"), "{err}");
    let err = medseg_err(&[
        "predict",
        "-i",
        s(&nifti_input),
        "-o",
        s(&tmp.path().join("x.nii.gz")),
        "--model",
        s(&run),
        "--output-type",
        "dicom-seg",
    ]);
    assert!(err.contains("needs a DICOM input"), "{err}");
}

/// `dciodvfy` (dicom3tools) on the DICOM SEG that `medseg predict` writes from a DICOM series:
/// single-frame axial and oblique sources and an enhanced multi-frame source, classes with SNOMED
/// codes, a laterality modifier and a generic one. No line of its report may be an error.
/// Skipped, with the reason printed, when dciodvfy is not installed.
#[test]
fn a_predicted_dicom_seg_passes_dciodvfy() {
    if std::process::Command::new("dciodvfy").arg("-help").output().is_err() {
        println!("skipped: dciodvfy (Debian package dicom3tools) is not installed");
        return;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../medseg-dicom/tests/fixtures");
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), 5, 11);
    // Class names as a run records them (its metrics.csv columns).
    let header = "step,dice_liver,dice_kidney_left,dice_aorta,dice_something_else\n";
    std::fs::write(run.join("metrics.csv"), header).expect("metrics.csv");
    for case in ["axial", "oblique", "multiframe.dcm"] {
        let seg = tmp.path().join(format!("{case}.seg.dcm"));
        let log = medseg_ok(&[
            "predict",
            "-i",
            s(&fixtures.join(case)),
            "-o",
            s(&seg),
            "--model",
            s(&run),
            "--output-type",
            "dicom-seg",
        ]);
        assert!(log.contains("DICOM SEG") && log.contains("segments"), "{case}: {log}");
        let out = std::process::Command::new("dciodvfy").arg(&seg).output().expect("dciodvfy");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
        assert!(errors.is_empty(), "{case}: dciodvfy errors:\n{report}");
        let warnings = report.lines().filter(|l| l.starts_with("Warning")).count();
        println!("{case}: dciodvfy 0 errors, {warnings} warnings");
    }
}
