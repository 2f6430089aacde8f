//! Datasets, the phantom generator, the loader (determinism, ordering, caching) and collate.
use std::sync::Arc;

use medseg_data::dataset::{InMemoryDataset, load_sample};
use medseg_data::phantom::{self, PhantomConfig};
use medseg_data::transforms::{self, BtcvConfig};
use medseg_data::{
    Affine, CacheMode, DataItem, Datalist, Error, Loader, LoaderConfig, NiftiDataset, Volume,
    read_volume, write_volume,
};

fn small_phantom(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = PhantomConfig {
        n_cases: 4,
        n_validation: 1,
        shape: [32, 32, 24],
        ..PhantomConfig::default()
    };
    phantom::generate(dir, &cfg).expect("phantom")
}

#[test]
fn phantom_is_deterministic_and_well_formed() {
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let ja = small_phantom(a.path());
    small_phantom(b.path());
    for f in ["imagesTr/phantom_000.nii.gz", "labelsTr/phantom_003.nii.gz", "dataset.json"] {
        let x = std::fs::read(a.path().join(f)).expect("read");
        let y = std::fs::read(b.path().join(f)).expect("read");
        assert!(x == y, "{f} differs between runs");
    }
    let dl = Datalist::from_json(&ja).expect("datalist");
    assert_eq!((dl.training.len(), dl.validation.len()), (3, 1));
    assert_eq!(dl.num_classes(), Some(6));
    let s = load_sample(&dl.training[0], dl.num_classes(), 1e-3).expect("load");
    let counts = s.label.as_ref().expect("label").data().iter().fold([0usize; 6], |mut c, &v| {
        c[v as usize] += 1;
        c
    });
    assert!(counts.iter().all(|&c| c > 0), "every class present: {counts:?}");
    // Liver is brighter than the body fat, bone brightest, air outside.
    let mean = |cls: u8| {
        let (sum, n) = s
            .image
            .data()
            .iter()
            .zip(s.label.as_ref().expect("l").data())
            .filter(|(_, l)| **l == cls)
            .fold((0.0f64, 0usize), |(a, n), (v, _)| (a + *v as f64, n + 1));
        sum / n as f64
    };
    assert!(
        mean(1) > 40.0 && mean(5) > 300.0 && mean(0) < -100.0,
        "{} {} {}",
        mean(1),
        mean(5),
        mean(0)
    );
    // Different seeds differ.
    let c = phantom::generate_case(&PhantomConfig { seed: 1, ..PhantomConfig::default() }, 0)
        .expect("case");
    let d = phantom::generate_case(&PhantomConfig::default(), 0).expect("case");
    assert_ne!(c.0, d.0);
}

#[test]
fn uniform_contrast_keeps_the_anatomy_and_equalises_the_organs() {
    use medseg_data::phantom::OrganContrast;
    // Noise-free, so every voxel can be compared with the distinct phantom's.
    let small = PhantomConfig { shape: [40, 40, 40], noise_hu: 0.0, ..PhantomConfig::default() };
    let (img_d, lab_d) = phantom::generate_case(&small, 3).expect("distinct");
    let uniform = PhantomConfig { contrast: OrganContrast::Uniform, ..small };
    let (img_u, lab_u) = phantom::generate_case(&uniform, 3).expect("uniform");
    assert_eq!(lab_d.data(), lab_u.data(), "same seed, same anatomy");
    let mut kidney_cortex = 0;
    for ((&d, &u), &l) in img_d.data().iter().zip(img_u.data()).zip(lab_u.data()) {
        let (d, u) = (d as i32, u as i32);
        match l {
            // Liver 65 + 4t + shift and spleen 45 + 4t + shift become 50 + 4t + shift (±1 rounding).
            1 => assert!((u - (d - 15)).abs() <= 1, "liver {d} -> {u}"),
            2 => assert!((u - (d + 5)).abs() <= 1, "spleen {d} -> {u}"),
            // Kidneys lose the 160 HU cortex: 50 ± 24 (texture) ± 10 (per-case shift).
            3 | 4 => {
                assert!((16..=84).contains(&u), "kidney {d} -> {u}");
                kidney_cortex += usize::from(d >= 150);
            }
            _ => assert_eq!(d, u, "outside the four organs nothing changes"),
        }
    }
    assert!(kidney_cortex > 0, "the distinct phantom has a kidney cortex");
}

