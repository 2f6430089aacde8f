//! NIfTI reading/writing: nibabel goldens, the shared CT cases, round trips and bad input.
use medseg_data::spatial;
use medseg_data::{Error, Volume, read_info, read_volume, write_volume};

use crate::common::{affine, assert_close, f64s, golden, golden_dir, shape3, shared_data};

#[test]
fn reads_nibabel_files_like_nibabel() {
    let g = golden("nifti_small.json");
    let mut n = 0;
    for (name, exp) in g.as_object().expect("object") {
        let path = golden_dir().join("nifti").join(name);
        let vol: Volume<f64> = read_volume(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vol.shape(), shape3(&exp["shape"]), "{name}");
        let a = affine(&exp["affine"]);
        assert!(vol.affine.max_abs_diff(&a) < 1e-6, "{name}: {:?} vs {:?}", vol.affine, a);
        assert_eq!(vol.axcodes(), exp["axcodes"].as_str().unwrap_or_default(), "{name}");
        assert_close(name, vol.data(), &f64s(&exp["data"]), 1e-6, 1e-6);
        n += 1;
    }
    assert_eq!(n, 10);
}

#[test]
fn written_files_reread_identically() {
    let g = golden("nifti_small.json");
    let dir = tempfile::tempdir().expect("tempdir");
    for name in g.as_object().expect("object").keys() {
        let vol: Volume<f64> = read_volume(golden_dir().join("nifti").join(name)).expect("read");
        for ext in ["nii", "nii.gz"] {
            let out = dir.path().join(format!("out.{ext}"));
            write_volume(&out, &vol).expect("write");
            let back: Volume<f64> = read_volume(&out).expect("reread");
            assert_eq!(back, vol, "{name} via .{ext}");
            let info = read_info(&out).expect("info");
            assert_eq!((info.sform_code, info.qform_code), (2, 2));
        }
    }
}

#[test]
fn every_voxel_type_roundtrips() {
    fn rt<T: medseg_data::Voxel>(vals: [T; 4]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Volume::from_fn(
            [4, 3, 2],
            medseg_data::Affine::from_diagonal([1.5, 2.0, -3.0]),
            |i, j, k| vals[(i + j + k) % 4],
        );
        let p = dir.path().join("x.nii.gz");
        write_volume(&p, &v).expect("write");
        let back: Volume<T> = read_volume(&p).expect("read");
        assert_eq!(back, v);
        assert_eq!(read_info(&p).expect("info").dtype, T::DTYPE);
    }
    rt::<u8>([0, 1, 200, 255]);
    rt::<i8>([-128, 0, 5, 127]);
    rt::<u16>([0, 1, 65535, 7]);
    rt::<i16>([-32768, 0, 1000, 32767]);
    rt::<u32>([0, 1, u32::MAX, 7]);
    rt::<i32>([i32::MIN, 0, 1000, i32::MAX]);
    rt::<f32>([-1.5, 0.0, 1e30, f32::MIN_POSITIVE]);
    rt::<f64>([-1.5, 0.0, 1e300, 1e-300]);
}

#[test]
fn shared_cases_match_nibabel() {
    let Some(root) = shared_data() else { return };
    let g = golden("shared_cases.json");
    for (case, exp) in g.as_object().expect("object") {
        let ct: Volume<f32> =
            read_volume(root.join(case).join("ct.nii.gz")).unwrap_or_else(|e| panic!("{e}"));
        let seg: Volume<u8> =
            read_volume(root.join(case).join("seg.nii.gz")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ct.shape(), shape3(&exp["shape"]), "{case}");
        assert!(ct.same_grid(&seg, 0.0), "{case}: ct/seg grids differ");
        assert!(ct.affine.max_abs_diff(&affine(&exp["affine"])) < 1e-9, "{case}");
        assert_eq!(ct.axcodes(), exp["axcodes"].as_str().unwrap_or_default(), "{case}");
        let sum: f64 = ct.data().iter().map(|&v| v as f64).sum();
        assert!(
            (sum - exp["ct_sum"].as_f64().unwrap_or_default()).abs() < 1e-3 * sum.abs().max(1.0),
            "{case}"
        );
        assert_eq!(
            *seg.data().iter().max().unwrap_or(&0) as u64,
            exp["seg_max"].as_u64().unwrap_or_default()
        );
        let probes = exp["probe"].as_array().expect("probe");
        for (n, p) in probes.iter().enumerate() {
            let p = shape3(p);
            assert_eq!(
                ct.at(p[0], p[1], p[2]) as f64,
                exp["ct_values"][n].as_f64().unwrap_or_default()
            );
            assert_eq!(
                seg.at(p[0], p[1], p[2]) as u64,
                exp["seg_values"][n].as_u64().unwrap_or_default()
            );
            let w = ct.world([p[0] as f64, p[1] as f64, p[2] as f64]);
            assert_close("world", &w, &f64s(&exp["world"][n]), 1e-6, 0.0);
        }
        // Orientation to RAS as MONAI does it, then back to the original codes.
        let ras = spatial::orient(&ct, "RAS").expect("orient");
        assert_eq!(ras.shape(), shape3(&exp["ras_shape"]), "{case}");
        assert!(ras.affine.max_abs_diff(&affine(&exp["ras_affine"])) < 1e-9, "{case}");
        assert_eq!(ras.axcodes(), "RAS");
        for (n, p) in probes.iter().enumerate() {
            let p = shape3(p);
            assert_eq!(
                ras.at(p[0], p[1], p[2]) as f64,
                exp["ras_values"][n].as_f64().unwrap_or_default()
            );
        }
        let back = spatial::orient(&ras, &ct.axcodes()).expect("orient back");
        assert_eq!(back, ct, "{case}: orientation round trip");
        // World coordinates of a voxel are preserved by reorientation.
        let w_old = ct.world([3.0, 5.0, 7.0]);
        let v_old = ct.at(3, 5, 7);
        let idx = ras.affine.inverse().expect("inv").apply(w_old).map(|x| x.round() as usize);
        assert_eq!(ras.at(idx[0], idx[1], idx[2]), v_old);
        // Round trip through our writer.
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("ct.nii.gz");
        write_volume(&out, &ct).expect("write");
        let again: Volume<f32> = read_volume(&out).expect("reread");
        assert_eq!(again, ct);
    }
}

