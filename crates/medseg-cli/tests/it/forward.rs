//! `medseg forward` end to end on a tiny SwinUNETR with saved random weights.
use std::process::Command;

use candle::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::{MergeOrder, SwinUnetr, SwinUnetrConfig, save_safetensors};

#[test]
fn forward_matches_in_process_model() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("medseg-cli-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let json = r#"{"in_channels": 1, "out_channels": 2, "feature_size": 12, "use_v2": true}"#;
    std::fs::write(dir.join("cfg.json"), json)?;
    let mut cfg = SwinUnetrConfig::from_json(json)?;
    let varmap = VarMap::new();
    let model = SwinUnetr::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    save_safetensors(&varmap, MergeOrder::Legacy, &dir.join("w.safetensors"))?;
    let x = medseg_testkit::random_tensor(&[1, 1, 64, 32, 32], 3, &Device::Cpu)?;
    x.save_safetensors("input", dir.join("in.safetensors"))?;

    let status = Command::new(env!("CARGO_BIN_EXE_medseg"))
        .arg("forward")
        .args(["--config", &dir.join("cfg.json").to_string_lossy()])
        .args(["--weights", &dir.join("w.safetensors").to_string_lossy()])
        .args(["--input", &dir.join("in.safetensors").to_string_lossy()])
        .args(["--output", &dir.join("out.safetensors").to_string_lossy()])
        .status()?;
    assert!(status.success());
    let out = candle::safetensors::load(dir.join("out.safetensors"), &Device::Cpu)?;
    // The weights file carries merge_order = legacy in its metadata, which the CLI applies.
    cfg.merge_order = Some(MergeOrder::Legacy);
    let model_legacy =
        SwinUnetr::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let want = model_legacy.forward_t(&x, false)?;
    medseg_testkit::assert_close("medseg forward", &out["output"], &want, 1e-6, 0.0);
    drop(model);

    // Missing input key is an error with a message naming the key.
    x.save_safetensors("image", dir.join("bad.safetensors"))?;
    let o = Command::new(env!("CARGO_BIN_EXE_medseg"))
        .arg("forward")
        .args(["--config", &dir.join("cfg.json").to_string_lossy()])
        .args(["--weights", &dir.join("w.safetensors").to_string_lossy()])
        .args(["--input", &dir.join("bad.safetensors").to_string_lossy()])
        .args(["--output", &dir.join("out2.safetensors").to_string_lossy()])
        .output()?;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("`input`"));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A Swin SMT config without `merge_order` and weights without metadata: `medseg forward` uses
/// the legacy order and the official MoE padding, says so in one stderr line, and matches the
/// in-process model built from the same config.
#[test]
fn forward_prints_the_swin_smt_defaults() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("medseg-cli-forward-smt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let json = r#"{"in_channels": 1, "out_channels": 2, "feature_size": 12, "use_moe": true,
                   "num_layers_with_moe": 2, "num_experts": 3}"#;
    std::fs::write(dir.join("cfg.json"), json)?;
    let cfg = SwinUnetrConfig::from_json(json)?;
    let varmap = VarMap::new();
    let model = SwinUnetr::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    // VarMap::save writes no metadata, so no merge order comes from the file.
    varmap.save(dir.join("w.safetensors"))?;
    let x = medseg_testkit::random_tensor(&[1, 1, 32, 32, 32], 4, &Device::Cpu)?;
    x.save_safetensors("input", dir.join("in.safetensors"))?;
    let o = Command::new(env!("CARGO_BIN_EXE_medseg"))
        .arg("forward")
        .args(["--config", &dir.join("cfg.json").to_string_lossy()])
        .args(["--weights", &dir.join("w.safetensors").to_string_lossy()])
        .args(["--input", &dir.join("in.safetensors").to_string_lossy()])
        .args(["--output", &dir.join("out.safetensors").to_string_lossy()])
        .output()?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "medseg forward failed: {stderr}");
    assert!(
        stderr.contains("merge order: legacy (Swin SMT default), Soft MoE padding: official"),
        "stderr: {stderr}"
    );
    let out = candle::safetensors::load(dir.join("out.safetensors"), &Device::Cpu)?;
    let want = model.forward_t(&x, false)?;
    medseg_testkit::assert_close("medseg forward (Swin SMT)", &out["output"], &want, 1e-6, 0.0);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