#[test]
fn datalist_errors_name_the_missing_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = small_phantom(dir.path());
    std::fs::remove_file(dir.path().join("labelsTr/phantom_001.nii.gz")).expect("rm");
    let err = Datalist::from_json(&json).expect_err("missing label");
    assert!(matches!(err, Error::Dataset { .. }));
    assert!(err.to_string().contains("phantom_001"), "{err}");
    let err = Datalist::from_folders(dir.path()).expect_err("missing label");
    assert!(err.to_string().contains("phantom_001"), "{err}");
    std::fs::write(dir.path().join("bad.json"), "{ not json").expect("write");
    assert!(matches!(Datalist::from_json(dir.path().join("bad.json")), Err(Error::Json { .. })));
}

#[test]
fn folder_pairs_and_validation_split() {
    let dir = tempfile::tempdir().expect("tmp");
    small_phantom(dir.path());
    let mut dl = Datalist::from_folders(dir.path()).expect("folders");
    assert_eq!(dl.training.len(), 4);
    assert_eq!(dl.training[2].id, "phantom_002");
    dl.split_validation(0.25, 7);
    assert_eq!((dl.training.len(), dl.validation.len()), (3, 1));
}

#[test]
fn bad_samples_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = |n: &str| dir.path().join(n);
    let aff = Affine::from_diagonal([2.0, 2.0, 2.0]);
    let img = Volume::from_fn([8, 8, 8], aff, |i, _, _| i as f32);
    write_volume(p("img.nii.gz"), &img).expect("w");
    // Shape mismatch.
    write_volume(p("small.nii.gz"), &Volume::filled([8, 8, 7], 0u8, aff)).expect("w");
    let e = load_sample(&DataItem::new(p("img.nii.gz"), Some(p("small.nii.gz"))), None, 1e-3)
        .expect_err("shape");
    assert!(
        matches!(e, Error::GeometryMismatch { .. }) && e.to_string().contains("small.nii.gz"),
        "{e}"
    );
    // Affine mismatch.
    write_volume(
        p("shifted.nii.gz"),
        &Volume::filled([8, 8, 8], 0u8, Affine::translation([1.0, 0.0, 0.0])),
    )
    .expect("w");
    let e = load_sample(&DataItem::new(p("img.nii.gz"), Some(p("shifted.nii.gz"))), None, 1e-3)
        .expect_err("affine");
    assert!(matches!(e, Error::GeometryMismatch { .. }), "{e}");
    // Label out of range.
    write_volume(p("lbl.nii.gz"), &Volume::from_fn([8, 8, 8], aff, |i, _, _| i as u8)).expect("w");
    let e = load_sample(&DataItem::new(p("img.nii.gz"), Some(p("lbl.nii.gz"))), Some(5), 1e-3)
        .expect_err("range");
    assert!(matches!(e, Error::LabelOutOfRange { value: 7, num_classes: 5, .. }), "{e}");
    // NaN voxels.
    write_volume(
        p("nan.nii.gz"),
        &Volume::from_fn([8, 8, 8], aff, |i, j, _| if i == 3 && j == 2 { f32::NAN } else { 0.0 }),
    )
    .expect("w");
    let e = load_sample(&DataItem::new(p("nan.nii.gz"), None), None, 1e-3).expect_err("nan");
    assert!(matches!(e, Error::BadVoxels { .. }) && e.to_string().contains("(3, 2, 0)"), "{e}");
    // Empty label map is fine; the crop sampler falls back to background centres.
    write_volume(p("empty.nii.gz"), &Volume::filled([8, 8, 8], 0u8, aff)).expect("w");
    let s = load_sample(&DataItem::new(p("img.nii.gz"), Some(p("empty.nii.gz"))), Some(2), 1e-3)
        .expect("empty ok");
    let t = transforms::RandCropByPosNegLabel {
        size: [4; 3],
        pos: 1.0,
        neg: 1.0,
        num_samples: 3,
        image_threshold: 0.0,
    };
    let mut rng = medseg_data::sample_rng(0, 0, 0);
    let out = medseg_data::Transform::apply_multi(&t, s, &mut rng).expect("bg crops");
    assert_eq!(out.len(), 3);
    let r: Volume<u8> = read_volume(p("empty.nii.gz")).expect("r");
    assert_eq!(r.shape(), [8, 8, 8]);
}

