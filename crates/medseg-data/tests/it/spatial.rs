//! Geometric and intensity functions against MONAI 1.6.1 goldens (`tools/golden/data_golden.py`).
use medseg_data::intensity::scale_intensity_range;
use medseg_data::spatial::{self, Interp, Padding, ZoomMode};
use medseg_data::transforms::{CropForeground, Transform};
use medseg_data::{Affine, Volume};
use rand::SeedableRng;

use crate::common::{affine, assert_close, f64s, golden, shape3};

fn inputs(g: &serde_json::Value) -> (Volume<f32>, Volume<u8>) {
    let shape = shape3(&g["shape"]);
    let aff = affine(&g["affine"]);
    let img = Volume::new(f64s(&g["image"]).into_iter().map(|v| v as f32).collect(), shape, aff)
        .expect("img");
    let lbl = Volume::new(f64s(&g["label"]).into_iter().map(|v| v as u8).collect(), shape, aff)
        .expect("lbl");
    (img, lbl)
}

fn as_f64<T: Copy + Into<f64>>(v: &Volume<T>) -> Vec<f64> {
    v.data().iter().map(|&x| x.into()).collect()
}

#[test]
fn spacing_matches_monai() {
    let g = golden("transforms.json");
    let (img, lbl) = inputs(&g);
    for key in ["spacing", "spacing_fine"] {
        let e = &g[key];
        let p = f64s(&e["pixdim"]);
        let pixdim = [p[0], p[1], p[2]];
        let si = spatial::spacing_image(&img, pixdim).expect("spacing");
        let sl = spatial::spacing_label(&lbl, pixdim).expect("spacing");
        assert_eq!(si.shape(), shape3(&e["shape"]), "{key}");
        assert!(si.affine.max_abs_diff(&affine(&e["affine"])) < 1e-9, "{key}: {:?}", si.affine);
        assert_close(key, &as_f64(&si), &f64s(&e["image"]), 1e-3, 1e-5);
        assert_close(key, &as_f64(&sl), &f64s(&e["label"]), 0.0, 0.0);
    }
    // Back to the original grid (what a prediction needs).
    let sl = spatial::spacing_label(&lbl, [1.5, 1.5, 2.0]).expect("spacing");
    let back = spatial::resample_to_grid(
        &sl,
        &lbl.affine,
        lbl.shape(),
        Interp::Nearest,
        Padding::Border,
        |v| v as u8,
    )
    .expect("back");
    assert_eq!(back.affine, lbl.affine);
    // Nearest-neighbour ties (coordinates exactly at .5 in f64) may round differently from
    // grid_sample's normalised float path: allow a few disagreeing voxels.
    let exp = f64s(&g["spacing_back_label"]);
    let diff = as_f64(&back).iter().zip(&exp).filter(|(a, b)| a != b).count();
    assert!(diff * 100 <= exp.len(), "spacing back: {diff} of {} voxels differ", exp.len());
}

#[test]
fn orientation_matches_monai() {
    let g = golden("transforms.json");
    let (img, _) = inputs(&g);
    for (key, codes) in [("orient_ras", "RAS"), ("orient_pil", "PIL")] {
        let e = &g[key];
        let o = spatial::orient(&img, codes).expect("orient");
        assert_eq!(o.shape(), shape3(&e["shape"]), "{key}");
        assert!(o.affine.max_abs_diff(&affine(&e["affine"])) < 1e-9, "{key}");
        assert_close(key, &as_f64(&o), &f64s(&e["image"]), 1e-9, 1e-12);
        assert_eq!(o.axcodes(), codes);
    }
    assert!(spatial::orient(&img, "RAX").is_err());
}

#[test]
fn scale_intensity_range_matches_monai() {
    let g = golden("transforms.json");
    let (mut img, _) = inputs(&g);
    scale_intensity_range(img.data_mut(), -175.0, 250.0, 0.0, 1.0, true);
    assert_close("scale_range", &as_f64(&img), &f64s(&g["scale_range"]), 1e-6, 1e-6);
}

#[test]
fn crop_foreground_matches_monai() {
    let g = golden("transforms.json");
    let (img, _) = inputs(&g);
    let src =
        img.with_data(f64s(&g["crop_src"]).into_iter().map(|v| v as f32).collect()).expect("src");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for (key, t) in [
        ("crop_fg", CropForeground::default()),
        (
            "crop_fg_margin_k",
            CropForeground { margin: [2; 3], k_divisible: [4; 3], ..CropForeground::default() },
        ),
        (
            "crop_fg_smaller",
            CropForeground { margin: [4; 3], allow_smaller: true, ..CropForeground::default() },
        ),
    ] {
        let e = &g[key];
        let s = medseg_data::transforms::Sample::new(src.clone(), None).expect("sample");
        let out = t.apply(s, &mut rng).expect("crop");
        assert_eq!(out.image.shape(), shape3(&e["shape"]), "{key}");
        assert!(out.image.affine.max_abs_diff(&affine(&e["affine"])) < 1e-9, "{key}");
        assert_close(key, &as_f64(&out.image), &f64s(&e["image"]), 1e-9, 1e-12);
    }
}

#[test]
fn rot90_matches_numpy() {
    let g = golden("transforms.json");
    let (img, _) = inputs(&g);
    for k in 1..=3u32 {
        let r = spatial::rot90(&img, k, (0, 1));
        assert_close(
            &format!("rot90 k={k}"),
            &as_f64(&r),
            &f64s(&g[format!("rot90_{k}")]),
            1e-9,
            1e-12,
        );
        // World position of every voxel is preserved by the affine update.
        let w = img.world([2.0, 3.0, 4.0]);
        let idx = r.affine.inverse().expect("inv").apply(w).map(|x| x.round() as usize);
        assert_eq!(r.at(idx[0], idx[1], idx[2]), img.at(2, 3, 4));
    }
}

#[test]
fn zoom_matches_monai() {
    let g = golden("transforms.json");
    let (img, _) = inputs(&g);
    for (key, z, mode) in [
        ("zoom_area", 1.4, ZoomMode::Area),
        ("zoom_nearest", 1.4, ZoomMode::Nearest),
        ("zoom_trilinear", 1.4, ZoomMode::Trilinear),
        ("zoom_area_down", 0.6, ZoomMode::Area),
    ] {
        let e = &g[key];
        let out = spatial::zoom(&img, [z; 3], mode, |v| v as f32).expect("zoom");
        assert_eq!(out.shape(), shape3(&e["shape"]), "{key}");
        assert_close(key, &as_f64(&out), &f64s(&e["image"]), 2e-3, 1e-5);
    }
}

#[test]
fn affine_warp_matches_monai() {
    let g = golden("transforms.json");
    let (img, _) = inputs(&g);
    let p = &g["affine_params"];
    let v = |k: &str| {
        let x = f64s(&p[k]);
        [x[0], x[1], x[2]]
    };
    let shape = img.shape();
    let m = spatial::centred_affine(
        shape,
        v("rotate_params"),
        v("scale_params"),
        v("translate_params"),
    );
    for (key, interp, pad) in [
        ("affine_bilinear_reflection", Interp::Linear, Padding::Reflection),
        ("affine_bilinear_zeros", Interp::Linear, Padding::Zeros),
        ("affine_bilinear_border", Interp::Linear, Padding::Border),
        ("affine_nearest_reflection", Interp::Nearest, Padding::Reflection),
    ] {
        let out = spatial::warp(&img, &m, shape, Affine::identity(), interp, pad, |x| x as f32)
            .expect("warp");
        assert_close(key, &as_f64(&out), &f64s(&g[key]), 2e-3, 1e-4);
    }
}
