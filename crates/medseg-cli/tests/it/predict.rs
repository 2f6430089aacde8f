//! `medseg predict` end to end on a tiny U-Net with random weights saved to a temporary run
//! folder: geometry of the outputs, orientation round trip, folder mode, probabilities, TTA.
use medseg_data::spatial::permute_flip;
use medseg_data::{Affine, Volume, read_nifti, read_volume, write_volume};

use crate::util::{
    CLASSES, ct_volume, flip3, listing, make_run, medseg_err, medseg_ok, ras_grid, s,
};

/// Reads `prob_000 … prob_{K-1}` of `dir`.
fn read_probs(dir: &std::path::Path, k: usize) -> Vec<Volume<f32>> {
    (0..k)
        .map(|c| read_volume::<f32>(dir.join(format!("prob_{c:03}.nii.gz"))).expect("prob map"))
        .collect()
}

#[test]
fn oblique_non_ras_input_gets_its_own_grid_back_and_probabilities_sum_to_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 1);
    // LIP-like axes, anisotropic 1.5 × 2.5 × 3 mm (training: RAS at 2 mm), a slight rotation.
    let (c, sn) = (0.2f64.cos(), 0.2f64.sin());
    let affine = Affine::from_parts(
        [[0.0, 0.0, -3.0], [-1.5 * c, 2.5 * sn, 0.0], [-1.5 * sn, -2.5 * c, 0.0]],
        [30.0, 40.0, 35.0],
    );
    let shape = [40, 30, 20];
    let input = tmp.path().join("oblique.nii.gz");
    write_volume(&input, &ct_volume(shape, affine)).expect("write input");
    let out = tmp.path().join("seg.nii.gz");
    let probs = tmp.path().join("probs");
    let log = medseg_ok(&[
        "predict",
        "-i",
        s(&input),
        "-o",
        s(&out),
        "--model",
        s(&run),
        "--probabilities",
        s(&probs),
    ]);
    assert!(log.contains("differs from training"), "no resampling log line:\n{log}");
    let (in_vol, in_info) = read_nifti::<f32>(&input).expect("input");
    let (pred, info) = read_nifti::<u8>(&out).expect("prediction");
    assert_eq!(pred.shape(), in_vol.shape());
    assert_eq!(info.affine, in_info.affine, "output affine must equal the input's");
    assert_eq!(pred.axcodes(), in_vol.axcodes());
    assert!(pred.data().iter().all(|&l| (l as usize) < CLASSES));
    // The body is predicted somewhere (the crop keeps it), air outside the body stays 0.
    let maps = read_probs(&probs, CLASSES);
    for m in &maps {
        assert_eq!(m.shape(), in_vol.shape());
        assert_eq!(m.affine, in_info.affine);
    }
    for v in 0..pred.len() {
        let p: Vec<f32> = maps.iter().map(|m| m.data()[v]).collect();
        let sum: f32 = p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "voxel {v}: probabilities {p:?} sum to {sum}");
        let argmax = (0..CLASSES).fold(0, |b, c| if p[c] > p[b] { c } else { b });
        assert_eq!(argmax, pred.data()[v] as usize, "voxel {v}: label is not the argmax of {p:?}");
    }
}

#[test]
fn a_reoriented_copy_gets_the_reoriented_prediction() {
    // The same image stored in another axis order (world geometry unchanged) must give the same
    // labels in world space: Orientation undoes the permutation and the prediction is mapped
    // back exactly (training spacing, so no interpolation is involved).
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 2);
    let ras = ct_volume([32, 32, 32], ras_grid([32, 32, 32], [2.0; 3]));
    let (perm, flip) = ([2, 0, 1], [true, false, true]);
    let other = permute_flip(&ras, perm, flip);
    assert_ne!(other.axcodes(), "RAS");
    let (a, b) = (tmp.path().join("ras.nii.gz"), tmp.path().join("other.nii.gz"));
    write_volume(&a, &ras).expect("write");
    write_volume(&b, &other).expect("write");
    let (pa, pb) = (tmp.path().join("pa.nii.gz"), tmp.path().join("pb.nii"));
    medseg_ok(&["predict", "-i", s(&a), "-o", s(&pa), "--model", s(&run)]);
    medseg_ok(&["predict", "-i", s(&b), "-o", s(&pb), "--model", s(&run)]);
    let la = read_volume::<u8>(&pa).expect("pa");
    let lb = read_volume::<u8>(&pb).expect("pb");
    assert_eq!(lb.affine, other.affine);
    let la_moved = permute_flip(&la, perm, flip);
    assert_eq!(la_moved.shape(), lb.shape());
    let diff = la_moved.data().iter().zip(lb.data()).filter(|(x, y)| x != y).count();
    assert_eq!(diff, 0, "{diff} voxels differ between the RAS and the reoriented prediction");
    let classes: std::collections::BTreeSet<u8> = la.data().iter().copied().collect();
    assert!(classes.len() >= 2, "degenerate prediction {classes:?}");
}