fn phantom_loader(dir: &std::path::Path, workers: usize, cache: CacheMode) -> Loader {
    let json = small_phantom(dir);
    let dl = Datalist::from_json(json).expect("dl");
    let nc = dl.num_classes();
    let ds = NiftiDataset::new(dl.training, nc);
    let cfg = BtcvConfig {
        roi: [16, 16, 16],
        num_samples: 2,
        pixdim: [3.0, 3.0, 3.0],
        ..BtcvConfig::research()
    };
    let lc = LoaderConfig {
        batch_size: 2,
        num_workers: workers,
        prefetch: 2,
        cache,
        ..LoaderConfig::train(2, 42)
    };
    Loader::new(Arc::new(ds), transforms::btcv_train(&cfg), lc).expect("loader")
}

fn epoch_bytes(l: &Loader, epoch: u64) -> Vec<(Vec<f32>, Vec<u32>, Vec<usize>)> {
    l.epoch(epoch)
        .map(|b| {
            let b = b.expect("batch");
            let dims = b.image.dims().to_vec();
            let img = b.image.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("img");
            let lbl = b
                .label
                .expect("label")
                .flatten_all()
                .and_then(|t| t.to_vec1::<u32>())
                .expect("lbl");
            (img, lbl, dims)
        })
        .collect()
}

#[test]
fn loader_is_deterministic_across_worker_counts_and_caches() {
    let dir = tempfile::tempdir().expect("tmp");
    let l0 = phantom_loader(dir.path(), 0, CacheMode::None);
    let l3 = phantom_loader(dir.path(), 3, CacheMode::Memory);
    let cache_dir = dir.path().join("cache");
    let ld = phantom_loader(dir.path(), 2, CacheMode::Disk(cache_dir.clone()));
    assert_eq!(l0.len(), 2);
    let a = epoch_bytes(&l0, 1);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].2, vec![4, 1, 16, 16, 16], "2 items × 2 crops");
    let first = l0.epoch(1).next().expect("batch").expect("ok");
    assert_eq!((first.meta.len(), first.affines.len()), (4, 4));
    assert_eq!(first.meta[1].patch_index, 1);
    assert!(a == epoch_bytes(&l3, 1), "3 workers differ from 0");
    assert!(a == epoch_bytes(&ld, 1), "disk cache (cold) differs");
    assert!(a == epoch_bytes(&ld, 1), "disk cache (warm) differs");
    assert!(std::fs::read_dir(&cache_dir).expect("cache").count() >= 3);
    assert!(a != epoch_bytes(&l3, 2), "epochs must differ");
    // Dropping an iterator early stops its workers cleanly.
    let mut it = l3.epoch(3);
    assert!(it.next().is_some());
    drop(it);
}

