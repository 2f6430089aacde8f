//! `medseg export` and `medseg info`: a tiny run exported as one package predicts bitwise the
//! same labels as the run folder, `info` describes every source kind, and hostile packages
//! (truncated, malformed metadata, unknown version, wrong class count) give named errors.
use std::path::{Path, PathBuf};

use medseg_data::{read_nifti, write_volume};

use crate::util::{CLASSES, ct_volume, make_run, medseg_err, medseg_ok, ras_grid, s};

/// Exports `run` to `<dir>/<name>.safetensors`.
fn export(run: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.safetensors"));
    medseg_ok(&["export", s(run), "-o", s(&out)]);
    out
}

/// The safetensors header of `path`: (JSON header, tensor bytes).
fn split(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let bytes = std::fs::read(path).expect("package");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("header JSON");
    (header, bytes[8 + n..].to_vec())
}

/// Copies the package `src` to `dst` with metadata key `key` set to `value`.
fn with_metadata(src: &Path, dst: &Path, key: &str, value: &str) {
    let (mut header, data) = split(src);
    header["__metadata__"][key] = serde_json::Value::String(value.into());
    let h = serde_json::to_vec(&header).expect("header");
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(dst, out).expect("write hostile package");
}

fn metadata(path: &Path, key: &str) -> String {
    let (header, _) = split(path);
    header["__metadata__"][key].as_str().expect("metadata string").to_string()
}

#[test]
fn a_package_alone_predicts_the_same_labels_as_its_run_folder() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 11);
    let pkg = export(&run, tmp.path(), "model");
    assert_eq!(metadata(&pkg, "medseg.format"), "medseg-model/1");
    let classes: Vec<String> =
        serde_json::from_str(&metadata(&pkg, "medseg.classes")).expect("classes JSON");
    assert_eq!(classes.len(), CLASSES);
    let prov: serde_json::Value =
        serde_json::from_str(&metadata(&pkg, "medseg.provenance")).expect("provenance JSON");
    assert_eq!(prov["weights_file"], "checkpoints/best.safetensors");
    assert_eq!(prov["weights_step"], 0);
    assert!(prov["medseg_version"].as_str().is_some_and(|v| !v.is_empty()));
    // The tensors are the run's own, byte for byte.
    let (_, run_data) = split(&run.join("checkpoints/best.safetensors"));
    let (_, pkg_data) = split(&pkg);
    assert_eq!(run_data, pkg_data, "the package's tensor bytes differ from the run's weights");

    let input = tmp.path().join("ct.nii.gz");
    write_volume(&input, &ct_volume([36, 30, 28], ras_grid([36, 30, 28], [1.7, 2.2, 2.5])))
        .expect("write input");
    let (a, b) = (tmp.path().join("from_run.nii.gz"), tmp.path().join("from_pkg.nii.gz"));
    medseg_ok(&["predict", "-i", s(&input), "-o", s(&a), "--model", s(&run)]);
    let log = medseg_ok(&["predict", "-i", s(&input), "-o", s(&b), "--model", s(&pkg)]);
    assert!(log.contains("package"), "the log does not name the package:\n{log}");
    let (pa, ia) = read_nifti::<u8>(&a).expect("run prediction");
    let (pb, ib) = read_nifti::<u8>(&b).expect("package prediction");
    assert_eq!(ia.affine, ib.affine);
    assert_eq!(pa.shape(), pb.shape());
    assert_eq!(pa.data(), pb.data(), "package and run folder predict different labels");
    assert!(pa.data().iter().any(|&l| l != pa.data()[0]), "a constant prediction proves little");
}

#[test]
fn a_plain_weights_file_still_needs_a_preset_or_config() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 12);
    let input = tmp.path().join("ct.nii.gz");
    write_volume(&input, &ct_volume([16; 3], ras_grid([16; 3], [2.0; 3]))).expect("write");
    let weights = run.join("checkpoints/best.safetensors");
    let out = tmp.path().join("seg.nii.gz");
    let err = medseg_err(&["predict", "-i", s(&input), "-o", s(&out), "--model", s(&weights)]);
    assert!(err.contains("--preset or --config") && err.contains(s(&weights)), "{err}");
    let err = medseg_err(&["info", s(&weights)]);
    assert!(err.contains("--preset or --config"), "{err}");
}

