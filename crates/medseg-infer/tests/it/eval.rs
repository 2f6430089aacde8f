//! NIfTI label-map reading and folder evaluation: synthetic files written with the `nifti` crate
//! (an independent writer) in a temp dir, plus the real TotalSegmentator label maps of
//! `../shared/data` (skipped with a message when absent).
use std::path::{Path, PathBuf};

use medseg_infer::{Error, EvalOptions, eval_folders, read_label_map};
use medseg_metrics::{GroupTable, MetricsConfig, Report};
use ndarray::{Array, ShapeBuilder};
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;
use serde_json::Value;

/// Writes a C-order `[nz, ny, nx]` u8 buffer as NIfTI with pixdim `[dx, dy, dz]` and the matching
/// diagonal sform.
fn write_nifti(path: &Path, data: &[u8], dims: [usize; 3], spacing_zyx: [f32; 3]) {
    write_nifti_with(path, data, dims, spacing_zyx, None);
}

/// [`write_nifti`] with an sform (`srow_x`, `srow_y`, `srow_z`) when given.
fn write_nifti_with(
    path: &Path,
    data: &[u8],
    dims: [usize; 3],
    spacing_zyx: [f32; 3],
    sform: Option<[[f32; 4]; 3]>,
) {
    // NIfTI x is the fastest axis: Fortran order over [nx, ny, nz] is our C order over [nz, ny, nx].
    let arr = Array::from_shape_vec((dims[2], dims[1], dims[0]).f(), data.to_vec()).expect("shape");
    let mut h = NiftiHeader {
        pixdim: [1.0, spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0, 1.0, 1.0, 1.0],
        ..NiftiHeader::default()
    };
    let [dz, dy, dx] = spacing_zyx;
    let [x, y, z] =
        sform.unwrap_or([[dx, 0.0, 0.0, 0.0], [0.0, dy, 0.0, 0.0], [0.0, 0.0, dz, 0.0]]);
    h.sform_code = 2;
    h.srow_x = x;
    h.srow_y = y;
    h.srow_z = z;
    WriterOptions::new(path).reference_header(&h).write_nifti(&arr).expect("write nifti");
}

fn eval(pd: &Path, gd: &Path, cfg: &MetricsConfig) -> medseg_infer::Result<Report> {
    eval_folders(pd, gd, cfg, EvalOptions::default(), &mut |_, _, _| {})
}

/// `crates/medseg-metrics/tests/golden/metrics_golden.json` (the MONAI goldens of the metrics).
fn golden_json() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../medseg-metrics/tests/golden/metrics_golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("metrics goldens are committed"))
        .expect("golden json parses")
}

/// A JSON number or one of the strings `nan`, `inf`, `-inf`.
fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "nan" => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        other => other.as_f64().expect("golden value is a number"),
    }
}

/// Equal within `tol` element-wise (NaN == NaN, inf == inf of the same sign).
fn assert_all_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let ok = if a.is_nan() || b.is_nan() {
            a.is_nan() && b.is_nan()
        } else if a.is_infinite() || b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= tol
        };
        assert!(ok, "{what}[{i}]: got {a}, MONAI {b} (tol {tol})\n got  {got:?}\n want {want:?}");
    }
}

fn cube(dims: [usize; 3], lo: usize, hi: usize, c: u8) -> Vec<u8> {
    let mut v = vec![0u8; dims.iter().product()];
    for i0 in lo..hi {
        for i1 in lo..hi {
            for i2 in lo..hi {
                v[(i0 * dims[1] + i1) * dims[2] + i2] = c;
            }
        }
    }
    v
}

#[test]
fn read_gives_medseg_data_axis_order_and_spacing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dims = [3, 4, 5];
    let data: Vec<u8> = (0..60).map(|i| (i % 7) as u8).collect();
    let path = dir.path().join("x.nii.gz");
    write_nifti(&path, &data, dims, [2.5, 1.0, 0.5]);
    let m = read_label_map(&path, "prediction").expect("read");
    // medseg-data's `Volume` order: [nx, ny, nz] with z fastest, the transpose of the file's.
    assert_eq!(m.dims, [5, 4, 3]);
    assert_eq!(m.spacing, [0.5, 1.0, 2.5]);
    let transposed: Vec<u16> = (0..60)
        .map(|i| {
            let (x, y, z) = (i / 12, (i / 3) % 4, i % 3);
            u16::from(data[(z * 4 + y) * 5 + x])
        })
        .collect();
    assert_eq!(m.data, transposed);
}