#[test]
fn resumable_stream_reopens_mid_epoch_with_the_same_batches() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = phantom_loader(dir.path(), 2, CacheMode::Memory);
    let image = |b: medseg_data::Batch| b.image.flatten_all().and_then(|t| t.to_vec1::<f32>());
    // Five batches straight through (2 per epoch: the stream rolls over twice).
    let (mut it, mut epoch, mut k) = (None, 0u64, 0usize);
    let straight: Vec<Vec<f32>> = (0..5)
        .map(|_| image(l.next_resumable(&mut it, &mut epoch, &mut k).expect("batch")).expect("v"))
        .collect();
    assert_eq!((epoch, k), (2, 1));
    // Three batches, then a "resume" from the saved position with no open iterator.
    let (mut it, mut epoch, mut k) = (None, 0u64, 0usize);
    let mut resumed: Vec<Vec<f32>> = (0..3)
        .map(|_| image(l.next_resumable(&mut it, &mut epoch, &mut k).expect("batch")).expect("v"))
        .collect();
    assert_eq!((epoch, k), (1, 1));
    let mut it = None;
    for _ in 0..2 {
        resumed.push(image(l.next_resumable(&mut it, &mut epoch, &mut k).expect("b")).expect("v"));
    }
    assert!(straight == resumed, "the resumed stream differs from the uninterrupted one");
}

#[test]
fn an_order_map_selects_items_with_their_unsharded_samples() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = phantom_loader(dir.path(), 2, CacheMode::Memory);
    // Odd positions of each epoch's order (what rank 1 of 2 takes), one item per batch here.
    let odd: medseg_data::OrderMap =
        Arc::new(|o: &[usize]| o.iter().skip(1).step_by(2).copied().collect());
    let s = l.with_order_map(odd);
    let full = l.order(3);
    assert_eq!(full.len(), 3, "3 training cases");
    assert_eq!(s.order(3), vec![full[1]]);
    assert_eq!((s.items_per_epoch(), s.len(), l.items_per_epoch(), l.len()), (1, 1, 3, 2));
    let batch = s.epoch(3).next().expect("one batch").expect("ok");
    let got = batch.image.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("img");
    let want: Vec<f32> = l
        .samples(3, full[1])
        .expect("samples")
        .iter()
        .flat_map(|x| x.image.data().to_vec())
        .collect();
    assert!(got == want, "a mapped item differs from the unsharded loader's samples of it");
    // The stream API runs over the mapped epochs too.
    let (mut it, mut epoch, mut k) = (None, 0u64, 0usize);
    for _ in 0..3 {
        s.next_resumable(&mut it, &mut epoch, &mut k).expect("batch");
    }
    assert_eq!((epoch, k), (2, 1), "one batch per mapped epoch");
}