#[test]
fn info_describes_run_folders_packages_and_weights() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), 5, 13);
    let pkg = export(&run, tmp.path(), "model");
    // 2 levels, 4 features, 1 → 5 channels: down_0 (1→4, 4→4), down_1 (4→8, 8→8), up_0
    // (transposed 8→4, block 8→4), out 4→5; each conv block has conv weight + bias and norm
    // weight + bias.
    let block = |ci: usize, co: usize| co * ci * 27 + co + 2 * co;
    let expected = block(1, 4)
        + block(4, 4)
        + block(4, 8)
        + block(8, 8)
        + (8 * 4 * 8 + 4)
        + block(8, 4)
        + (5 * 4 + 5);
    for (path, kind) in [(&run, "run folder"), (&pkg, "package")] {
        let text = String::from_utf8(
            std::process::Command::new(env!("CARGO_BIN_EXE_medseg"))
                .args(["info", s(path)])
                .output()
                .expect("medseg info")
                .stdout,
        )
        .expect("utf-8");
        assert!(text.starts_with(kind), "{kind}: {text}");
        assert!(text.contains("tiny_unet") && text.contains("roi [16, 16, 16]"), "{text}");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_medseg"))
            .args(["info", s(path), "--json"])
            .output()
            .expect("medseg info --json");
        assert!(o.status.success());
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info JSON");
        assert_eq!(j["source"], kind);
        assert_eq!(j["parameters"], expected, "{kind}: parameter count");
        assert_eq!(j["model"]["out_channels"], 5);
        assert_eq!(j["classes"].as_array().map(Vec::len), Some(5));
        assert_eq!(j["window"]["roi"], serde_json::json!([16, 16, 16]));
        assert_eq!(j["preprocessing"]["pixdim"], serde_json::json!([2.0, 2.0, 2.0]));
        assert_eq!(j["provenance"].is_object(), kind == "package", "{kind}: provenance");
    }
    // A Swin UNETR preset on a weights file: architecture, parameter count and merge order.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_medseg"))
        .args(["info", s(&pkg), "--preset", "btcv", "--json"])
        .output()
        .expect("medseg info --preset");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info JSON");
    assert_eq!(j["model"]["kind"], "swin_unetr");
    assert_eq!(j["model"]["feature_size"], 48);
    // MONAI SwinUNETR(feature_size=48, in 1, out 14): 62,187,296 parameters.
    assert_eq!(j["parameters"], 62_187_296);
    assert!(j["merge_order"]["order"].is_string(), "{j}");
}

#[test]
fn hostile_packages_give_named_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), 5, 14);
    let pkg = export(&run, tmp.path(), "model");
    let input = tmp.path().join("ct.nii.gz");
    write_volume(&input, &ct_volume([16; 3], ras_grid([16; 3], [2.0; 3]))).expect("write");
    let out = tmp.path().join("seg.nii.gz");
    let predict = |model: &Path| {
        let err = medseg_err(&["predict", "-i", s(&input), "-o", s(&out), "--model", s(model)]);
        assert!(!out.exists(), "a failed prediction wrote {}", out.display());
        assert!(err.contains(s(model)), "the error does not name {}:\n{err}", model.display());
        err
    };
    // Truncated: tensor data cut off, and the header itself cut off.
    let bytes = std::fs::read(&pkg).expect("package");
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    let err = predict(&cut);
    assert!(err.contains("truncated"), "{err}");
    let err = medseg_err(&["info", s(&cut)]);
    assert!(err.contains("truncated") && err.contains(s(&cut)), "{err}");
    std::fs::write(&cut, &bytes[..40]).expect("write");
    let err = predict(&cut);
    assert!(err.contains("header"), "{err}");
    // Malformed JSON, unknown version, missing key.
    let bad = tmp.path().join("bad.safetensors");
    with_metadata(&pkg, &bad, "medseg.inference_config", "{\"model\": ");
    let err = predict(&bad);
    assert!(err.contains("medseg.inference_config") && err.contains("malformed JSON"), "{err}");
    with_metadata(&pkg, &bad, "medseg.format", "medseg-model/2");
    let err = predict(&bad);
    assert!(err.contains("medseg.format") && err.contains("medseg-model/2"), "{err}");
    let err = medseg_err(&["info", s(&bad)]);
    assert!(err.contains("medseg.format"), "{err}");
    // The metadata claims 3 classes while the weights have 5 output channels.
    let cfg = metadata(&pkg, "medseg.inference_config")
        .replace("\"out_channels\":5", "\"out_channels\":3");
    assert!(cfg.contains("\"out_channels\":3"), "{cfg}");
    with_metadata(&pkg, &bad, "medseg.inference_config", &cfg);
    let err = predict(&bad);
    assert!(err.contains("medseg.classes"), "{err}");
    let three = tmp.path().join("three.safetensors");
    with_metadata(&bad, &three, "medseg.classes", "[\"background\", \"a\", \"b\"]");
    let err = predict(&three);
    assert!(err.contains("out.conv.weight") || err.contains("mismatch"), "{err}");
}

#[test]
fn export_refuses_a_folder_without_weights_and_names_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = make_run(tmp.path(), CLASSES, 15);
    std::fs::remove_file(run.join("checkpoints/best.safetensors")).expect("rm");
    let out = tmp.path().join("model.safetensors");
    let err = medseg_err(&["export", s(&run), "-o", s(&out)]);
    assert!(err.contains(s(&run)), "{err}");
    assert!(!out.exists());
}