#[test]
fn folder_mode_predicts_every_case_and_skips_other_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 3);
    let inputs = tmp.path().join("imagesTs");
    std::fs::create_dir(&inputs).expect("mkdir");
    write_volume(
        inputs.join("case_a_0000.nii.gz"),
        &ct_volume([32, 32, 32], ras_grid([32; 3], [2.0; 3])),
    )
    .expect("write");
    write_volume(
        inputs.join("case_b.nii"),
        &ct_volume([24, 30, 20], ras_grid([24, 30, 20], [2.5; 3])),
    )
    .expect("write");
    std::fs::write(inputs.join("._case_a_0000.nii.gz"), b"macOS resource fork").expect("write");
    std::fs::write(inputs.join("notes.txt"), b"not an image").expect("write");
    let out = tmp.path().join("pred"); // created by predict
    let probs = tmp.path().join("probs");
    medseg_ok(&[
        "predict",
        "-i",
        s(&inputs),
        "-o",
        s(&out),
        "--model",
        s(&run),
        "--probabilities",
        s(&probs),
    ]);
    assert_eq!(listing(&out), ["case_a.nii.gz", "case_b.nii.gz"]);
    assert_eq!(listing(&probs), ["case_a", "case_b"]);
    assert_eq!(
        listing(&probs.join("case_b")),
        ["prob_000.nii.gz", "prob_001.nii.gz", "prob_002.nii.gz"]
    );
    let b = read_volume::<u8>(out.join("case_b.nii.gz")).expect("case_b");
    assert_eq!(b.shape(), [24, 30, 20]);
    assert_eq!(b.affine, ras_grid([24, 30, 20], [2.5; 3]));
}

#[test]
fn tta_is_the_mean_of_the_manually_flipped_predictions() {
    // RAS at the training spacing, foreground everywhere (no crop) and 32³ with roi 16 / overlap
    // 0.5 (windows at 0, 8, 16 on every axis, a flip-symmetric set): preprocessing and window
    // layout commute with flips, so TTA must equal the mean over the 8 flipped input files of
    // the flipped-back plain predictions.
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 4);
    let shape = [32, 32, 32];
    let aff = ras_grid(shape, [2.0; 3]);
    let img = ct_volume(shape, aff).map(|v| v.max(-100.0));
    let input = tmp.path().join("ct.nii.gz");
    write_volume(&input, &img).expect("write");
    let tta_probs = tmp.path().join("tta");
    medseg_ok(&[
        "predict",
        "-i",
        s(&input),
        "-o",
        s(&tmp.path().join("tta.nii.gz")),
        "--model",
        s(&run),
        "--tta",
        "--probabilities",
        s(&tta_probs),
    ]);
    let tta = read_probs(&tta_probs, CLASSES);
    let n = img.len();
    let mut mean = vec![vec![0f64; n]; CLASSES];
    let mut plain = Vec::new();
    for m in 0..8usize {
        let axes: Vec<usize> = (0..3).filter(|b| m >> b & 1 == 1).collect();
        let flipped = Volume::new(flip3(img.data(), shape, &axes), shape, aff).expect("vol");
        let f_in = tmp.path().join(format!("flip{m}.nii.gz"));
        write_volume(&f_in, &flipped).expect("write");
        let f_probs = tmp.path().join(format!("probs{m}"));
        medseg_ok(&[
            "predict",
            "-i",
            s(&f_in),
            "-o",
            s(&tmp.path().join(format!("flip{m}_seg.nii.gz"))),
            "--model",
            s(&run),
            "--probabilities",
            s(&f_probs),
        ]);
        for (c, p) in read_probs(&f_probs, CLASSES).iter().enumerate() {
            let back = flip3(p.data(), shape, &axes);
            for (acc, v) in mean[c].iter_mut().zip(&back) {
                *acc += f64::from(*v) / 8.0;
            }
            if m == 0 {
                plain.push(back);
            }
        }
    }
    let mut worst = 0f64;
    let mut tta_effect = 0f64;
    for c in 0..CLASSES {
        for v in 0..n {
            let t = f64::from(tta[c].data()[v]);
            worst = worst.max((t - mean[c][v]).abs());
            tta_effect = tta_effect.max((t - f64::from(plain[c][v])).abs());
        }
    }
    assert!(worst < 1e-5, "TTA differs from the manual flip mean by {worst}");
    // The check has teeth: the random network is not flip-equivariant.
    assert!(tta_effect > 1e-3, "TTA equals the plain prediction (max diff {tta_effect})");
}

