//! NIfTI label-map reading and folder evaluation: synthetic files in a temp dir, plus the real
//! TotalSegmentator label maps of `../shared/data` (skipped with a message when absent).
use std::path::{Path, PathBuf};

use medseg_metrics::{Error, GroupTable, MetricsConfig, eval_folders, read_label_map};
use ndarray::{Array, ShapeBuilder};
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;

use crate::common::{assert_all_close, golden_json, num};

/// Writes a C-order `[nz, ny, nx]` u8 buffer as NIfTI with pixdim `[dx, dy, dz]`.
fn write_nifti(path: &Path, data: &[u8], dims: [usize; 3], spacing_zyx: [f32; 3]) {
    // NIfTI x is the fastest axis: Fortran order over [nx, ny, nz] is our C order over [nz, ny, nx].
    let arr = Array::from_shape_vec((dims[2], dims[1], dims[0]).f(), data.to_vec()).expect("shape");
    let h = NiftiHeader {
        pixdim: [1.0, spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0, 1.0, 1.0, 1.0],
        ..NiftiHeader::default()
    };
    WriterOptions::new(path).reference_header(&h).write_nifti(&arr).expect("write nifti");
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
fn read_roundtrip_keeps_order_and_spacing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dims = [3, 4, 5];
    let data: Vec<u8> = (0..60).map(|i| (i % 7) as u8).collect();
    let path = dir.path().join("x.nii.gz");
    write_nifti(&path, &data, dims, [2.5, 1.0, 0.5]);
    let m = read_label_map(&path).expect("read");
    assert_eq!(m.dims, dims);
    assert_eq!(m.spacing, [2.5, 1.0, 0.5]);
    assert_eq!(m.data, data.iter().map(|&x| u16::from(x)).collect::<Vec<_>>());
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
    let r = eval_folders(&pd, &gd, &MetricsConfig::new(2, 1.0), false).expect("eval");
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
    assert!(matches!(eval_folders(&pd, &gd, &cfg, false), Err(Error::NoCases { .. })));

    let dims = [6, 6, 6];
    write_nifti(&gd.join("a.nii.gz"), &cube(dims, 1, 3, 1), dims, [1.0; 3]);
    let e = eval_folders(&pd, &gd, &cfg, false).expect_err("missing");
    assert!(
        matches!(e, Error::MissingPrediction { .. }) && e.to_string().contains("a.nii.gz"),
        "{e}"
    );

    write_nifti(&pd.join("a.nii.gz"), &cube([6, 6, 7], 1, 3, 1), [6, 6, 7], [1.0; 3]);
    let e = eval_folders(&pd, &gd, &cfg, false).expect_err("shape");
    assert!(matches!(e, Error::ShapeMismatch { pred: [6, 6, 7], gt: [6, 6, 6], .. }), "{e}");

    write_nifti(&pd.join("a.nii.gz"), &cube(dims, 1, 3, 1), dims, [2.0, 1.0, 1.0]);
    let e = eval_folders(&pd, &gd, &cfg, false).expect_err("spacing");
    assert!(
        matches!(e, Error::SpacingMismatch { .. }) && e.to_string().contains("a.nii.gz"),
        "{e}"
    );

    write_nifti(&pd.join("a.nii.gz"), &cube(dims, 1, 3, 5), dims, [1.0; 3]);
    let e = eval_folders(&pd, &gd, &cfg, false).expect_err("label 5");
    assert!(e.to_string().contains("pred") && e.to_string().contains("label 5"), "{e}");

    // Truncated gzip and garbage bytes.
    let good = std::fs::read(gd.join("a.nii.gz")).expect("read");
    std::fs::write(pd.join("a.nii.gz"), &good[..good.len() / 2]).expect("write");
    let e = eval_folders(&pd, &gd, &cfg, false).expect_err("truncated");
    assert!(matches!(&e, Error::Nifti { path, .. } if path.ends_with("pred/a.nii.gz")), "{e}");
    std::fs::write(pd.join("a.nii.gz"), b"not a nifti file at all").expect("write");
    let e = eval_folders(&pd, &gd, &cfg, false).expect_err("garbage");
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
    let gt = read_label_map(&data.join(real["file"].as_str().expect("file"))).expect("read seg");
    let [nz, ny, nx] = gt.dims;
    let shape: Vec<usize> = real["shape_xyz"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().expect("n") as usize)
        .collect();
    assert_eq!(shape, [nx, ny, nz]);
    let mut pred = vec![0u16; gt.data.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 1..nx {
                let v = gt.data[(z * ny + y) * nx + x - 1];
                pred[(z * ny + y) * nx + x] = if v == 13 { 0 } else { v };
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
    let r = eval_folders(&pd, &gd, &MetricsConfig::new(118, 2.0), false).expect("eval");
    assert_eq!(r.cases.len(), 2);
    assert_eq!(r.cases[1].spacing, [1.5, 1.5, 1.5]);
    for c in r.cases.iter().flat_map(|c| &c.classes).filter(|c| c.gt_voxels > 0) {
        let s = c.surface.expect("on");
        assert_eq!((c.dice, s.hd, s.nsd), (1.0, 0.0, 1.0), "class {}", c.class);
    }
}