#[test]
fn random_spatial_transforms_keep_image_and_label_aligned() {
    // Label = (image > 0.5) on an image that is a smooth function of the distance to two spheres:
    // a misalignment moves the label's centroid away from the thresholded image's centroid.
    use medseg_data::spatial::{Padding, ZoomMode};
    use transforms::*;
    let aff = Affine::from_diagonal([1.5, 1.5, 2.0]);
    let img = Volume::from_fn([30, 26, 20], aff, |i, j, k| {
        let d = |c: [f32; 3]| {
            ((i as f32 - c[0]).powi(2) + (j as f32 - c[1]).powi(2) + (k as f32 - c[2]).powi(2))
                .sqrt()
        };
        let v = (7.0 - d([12.0, 11.0, 9.0])).max(4.0 - d([22.0, 18.0, 12.0]));
        (0.5 + v / 4.0).clamp(0.0, 1.0)
    });
    let lbl = img.map(|v| u8::from(v > 0.5));
    let s = medseg_data::Sample::new(img, Some(lbl)).expect("sample");
    let ds = InMemoryDataset(vec![s]);
    let pipeline = || {
        Compose(vec![
            Box::new(RandZoom {
                prob: 0.5,
                min_zoom: 1.1,
                max_zoom: 1.4,
                image_mode: ZoomMode::Trilinear,
            }),
            Box::new(RandAffine {
                prob: 0.5,
                rotate_range: [0.3; 3],
                scale_range: [0.1; 3],
                translate_range: [2.0; 3],
                padding: Padding::Border,
            }),
            Box::new(RandCropByPosNegLabel {
                size: [16; 3],
                pos: 1.0,
                neg: 1.0,
                num_samples: 2,
                image_threshold: 0.0,
            }),
            Box::new(RandFlip { prob: 0.5, axis: 0 }),
            Box::new(RandFlip { prob: 0.5, axis: 1 }),
            Box::new(RandFlip { prob: 0.5, axis: 2 }),
            Box::new(RandRotate90 { prob: 0.5, max_k: 3, axes: (0, 1) }),
        ])
    };
    let l = Loader::new(
        Arc::new(ds),
        pipeline(),
        LoaderConfig { cache: CacheMode::None, ..LoaderConfig::train(1, 3) },
    )
    .expect("loader");
    for e in 0..30 {
        for s in l.samples(e, 0).expect("samples") {
            let lab = s.label.expect("label");
            assert_eq!(lab.shape(), [16, 16, 16]);
            assert!(s.image.same_grid(&lab, 1e-9), "affines must follow both volumes");
            let centroid = |mask: &dyn Fn(usize) -> bool| {
                let (mut c, mut n) = ([0.0f64; 3], 0usize);
                for idx in (0..lab.len()).filter(|&i| mask(i)) {
                    let p = [idx / 256, (idx / 16) % 16, idx % 16];
                    (0..3).for_each(|d| c[d] += p[d] as f64);
                    n += 1;
                }
                (c.map(|v| v / n.max(1) as f64), n)
            };
            let (cl, nl) = centroid(&|i| lab.data()[i] == 1);
            let (ci, ni) = centroid(&|i| s.image.data()[i] > 0.5);
            if nl >= 30 && ni >= 30 {
                let dist = (0..3).map(|d| (cl[d] - ci[d]).powi(2)).sum::<f64>().sqrt();
                assert!(dist < 0.75, "epoch {e}: label/image centroids {cl:?} vs {ci:?}");
            }
            let agree = s
                .image
                .data()
                .iter()
                .zip(lab.data())
                .filter(|(v, l)| (**l == 1) == (**v > 0.5))
                .count();
            assert!(
                agree * 100 >= lab.len() * 90,
                "epoch {e}: only {agree}/{} voxels aligned",
                lab.len()
            );
        }
    }
}

#[test]
fn validation_predictions_are_written_on_the_input_grid() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = small_phantom(dir.path());
    let dl = Datalist::from_json(json).expect("dl");
    // Upsampling 2 mm -> 1 mm and back with nearest neighbours is exact; a coarser grid loses
    // boundary voxels of the small phantom organs.
    for (pixdim, max_frac) in [([1.0, 1.0, 1.0], 0.0), ([3.0, 2.5, 2.0], 0.25)] {
        let cfg = BtcvConfig { pixdim, ..BtcvConfig::research() };
        let l = Loader::new(
            Arc::new(dl.validation_dataset()),
            transforms::btcv_val(&cfg),
            LoaderConfig::val(),
        )
        .expect("loader");
        for b in l.epoch(0) {
            let b = b.expect("batch");
            let dims = b.image.dims().to_vec();
            // "Predict" the label itself.
            let lbl = b
                .label
                .expect("label")
                .flatten_all()
                .and_then(|t| t.to_vec1::<u32>())
                .expect("lbl");
            let pred: Vec<u8> = lbl.into_iter().map(|v| v as u8).collect();
            let out = dir.path().join("pred.nii.gz");
            let vol = medseg_data::write_prediction(
                &out,
                pred,
                [dims[2], dims[3], dims[4]],
                b.affines[0],
                &b.meta[0],
            )
            .expect("write");
            let input =
                medseg_data::read_info(b.meta[0].image_path.as_ref().expect("path")).expect("info");
            let written = medseg_data::read_info(&out).expect("info");
            assert_eq!(written.shape, input.shape);
            assert!(written.affine.max_abs_diff(&input.affine) < 1e-5);
            let truth: Volume<u8> =
                read_volume(b.meta[0].label_path.as_ref().expect("lbl")).expect("truth");
            let fg = truth.data().iter().filter(|&&v| v > 0).count();
            let diff = truth.data().iter().zip(vol.data()).filter(|(a, b)| a != b).count();
            assert!(diff as f64 <= max_frac * fg as f64, "{pixdim:?}: {diff} of {fg} differ");
        }
    }
}