#[test]
fn a_volume_smaller_than_the_roi_is_padded_and_mapped_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 5);
    let shape = [10, 12, 7];
    let aff = ras_grid(shape, [2.0; 3]);
    let input = tmp.path().join("small.nii.gz");
    write_volume(&input, &ct_volume(shape, aff).map(|v| v.max(-100.0))).expect("write");
    let out = tmp.path().join("small_seg.nii.gz");
    medseg_ok(&["predict", "-i", s(&input), "-o", s(&out), "--model", s(&run)]);
    let pred = read_volume::<u8>(&out).expect("pred");
    assert_eq!(pred.shape(), shape);
    assert_eq!(pred.affine, aff);
}

#[test]
fn bad_inputs_give_one_named_error_and_no_output() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 6);
    let good = tmp.path().join("good.nii.gz");
    write_volume(&good, &ct_volume([32; 3], ras_grid([32; 3], [2.0; 3]))).expect("write");
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).expect("mkdir");
    let out = outdir.join("seg.nii.gz");

    // Missing input.
    let missing = tmp.path().join("missing.nii.gz");
    let e = medseg_err(&["predict", "-i", s(&missing), "-o", s(&out), "--model", s(&run)]);
    assert!(e.contains("missing.nii.gz") && e.contains("does not exist"), "{e}");

    // Corrupt NIfTI (a valid file cut short).
    let bytes = std::fs::read(&good).expect("read");
    let corrupt = tmp.path().join("corrupt.nii.gz");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).expect("write");
    let e = medseg_err(&["predict", "-i", s(&corrupt), "-o", s(&out), "--model", s(&run)]);
    assert!(e.contains("corrupt.nii.gz") && e.contains("invalid nifti"), "{e}");
    assert!(listing(&outdir).is_empty(), "leftovers {:?}", listing(&outdir));

    // Output folder that does not exist.
    let nowhere = tmp.path().join("nowhere/seg.nii.gz");
    let e = medseg_err(&["predict", "-i", s(&good), "-o", s(&nowhere), "--model", s(&run)]);
    assert!(e.contains("output folder") && e.contains("nowhere"), "{e}");
    assert!(!tmp.path().join("nowhere").exists());

    // Output that is not NIfTI.
    let e = medseg_err(&[
        "predict",
        "-i",
        s(&good),
        "-o",
        s(&outdir.join("seg.png")),
        "--model",
        s(&run),
    ]);
    assert!(e.contains("seg.png") && e.contains(".nii.gz"), "{e}");

    // Weights file without an architecture.
    let weights = run.join("checkpoints/best.safetensors");
    let e = medseg_err(&["predict", "-i", s(&good), "-o", s(&out), "--model", s(&weights)]);
    assert!(e.contains("best.safetensors") && e.contains("--preset or --config"), "{e}");

    // Model/config mismatch: 3-class weights under a 4-class config.
    let cfg4 = tmp.path().join("four.toml");
    std::fs::write(&cfg4, crate::util::tiny_config(4).to_toml().expect("toml")).expect("write");
    let e = medseg_err(&[
        "predict",
        "-i",
        s(&good),
        "-o",
        s(&out),
        "--model",
        s(&weights),
        "--config",
        s(&cfg4),
    ]);
    assert!(e.contains("best.safetensors") && e.contains("shape mismatch"), "{e}");
    assert!(e.contains("out.conv"), "{e}");

    // A config whose model wants two input channels.
    let mut two = crate::util::tiny_config(CLASSES);
    if let medseg_train::ModelConfig::TinyUnet(c) = &mut two.model {
        c.in_channels = 2;
    }
    let cfg2 = tmp.path().join("two_channels.toml");
    std::fs::write(&cfg2, two.to_toml().expect("toml")).expect("write");
    let e = medseg_err(&[
        "predict",
        "-i",
        s(&good),
        "-o",
        s(&out),
        "--model",
        s(&weights),
        "--config",
        s(&cfg2),
    ]);
    assert!(e.contains("two_channels.toml") && e.contains("2 input channels"), "{e}");

    // Weights of another architecture: nothing matches.
    let e = medseg_err(&[
        "predict",
        "-i",
        s(&good),
        "-o",
        s(&out),
        "--model",
        s(&weights),
        "--preset",
        "phantom",
    ]);
    assert!(e.contains("best.safetensors") && e.contains("missing"), "{e}");

    // A run folder without checkpoints.
    let empty_run = tmp.path().join("empty_run");
    std::fs::create_dir(&empty_run).expect("mkdir");
    let e = medseg_err(&["predict", "-i", s(&good), "-o", s(&out), "--model", s(&empty_run)]);
    assert!(e.contains("empty_run") && e.contains("best.safetensors"), "{e}");

    // Bad sliding-window override.
    let e = medseg_err(&[
        "predict",
        "-i",
        s(&good),
        "-o",
        s(&out),
        "--model",
        s(&run),
        "--overlap",
        "1.5",
    ]);
    assert!(e.contains("overlap"), "{e}");
    assert!(listing(&outdir).is_empty(), "leftovers {:?}", listing(&outdir));

    // Folder mode: the corrupt case fails by name, the good one is still written.
    let folder = tmp.path().join("folder");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::copy(&good, folder.join("a.nii.gz")).expect("copy");
    std::fs::copy(&corrupt, folder.join("b.nii.gz")).expect("copy");
    let e = medseg_err(&["predict", "-i", s(&folder), "-o", s(&out), "--model", s(&run)]);
    assert!(e.contains("must be a folder") && e.contains("seg.nii.gz"), "{e}");
    let fout = tmp.path().join("fout");
    let e = medseg_err(&["predict", "-i", s(&folder), "-o", s(&fout), "--model", s(&run)]);
    assert!(e.contains("1 of 2 inputs failed") && e.contains("b.nii.gz"), "{e}");
    assert_eq!(listing(&fout), ["a.nii.gz"]);
}

