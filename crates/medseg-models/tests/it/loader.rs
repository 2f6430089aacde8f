//! Loader: PyTorch pickle with research key names, safetensors round trip, SSL-style partial
//! loads with a report, shape mismatches naming the key.
use std::collections::BTreeMap;

use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::loader::{Checkpoint, Error, load_file, load_into_varmap, read_checkpoint};
use medseg_models::{MergeOrder, SwinUnetr, save_safetensors};
use medseg_testkit::assert_close;

use crate::common::{formula, golden_path, tiny_cfg};

fn fresh(cfg: &medseg_models::SwinUnetrConfig) -> candle::Result<(SwinUnetr, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Ok((SwinUnetr::new(cfg, vb)?, varmap))
}

fn tiny_fs12() -> medseg_models::SwinUnetrConfig {
    medseg_models::SwinUnetrConfig { out_channels: 14, ..tiny_cfg() }
}

#[test]
fn reads_research_pt_checkpoint_with_state_dict_and_module_prefix() -> anyhow::Result<()> {
    let ckpt = read_checkpoint(&golden_path("ssl_style_small.pt"))?;
    assert!(ckpt.tensors.contains_key("module.layers1.0.blocks.0.mlp.fc1.weight"));
    let (_, varmap) = fresh(&tiny_fs12())?;
    let report = load_into_varmap(&varmap, &ckpt)?;
    assert_eq!(
        report.loaded,
        vec![
            "swinViT.layers1.0.blocks.0.mlp.linear1.weight".to_string(),
            "swinViT.patch_embed.proj.bias".to_string(),
            "swinViT.patch_embed.proj.weight".to_string(),
        ]
    );
    assert_eq!(report.unused, vec!["module.norm.weight".to_string()]);
    assert_eq!(report.buffers_checked, 1);
    assert_eq!(report.missing.len(), 151 - 3);
    assert!(report.require_complete().is_err());
    let data = varmap.data().lock().expect("lock");
    let w = data["swinViT.layers1.0.blocks.0.mlp.linear1.weight"].as_tensor();
    assert_close(
        "fc1 -> linear1",
        w,
        &formula("swinViT.layers1.0.blocks.0.mlp.linear1.weight", &[48, 12])?,
        0.0,
        0.0,
    );
    Ok(())
}

#[test]
fn safetensors_round_trip_keeps_outputs_and_merge_order() -> anyhow::Result<()> {
    let cfg = tiny_cfg();
    let (model, varmap) = fresh(&cfg)?;
    let dir = std::env::temp_dir().join(format!("medseg-models-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("w.safetensors");
    save_safetensors(&varmap, MergeOrder::Legacy, &path)?;
    let saved = candle::safetensors::load(&path, &Device::Cpu)?;
    // MONAI state dicts carry the int64 index buffers: 8 of them for depths (2,2,2,2).
    let idx: Vec<_> = saved.keys().filter(|k| k.ends_with("relative_position_index")).collect();
    assert_eq!(idx.len(), 8);
    assert_eq!(saved[idx[0].as_str()].dtype(), DType::I64);

    let (model2, varmap2) = fresh(&cfg)?;
    let report = load_file(&varmap2, &path)?;
    report.require_complete()?;
    assert!(report.unused.is_empty(), "{report}");
    assert_eq!(report.buffers_checked, 8);
    assert_eq!(report.merge_order, Some(MergeOrder::Legacy));
    let x = medseg_testkit::random_tensor(&[1, 1, 64, 32, 32], 7, &Device::Cpu)?;
    let a = model.forward_t(&x, false)?;
    let b = model2.forward_t(&x, false)?;
    assert_close("round trip", &a, &b, 0.0, 0.0);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn shape_mismatch_names_the_key() -> anyhow::Result<()> {
    let (_, varmap) = fresh(&tiny_cfg())?;
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "module.out.conv.conv.weight".to_string(),
        Tensor::zeros((14, 12, 1, 1, 1), DType::F32, &Device::Cpu)?,
    );
    let ckpt = Checkpoint { tensors, merge_order: None };
    match load_into_varmap(&varmap, &ckpt) {
        Err(Error::ShapeMismatch { key, expected, got, .. }) => {
            assert_eq!(key, "out.conv.conv.weight");
            assert_eq!(expected, vec![3, 12, 1, 1, 1]);
            assert_eq!(got, vec![14, 12, 1, 1, 1]);
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    Ok(())
}

#[test]
fn corrupted_index_buffer_is_rejected() -> anyhow::Result<()> {
    let (_, varmap) = fresh(&tiny_cfg())?;
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "swinViT.layers1.0.blocks.0.attn.relative_position_index".to_string(),
        Tensor::zeros((343, 343), DType::I64, &Device::Cpu)?,
    );
    let ckpt = Checkpoint { tensors, merge_order: None };
    assert!(matches!(load_into_varmap(&varmap, &ckpt), Err(Error::BadIndex { .. })));
    Ok(())
}
