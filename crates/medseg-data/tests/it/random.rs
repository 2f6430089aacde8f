//! Random transforms: parameter distributions, probabilities and invariants.
use medseg_data::transforms::*;
use medseg_data::{Affine, Sample, Volume, sample_rng};

fn ramp() -> Sample {
    let img =
        Volume::from_fn([12, 10, 8], Affine::identity(), |i, j, k| (i * 100 + j * 10 + k) as f32);
    let lbl = img.map(|v| u8::from((v as u32).is_multiple_of(7)));
    Sample::new(img, Some(lbl)).expect("sample")
}

#[test]
fn flip_and_rot90_probabilities() {
    let mut rng = sample_rng(1, 0, 0);
    let f = RandFlip { prob: 0.2, axis: 1 };
    let n = 20_000;
    let hits = (0..n).filter(|_| f.sample(&mut rng)).count();
    assert!((hits as f64 / n as f64 - 0.2).abs() < 0.015, "{hits}");
    let r = RandRotate90 { prob: 0.5, max_k: 3, axes: (0, 1) };
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[r.sample(&mut rng) as usize] += 1;
    }
    assert!((counts[0] as f64 / n as f64 - 0.5).abs() < 0.02, "{counts:?}");
    for k in 1..4 {
        assert!((counts[k] as f64 / n as f64 - 0.5 / 3.0).abs() < 0.02, "{counts:?}");
    }
}

#[test]
fn intensity_transforms_stay_in_range() {
    let base = ramp();
    let mut rng = sample_rng(2, 0, 0);
    let sc = RandScaleIntensity { prob: 1.0, factors: 0.1 };
    let sh = RandShiftIntensity { prob: 1.0, offsets: 0.1 };
    let mut seen = (f32::MAX, f32::MIN);
    for _ in 0..500 {
        let s = sc.apply(base.clone(), &mut rng).expect("scale");
        let f = s.image.at(1, 0, 0) / base.image.at(1, 0, 0) - 1.0;
        assert!(f.abs() <= 0.1 + 1e-6, "{f}");
        seen = (seen.0.min(f), seen.1.max(f));
        let t = sh.apply(base.clone(), &mut rng).expect("shift");
        let o = t.image.at(0, 0, 0) - base.image.at(0, 0, 0);
        assert!(o.abs() <= 0.1 + 1e-6);
        assert_eq!(t.label, base.label, "intensity transforms leave labels alone");
    }
    assert!(seen.0 < -0.09 && seen.1 > 0.09, "factor range covered: {seen:?}");
}

#[test]
fn gaussian_noise_has_the_sampled_std() {
    let s = Sample::new(Volume::filled([32, 32, 32], 0.0f32, Affine::identity()), None).expect("s");
    let t = RandGaussianNoise { prob: 1.0, mean: 0.0, std: 0.1 };
    let mut rng = sample_rng(3, 0, 0);
    let mut stds = Vec::new();
    for _ in 0..50 {
        let out = t.apply(s.clone(), &mut rng).expect("noise");
        let n = out.image.len() as f64;
        let mean = out.image.data().iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = out.image.data().iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01);
        stds.push(var.sqrt());
    }
    assert!(stds.iter().all(|&s| s <= 0.101));
    let m = stds.iter().sum::<f64>() / stds.len() as f64;
    assert!((m - 0.05).abs() < 0.015, "std ~ U(0, 0.1) has mean 0.05, got {m}");
}

#[test]
fn pos_neg_crop_ratio_and_bounds() {
    // One small foreground cube in a big background.
    let img = Volume::from_fn([40, 40, 40], Affine::identity(), |_, _, _| 1.0f32);
    let lbl = Volume::from_fn([40, 40, 40], Affine::identity(), |i, j, k| {
        u8::from(i < 4 && j < 4 && k < 4)
    });
    let t = RandCropByPosNegLabel {
        size: [8, 8, 8],
        pos: 1.0,
        neg: 3.0,
        num_samples: 1,
        image_threshold: 0.0,
    };
    let mut rng = sample_rng(4, 0, 0);
    let n = 4000;
    let mut with_fg = 0;
    for _ in 0..n {
        let starts = t.sample(&img, &lbl, &mut rng).expect("starts");
        let st = starts[0];
        assert!(st.iter().all(|&s| (0..=32).contains(&s)), "crop inside: {st:?}");
        if st.iter().all(|&s| s == 0) {
            with_fg += 1;
        }
    }
    // pos/(pos+neg) = 0.25 of crops centre on foreground (all shifted to start 0); background
    // centres land at start 0 only with tiny probability.
    let frac = with_fg as f64 / n as f64;
    assert!((frac - 0.25).abs() < 0.03, "{frac}");
}