#[test]
fn streamed_labels_equal_the_labels_of_the_full_scores() {
    // Without --probabilities/--tta the label map is streamed (sliding_window_argmax); with
    // --probabilities it is the argmax of the stored softmax. Both must agree.
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 8);
    let shape = [44, 30, 36];
    let input = tmp.path().join("case.nii.gz");
    write_volume(&input, &ct_volume(shape, ras_grid(shape, [2.0; 3]))).expect("write");
    let (streamed, full) = (tmp.path().join("a.nii.gz"), tmp.path().join("b.nii.gz"));
    medseg_ok(&["predict", "-i", s(&input), "-o", s(&streamed), "--model", s(&run)]);
    let probs = tmp.path().join("probs");
    medseg_ok(&[
        "predict",
        "-i",
        s(&input),
        "-o",
        s(&full),
        "--model",
        s(&run),
        "--probabilities",
        s(&probs),
    ]);
    let (a, b) = (read_volume::<u8>(&streamed).expect("a"), read_volume::<u8>(&full).expect("b"));
    assert_eq!(a.shape(), shape);
    assert_eq!(a.data(), b.data());
    let distinct = a.data().iter().collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct > 1, "a constant label map tests nothing");
}

#[test]
fn nan_weights_give_a_named_error_and_no_output() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 9);
    let weights = run.join("checkpoints/best.safetensors");
    let mut tensors = candle::safetensors::load(&weights, &candle::Device::Cpu).expect("load");
    for t in tensors.values_mut() {
        *t = (t.ones_like().expect("ones") * f64::NAN).expect("nan");
    }
    candle::safetensors::save(&tensors, &weights).expect("save");
    let shape = [32; 3];
    let input = tmp.path().join("case.nii.gz");
    write_volume(&input, &ct_volume(shape, ras_grid(shape, [2.0; 3]))).expect("write");
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).expect("mkdir");
    for extra in [&[][..], &["--tta"][..]] {
        let out = outdir.join("seg.nii.gz");
        let mut args = vec!["predict", "-i", s(&input), "-o", s(&out), "--model", s(&run)];
        args.extend_from_slice(extra);
        let e = medseg_err(&args);
        assert!(e.contains("non-finite value") && e.contains("case.nii.gz"), "{extra:?}: {e}");
        assert!(listing(&outdir).is_empty(), "{extra:?}: leftovers {:?}", listing(&outdir));
    }
}

#[test]
fn an_output_that_would_overwrite_an_input_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 8);
    let cases = tmp.path().join("cases");
    std::fs::create_dir(&cases).expect("mkdir");
    let ct = cases.join("ct.nii.gz");
    write_volume(&ct, &ct_volume([24; 3], ras_grid([24; 3], [2.0; 3]))).expect("write");
    let before = std::fs::read(&ct).expect("read");
    let detour = tmp.path().join("cases/../cases/ct.nii.gz");
    // The same file, the same file by another path, its folder (→ `ct.nii.gz` again), and folder
    // mode into the input folder itself.
    for (input, output) in [(&ct, &ct), (&ct, &detour), (&ct, &cases), (&cases, &cases)] {
        let e = medseg_err(&["predict", "-i", s(input), "-o", s(output), "--model", s(&run)]);
        assert!(
            e.contains("would overwrite the input") && e.contains(s(output)) && e.contains(s(&ct)),
            "{input:?} → {output:?}: {e}"
        );
        assert!(!e.contains("model tiny_unet"), "refused after loading the model: {e}");
    }
    assert_eq!(std::fs::read(&ct).expect("read"), before, "the input was modified");
    assert_eq!(listing(&cases), ["ct.nii.gz"]);
}