#[test]
fn folders_pair_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pd, gd) = (dir.path().join("pred"), dir.path().join("gt"));
    std::fs::create_dir_all(&pd).expect("mkdir");
    std::fs::create_dir_all(&gd).expect("mkdir");
    let dims = [10, 10, 10];
    for (name, shift) in [("a.nii.gz", 0), ("b.nii", 1)] {
        write_nifti(&gd.join(name), &cube(dims, 2, 5, 1), dims, [1.0, 1.0, 1.0]);
        write_nifti(&pd.join(name), &cube(dims, 2 + shift, 5 + shift, 1), dims, [1.0, 1.0, 1.0]);
    }
    std::fs::write(gd.join("notes.txt"), "ignored").expect("write");
    let r = eval(&pd, &gd, &MetricsConfig::new(2, 1.0)).expect("eval");
    let names: Vec<&str> = r.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(r.cases[0].classes[0].dice, 1.0);
    // The offset cubes of swin-reference.md §5.2.
    let b = &r.cases[1].classes[0];
    let s = b.surface.expect("on");
    assert!(
        (b.dice - 0.2963).abs() < 1e-4
            && (s.hd95 - std::f64::consts::SQRT_2).abs() < 1e-4
            && (s.nsd - 0.7308).abs() < 1e-4
    );
}

#[test]
fn folder_errors_name_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pd, gd) = (dir.path().join("pred"), dir.path().join("gt"));
    std::fs::create_dir_all(&pd).expect("mkdir");
    std::fs::create_dir_all(&gd).expect("mkdir");
    let cfg = MetricsConfig::new(2, 1.0);
    assert!(matches!(eval(&pd, &gd, &cfg), Err(Error::NoCases { .. })));

    let dims = [6, 6, 6];
    write_nifti(&gd.join("a.nii.gz"), &cube(dims, 1, 3, 1), dims, [1.0; 3]);
    let e = eval(&pd, &gd, &cfg).expect_err("missing");
    assert!(
        matches!(e, Error::MissingPrediction { .. }) && e.to_string().contains("a.nii.gz"),
        "{e}"
    );

    write_nifti(&pd.join("a.nii.gz"), &cube([6, 6, 7], 1, 3, 1), [6, 6, 7], [1.0; 3]);
    let e = eval(&pd, &gd, &cfg).expect_err("shape");
    assert!(
        matches!(
            e,
            Error::Metrics(medseg_metrics::Error::ShapeMismatch {
                pred: [7, 6, 6],
                gt: [6, 6, 6],
                ..
            })
        ),
        "{e}"
    );

    write_nifti(&pd.join("a.nii.gz"), &cube(dims, 1, 3, 1), dims, [2.0, 1.0, 1.0]);
    let e = eval(&pd, &gd, &cfg).expect_err("spacing");
    assert!(
        matches!(e, Error::Metrics(medseg_metrics::Error::SpacingMismatch { .. }))
            && e.to_string().contains("a.nii.gz"),
        "{e}"
    );

    write_nifti(&pd.join("a.nii.gz"), &cube(dims, 1, 3, 5), dims, [1.0; 3]);
    let e = eval(&pd, &gd, &cfg).expect_err("label 5");
    assert!(e.to_string().contains("pred") && e.to_string().contains("label 5"), "{e}");

    // Truncated gzip and garbage bytes.
    let good = std::fs::read(gd.join("a.nii.gz")).expect("read");
    std::fs::write(pd.join("a.nii.gz"), &good[..good.len() / 2]).expect("write");
    let e = eval(&pd, &gd, &cfg).expect_err("truncated");
    assert!(
        matches!(&e, Error::LabelMap { what: "prediction", path, .. } if path.ends_with("pred/a.nii.gz")),
        "{e}"
    );
    // One sentence naming the file, not the debug text of an I/O error.
    let text = e.to_string();
    assert!(text.starts_with("cannot read prediction ") && text.contains("a.nii.gz"), "{text}");
    assert!(!text.contains("Custom {") && !text.contains("kind:"), "{text}");
    std::fs::write(pd.join("a.nii.gz"), b"not a nifti file at all").expect("write");
    let e = eval(&pd, &gd, &cfg).expect_err("garbage");
    assert!(e.to_string().contains("a.nii.gz"), "{e}");
}

fn shared_data() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if p.join("ts-abdomen-3mm-small/seg.nii.gz").is_file() {
        Some(p)
    } else {
        println!("SKIP: {} not found (shared real label maps absent)", p.display());
        None
    }
}