#[test]
fn small_volumes_are_padded_before_cropping() {
    let s = ramp();
    let t = RandCropByPosNegLabel {
        size: [16, 16, 16],
        pos: 1.0,
        neg: 1.0,
        num_samples: 2,
        image_threshold: -1.0,
    };
    let mut rng = sample_rng(5, 0, 0);
    let out = t.apply_multi(s, &mut rng).expect("crop");
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|s| s.image.shape() == [16, 16, 16]));
    assert_eq!(out[1].meta.patch_index, 1);
}

#[test]
fn zoom_and_affine_keep_the_shape() {
    let mut rng = sample_rng(6, 0, 0);
    let z = RandZoom {
        prob: 1.0,
        min_zoom: 1.3,
        max_zoom: 1.5,
        image_mode: medseg_data::spatial::ZoomMode::Area,
    };
    let a = RandAffine {
        prob: 1.0,
        rotate_range: [0.2; 3],
        scale_range: [0.1; 3],
        translate_range: [1.0; 3],
        padding: medseg_data::spatial::Padding::Reflection,
    };
    for _ in 0..5 {
        let s = z.apply(ramp(), &mut rng).expect("zoom");
        assert_eq!(s.image.shape(), [12, 10, 8]);
        assert!(s.image.same_grid(s.label.as_ref().expect("l"), 1e-9));
        let s = a.apply(ramp(), &mut rng).expect("affine");
        assert_eq!(s.image.shape(), [12, 10, 8]);
    }
    // Identity parameters give the identity.
    let id = RandAffine {
        prob: 1.0,
        rotate_range: [0.0; 3],
        scale_range: [0.0; 3],
        translate_range: [0.0; 3],
        ..a
    };
    let s = id.apply(ramp(), &mut rng).expect("id");
    assert_eq!(s.image, ramp().image);
}

#[test]
fn invalid_parameters_are_errors() {
    let mut rng = sample_rng(7, 0, 0);
    assert!(RandFlip { prob: 1.0, axis: 3 }.apply(ramp(), &mut rng).is_err());
    assert!(RandRotate90 { prob: 1.0, max_k: 3, axes: (1, 1) }.apply(ramp(), &mut rng).is_err());
    assert!(
        RandGaussianNoise { prob: 1.0, mean: 0.0, std: f64::INFINITY }
            .apply(ramp(), &mut rng)
            .is_err()
    );
    let bad = RandCropByPosNegLabel {
        size: [4; 3],
        pos: 0.0,
        neg: 0.0,
        num_samples: 1,
        image_threshold: 0.0,
    };
    assert!(bad.apply_multi(ramp(), &mut rng).is_err());
    let sir = ScaleIntensityRange { a_min: 1.0, a_max: 1.0, b_min: 0.0, b_max: 1.0, clip: true };
    assert!(sir.apply(ramp(), &mut rng).is_err());
    assert!(Spacing { pixdim: [0.0, 1.0, 1.0] }.apply(ramp(), &mut rng).is_err());
    assert!(Orientation { axcodes: "XYZ".into() }.apply(ramp(), &mut rng).is_err());
}

#[test]
fn spatial_pad_and_crops_keep_world_coordinates() {
    let s = ramp();
    let mut rng = sample_rng(8, 0, 0);
    let p = SpatialPad { size: [16, 9, 11] }.apply(s.clone(), &mut rng).expect("pad");
    assert_eq!(p.image.shape(), [16, 10, 11], "larger axes untouched");
    // Symmetric: (16 - 12) / 2 = 2 before on axis 0, (11 - 8) / 2 = 1 before on axis 2.
    assert_eq!(p.image.at(2, 0, 1), s.image.at(0, 0, 0));
    assert_eq!(p.image.at(0, 0, 0), 0.0);
    assert_eq!(p.image.world([2.0, 0.0, 1.0]), s.image.world([0.0, 0.0, 0.0]));
    let r = RandSpatialCropSamples { size: [5, 4, 3], num_samples: 3 };
    let out = r.apply_multi(s.clone(), &mut rng).expect("crops");
    assert_eq!(out.len(), 3);
    for c in &out {
        assert_eq!(c.image.shape(), [5, 4, 3]);
        // The crop's first voxel is the source voxel at the same world position.
        let w = c.image.world([0.0; 3]);
        let idx = s.image.affine.inverse().expect("inv").apply(w).map(|x| x.round() as usize);
        assert_eq!(c.image.at(0, 0, 0), s.image.at(idx[0], idx[1], idx[2]));
        assert_eq!(
            c.label.as_ref().expect("l").at(0, 0, 0),
            s.label.as_ref().expect("l").at(idx[0], idx[1], idx[2])
        );
    }
    let c =
        medseg_data::spatial::resize_with_pad_or_crop(&s.image, [8, 12, 8], -1.0).expect("resize");
    assert_eq!(c.shape(), [8, 12, 8]);
    assert_eq!(
        c.at(0, 1, 0),
        s.image.at(2, 0, 0),
        "centre crop start 12/2 - 8/2 = 2, pad 1 before"
    );
}