#[test]
fn corrupt_and_truncated_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read(golden_dir().join("nifti/i8.nii")).expect("read");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.nii", vec![]),
        ("text.nii", b"hello, this is not a nifti file at all".repeat(20)),
        ("truncated.nii", good[..good.len() - 10].to_vec()),
        ("header_only.nii", good[..300].to_vec()),
        ("bad.nii.gz", vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]),
        ("nifti2.nii", {
            let mut b = good.clone();
            b[..4].copy_from_slice(&540i32.to_le_bytes());
            b
        }),
        ("fourd.nii", {
            let mut b = good.clone();
            b[40..42].copy_from_slice(&4i16.to_le_bytes());
            b[48..50].copy_from_slice(&5i16.to_le_bytes());
            b
        }),
        ("badtype.nii", {
            let mut b = good.clone();
            b[70..72].copy_from_slice(&1i16.to_le_bytes());
            b
        }),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        let err = read_volume::<f32>(&p).expect_err(name);
        assert!(matches!(err, Error::Nifti { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: message must name the file: {err}");
    }
    let missing = read_volume::<f32>(dir.path().join("missing.nii")).expect_err("missing");
    assert!(matches!(missing, Error::Io { .. }));
}

#[test]
fn labels_out_of_type_range_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("lbl.nii.gz");
    let v = Volume::from_fn([3, 3, 3], medseg_data::Affine::identity(), |i, _, _| (i * 200) as u16);
    write_volume(&p, &v).expect("write");
    let err = read_volume::<u8>(&p).expect_err("400 does not fit u8");
    assert!(matches!(err, Error::BadVoxels { .. }), "{err}");
    assert!(err.to_string().contains("400"), "{err}");
    let f = Volume::from_fn([2, 2, 2], medseg_data::Affine::identity(), |i, _, _| i as f32 + 0.5);
    write_volume(&p, &f).expect("write");
    assert!(matches!(read_volume::<u8>(&p), Err(Error::BadVoxels { .. })));
}

#[test]
fn predictions_map_back_to_the_original_grid() {
    use medseg_data::transforms::{self, BtcvConfig};
    let Some(root) = shared_data() else { return };
    for case in ["ts-abdomen-3mm-small", "ts-thorax-aorta-1.5mm"] {
        let item = medseg_data::DataItem::new(
            root.join(case).join("ct.nii.gz"),
            Some(root.join(case).join("seg.nii.gz")),
        );
        let s = medseg_data::dataset::load_sample(&item, None, 1e-3).expect("load");
        let orig = s.label.clone().expect("label");
        let mut rng = medseg_data::sample_rng(0, 0, 0);
        // Without resampling the inversion is exact.
        let mut cfg = BtcvConfig::research();
        cfg.pixdim = orig.spacing();
        let pre = transforms::btcv_val(&cfg).apply(s.clone(), &mut rng).expect("pre").remove(0);
        let p = pre.label.expect("label");
        let back = spatial::labels_to_original_grid(
            &p,
            &pre.meta.original_affine,
            pre.meta.original_shape,
        )
        .expect("back");
        assert_eq!(back.shape(), orig.shape());
        assert_eq!(back.affine, orig.affine);
        let fg = orig.data().iter().filter(|&&v| v > 0).count();
        let diff = back.data().iter().zip(orig.data()).filter(|(a, b)| a != b).count();
        assert!(diff * 1000 <= fg, "{case}: {diff} of {fg} foreground voxels differ");
        // Through the 1.5 × 1.5 × 2 mm BTCV spacing and back: nearest twice, nearly exact.
        let pre = transforms::btcv_val(&BtcvConfig::research())
            .apply(s, &mut rng)
            .expect("pre")
            .remove(0);
        let p = pre.label.expect("label");
        let back = spatial::labels_to_original_grid(
            &p,
            &pre.meta.original_affine,
            pre.meta.original_shape,
        )
        .expect("back");
        assert_eq!((back.shape(), back.affine), (orig.shape(), orig.affine));
        let diff = back.data().iter().zip(orig.data()).filter(|(a, b)| a != b).count();
        assert!(
            diff * 20 <= fg,
            "{case}: {diff} of {fg} foreground voxels differ after resampling"
        );
    }
}