#[test]
fn a_bad_sliding_window_flag_is_blamed_on_the_flag() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 9);
    let ct = tmp.path().join("ct.nii.gz");
    write_volume(&ct, &ct_volume([24; 3], ras_grid([24; 3], [2.0; 3]))).expect("write");
    let out = tmp.path().join("seg.nii.gz");
    for (flag, value) in [
        ("--overlap", "1.0"),
        ("--overlap", "-0.1"),
        ("--sw-batch-size", "0"),
        ("--nr-threads", "0"),
    ] {
        let arg = format!("{flag}={value}");
        let e = medseg_err(&["predict", "-i", s(&ct), "-o", s(&out), "--model", s(&run), &arg]);
        assert!(e.contains(flag) && e.contains(value), "{flag} {value}: {e}");
        assert!(!e.contains("config.toml"), "{flag} {value} blamed on the config: {e}");
    }
    assert!(!out.exists());
}

#[test]
fn one_thread_predicts_a_label_map_on_the_input_grid() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 9);
    let grid = ras_grid([24; 3], [2.0; 3]);
    let ct = tmp.path().join("ct.nii.gz");
    write_volume(&ct, &ct_volume([24; 3], grid)).expect("write");
    let out = tmp.path().join("seg.nii.gz");
    medseg_ok(&["predict", "-i", s(&ct), "-o", s(&out), "--model", s(&run), "--nr-threads", "1"]);
    let seg: Volume<u8> = read_volume(&out).expect("prediction");
    assert_eq!(seg.shape(), [24; 3]);
    assert!(seg.data().iter().all(|&l| (l as usize) < CLASSES), "labels within the classes");
}

#[test]
fn a_swin_unetr_prediction_prints_its_patch_merging_order() {
    use candle::{DType, Device};
    use medseg_train::seeded::SeededVarMap;
    use medseg_train::{TrainConfig, checkpoint};

    let tmp = tempfile::tempdir().expect("tmp");
    // The phantom preset's tiny Swin UNETR (fs 12) with seeded random weights.
    let run = tmp.path().join("swin-run");
    std::fs::create_dir_all(run.join("checkpoints")).expect("run folder");
    let mut cfg = TrainConfig::preset("phantom").expect("preset");
    cfg.data.pixdim = [2.0; 3];
    std::fs::write(run.join("config.toml"), cfg.to_toml().expect("toml")).expect("config");
    let varmap = candle_nn::VarMap::new();
    cfg.model
        .build(SeededVarMap::var_builder(&varmap, 4, DType::F32, &Device::Cpu))
        .expect("model");
    checkpoint::save_weights(&varmap, &run.join("checkpoints/best.safetensors"), 0)
        .expect("weights");
    let ct = tmp.path().join("ct.nii.gz");
    write_volume(&ct, &ct_volume([16; 3], ras_grid([16; 3], [2.0; 3]))).expect("write");
    let out = tmp.path().join("seg.nii.gz");
    let line = |log: &str| -> String {
        let found = log.lines().filter(|l| l.starts_with("patch-merging order ")).count();
        assert_eq!(found, 1, "one merge-order line expected:\n{log}");
        log.lines().find(|l| l.starts_with("patch-merging order ")).unwrap_or_default().to_string()
    };
    let log = medseg_ok(&["predict", "-i", s(&ct), "-o", s(&out), "--model", s(&run)]);
    assert!(line(&log).contains("(from the "), "{log}");
    let log = medseg_ok(&[
        "predict",
        "-i",
        s(&ct),
        "-o",
        s(&out),
        "--model",
        s(&run),
        "--merge-order",
        "legacy",
    ]);
    assert_eq!(line(&log), "patch-merging order Legacy (from the --merge-order flag)");
    // A tiny U-Net has no patch merging: no such line.
    let unet = make_run(tmp.path(), CLASSES, 5);
    let log = medseg_ok(&["predict", "-i", s(&ct), "-o", s(&out), "--model", s(&unet)]);
    assert!(!log.contains("patch-merging order"), "{log}");
}