/// MONAI goldens on a real TotalSegmentator map: ground truth shifted by one voxel along x and
/// class 13 removed (see `tools/golden/metrics_golden.py`, section 8).
#[test]
fn real_label_map_matches_monai() {
    let Some(data) = shared_data() else { return };
    let doc = golden_json();
    let real = &doc["real"];
    if real.get("file").is_none() {
        println!("SKIP: goldens were generated without the real label map");
        return;
    }
    let gt = read_label_map(&data.join(real["file"].as_str().expect("file")), "ground truth")
        .expect("read seg");
    let [nx, ny, nz] = gt.dims;
    let shape: Vec<usize> = real["shape_xyz"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().expect("n") as usize)
        .collect();
    assert_eq!(shape, [nx, ny, nz]);
    let mut pred = vec![0u16; gt.data.len()];
    // Shifted by one voxel along x (the slowest axis of medseg-data's order).
    for x in 1..nx {
        for y in 0..ny {
            for z in 0..nz {
                let v = gt.data[((x - 1) * ny + y) * nz + z];
                pred[(x * ny + y) * nz + z] = if v == 13 { 0 } else { v };
            }
        }
    }
    let cfg = MetricsConfig::new(118, num(&real["nsd_tolerance"]));
    let mut m = medseg_metrics::SegmentationMetric::new(cfg).expect("config");
    let scores = m.update(&pred, &gt.data, gt.dims, gt.spacing).expect("score").clone();
    let classes: Vec<usize> = real["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|v| v.as_u64().expect("c") as usize)
        .collect();
    let pick = |f: &dyn Fn(&medseg_metrics::ClassScores) -> f64| -> Vec<f64> {
        classes.iter().map(|&c| f(&scores.classes[c - 1])).collect()
    };
    let want = |k: &str| -> Vec<f64> {
        real["expected"][k].as_array().expect("k").iter().map(num).collect()
    };
    assert_all_close("real/dice", &pick(&|c| c.dice), &want("dice"), 1e-6);
    assert_all_close("real/hd", &pick(&|c| c.surface.expect("on").hd), &want("hd"), 1e-4);
    assert_all_close("real/hd95", &pick(&|c| c.surface.expect("on").hd95), &want("hd95"), 1e-4);
    assert_all_close("real/assd", &pick(&|c| c.surface.expect("on").assd), &want("assd"), 1e-4);
    assert_all_close("real/nsd", &pick(&|c| c.surface.expect("on").nsd), &want("nsd"), 1e-6);
    let table = GroupTable::totalsegmentator_v2();
    let grouped = table.group(&m.compute().with_class_names(&table.labels));
    assert_eq!(grouped.rows.len(), 5);
}

#[test]
fn real_folders_self_evaluation_is_perfect() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (pd, gd) = (dir.path().join("pred"), dir.path().join("gt"));
    std::fs::create_dir_all(&pd).expect("mkdir");
    std::fs::create_dir_all(&gd).expect("mkdir");
    for case in ["ts-abdomen-3mm-small", "ts-thorax-aorta-1.5mm"] {
        let src = data.join(case).join("seg.nii.gz");
        let name = format!("{case}.nii.gz");
        // Symlinks: the shared data is never copied.
        std::os::unix::fs::symlink(&src, gd.join(&name)).expect("symlink");
        std::os::unix::fs::symlink(&src, pd.join(&name)).expect("symlink");
    }
    let r = eval(&pd, &gd, &MetricsConfig::new(118, 2.0)).expect("eval");
    assert_eq!(r.cases.len(), 2);
    assert_eq!(r.cases[1].spacing, [1.5, 1.5, 1.5]);
    for c in r.cases.iter().flat_map(|c| &c.classes).filter(|c| c.gt_voxels > 0) {
        let s = c.surface.expect("on");
        assert_eq!((c.dice, s.hd, s.nsd), (1.0, 0.0, 1.0), "class {}", c.class);
    }
}

#[test]
fn affines_must_agree_unless_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pd, gd) = (dir.path().join("pred"), dir.path().join("gt"));
    std::fs::create_dir_all(&pd).expect("mkdir");
    std::fs::create_dir_all(&gd).expect("mkdir");
    let dims = [6, 6, 6];
    let labels = cube(dims, 1, 4, 1);
    let eye = [[1.0, 0.0, 0.0, -3.0], [0.0, 1.0, 0.0, -3.0], [0.0, 0.0, 1.0, 10.0]];
    write_nifti_with(&gd.join("a.nii.gz"), &labels, dims, [1.0; 3], Some(eye));
    let cfg = MetricsConfig::new(2, 1.0);

    // Within the tolerance (float32 noise of a header): scored.
    let mut near = eye;
    near[0][3] += 1e-4;
    write_nifti_with(&pd.join("a.nii.gz"), &labels, dims, [1.0; 3], Some(near));
    assert_eq!(eval(&pd, &gd, &cfg).expect("near").cases[0].classes[0].dice, 1.0);

    // Flipped along x and shifted by 2 mm: the same voxels, another place in the world.
    let mut flipped = eye;
    flipped[0][0] = -1.0;
    flipped[0][3] = 2.0;
    let mut shifted = eye;
    shifted[2][3] += 2.0;
    for (what, sform) in [("flipped", flipped), ("shifted", shifted)] {
        write_nifti_with(&pd.join("a.nii.gz"), &labels, dims, [1.0; 3], Some(sform));
        let e = eval(&pd, &gd, &cfg).expect_err(what);
        let text = e.to_string();
        assert!(matches!(e, Error::AffineMismatch(_)), "{what}: {text}");
        assert!(
            text.contains("pred/a.nii.gz")
                && text.contains("gt/a.nii.gz")
                && text.contains("--ignore-affine")
                && text.contains("[1.0, 0.0, 0.0, -3.0]"),
            "{what}: both affines and both files are printed: {text}"
        );
        let r =
            eval_folders(&pd, &gd, &cfg, EvalOptions { ignore_affine: true }, &mut |_, _, _| {})
                .expect("ignored");
        assert_eq!(r.cases[0].classes[0].dice, 1.0, "{what}: voxel-wise comparison");
    }
}
