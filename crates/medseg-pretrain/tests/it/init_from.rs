//! `load_encoder` (medseg-models) on the key schemes of swin-reference §1.13, and the
//! `train.init_from` wiring of medseg-train.
use std::collections::BTreeMap;

use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::loader::load_encoder;
use medseg_models::{MergeOrder, SslHead, SslHeadConfig, SwinUnetr, SwinUnetrConfig};

fn ssl_varmap(seed: u64) -> VarMap {
    let varmap = VarMap::new();
    let cfg = SslHeadConfig {
        in_channels: 1,
        feature_size: 12,
        dropout_path_rate: 0.0,
        merge_order: MergeOrder::Legacy,
    };
    let vb = medseg_run::SeededVarMap::var_builder(&varmap, seed, DType::F32, &Device::Cpu);
    SslHead::new(&cfg, vb).expect("ssl head");
    varmap
}

fn unetr_varmap() -> VarMap {
    let varmap = VarMap::new();
    let cfg = SwinUnetrConfig {
        feature_size: 12,
        merge_order: Some(MergeOrder::Legacy),
        ..SwinUnetrConfig::monai_default(1, 3)
    };
    SwinUnetr::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
        .expect("model");
    varmap
}

fn tensors(v: &VarMap) -> BTreeMap<String, Tensor> {
    v.data().lock().expect("lock").iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
}

#[test]
fn released_model_swinvit_key_scheme_loads_the_whole_encoder() {
    let src = tensors(&ssl_varmap(7));
    // model_swinvit.pt scheme: `module.` + Swin keys without `swinViT.`, timm fc1/fc2, a final
    // norm over 16·fs channels, index buffers; no SSL heads.
    let mut file: BTreeMap<String, Tensor> = BTreeMap::new();
    for (k, t) in &src {
        if let Some(rest) = k.strip_prefix("swinViT.") {
            let rest =
                rest.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.");
            file.insert(format!("module.{rest}"), t.clone());
        }
    }
    file.insert(
        "module.norm.weight".into(),
        Tensor::ones(192, DType::F32, &Device::Cpu).expect("t"),
    );
    file.insert(
        "module.norm.bias".into(),
        Tensor::zeros(192, DType::F32, &Device::Cpu).expect("t"),
    );
    let idx: Vec<i64> =
        medseg_ops::relative_position_index([7; 3]).into_iter().map(i64::from).collect();
    file.insert(
        "module.layers1.0.blocks.0.attn.relative_position_index".into(),
        Tensor::from_vec(idx, (343, 343), &Device::Cpu).expect("idx"),
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("model_swinvit.safetensors");
    candle::safetensors::save(&file.clone().into_iter().collect(), &path).expect("save");

    let dst = unetr_varmap();
    let rep = load_encoder(&dst, &path).expect("load");
    let n_enc = tensors(&dst).keys().filter(|k| k.starts_with("swinViT.")).count();
    assert_eq!(rep.report.loaded.len(), n_enc, "{rep}");
    assert!(rep.report.missing.is_empty(), "{rep}");
    assert_eq!(
        rep.report.unused,
        vec!["module.norm.bias".to_string(), "module.norm.weight".to_string()]
    );
    assert_eq!(rep.report.buffers_checked, 1);
    assert!(
        rep.not_encoder.iter().any(|k| k.starts_with("encoder1."))
            && rep.not_encoder.iter().any(|k| k.starts_with("out."))
    );
    let after = tensors(&dst);
    let k = "swinViT.layers2.0.blocks.1.mlp.linear1.weight";
    let d =
        (&after[k] - &src[k]).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>()).expect("diff");
    assert_eq!(d, 0.0);
    assert!(
        rep.to_string().contains(&format!("loaded {n_enc} of {n_enc} swinViT tensors")),
        "{rep}"
    );
}

#[test]
fn medseg_pretrain_checkpoint_loads_and_the_heads_are_reported_unused() {
    let src = ssl_varmap(3);
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("last.safetensors");
    medseg_train::checkpoint::save_weights(&src, &path, 5).expect("save");
    let dst = unetr_varmap();
    let rep = load_encoder(&dst, &path).expect("load");
    assert!(rep.report.missing.is_empty() && !rep.report.loaded.is_empty(), "{rep}");
    assert!(rep.report.unused.iter().any(|k| k.starts_with("rotation_head.")));
    assert!(rep.report.unused.iter().any(|k| k.starts_with("conv.20.")));
}

#[test]
fn a_pretrained_encoder_loads_into_swin_smt_except_the_mlps_that_became_soft_moe() {
    let src = ssl_varmap(5);
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("last.safetensors");
    medseg_train::checkpoint::save_weights(&src, &path, 9).expect("save");
    let dst = VarMap::new();
    let cfg = SwinUnetrConfig {
        feature_size: 12,
        merge_order: Some(MergeOrder::Legacy),
        use_moe: true,
        num_layers_with_moe: 3,
        num_experts: 2,
        ..SwinUnetrConfig::monai_default(1, 3)
    };
    SwinUnetr::new(&cfg, VarBuilder::from_varmap(&dst, DType::F32, &Device::Cpu)).expect("smt");
    let rep = load_encoder(&dst, &path).expect("load");
    // Stage 1 keeps its MLP; stages 2–4 hold Soft MoE layers, which the SSL file cannot fill.
    assert!(rep.report.loaded.iter().any(|k| k == "swinViT.layers1.0.blocks.0.mlp.linear1.weight"));
    assert!(rep.report.loaded.iter().any(|k| k == "swinViT.layers3.0.blocks.1.attn.qkv.weight"));
    assert!(!rep.report.missing.is_empty(), "{rep}");
    for m in &rep.report.missing {
        assert!(
            !m.starts_with("swinViT.layers1.") && m.contains(".mlp."),
            "only stage 2–4 MoE weights may stay initialised: {m}"
        );
    }
    for stage in 2..=4 {
        let k = format!("swinViT.layers{stage}.0.blocks.0.mlp.linear1.weight");
        assert!(rep.report.unused.contains(&k), "{k} should be reported unused: {rep}");
    }
    let after = tensors(&dst);
    let k = "swinViT.layers3.0.blocks.1.attn.qkv.weight";
    let d = (&after[k] - &tensors(&src)[k])
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("diff");
    assert_eq!(d, 0.0);
}

#[test]
fn a_file_without_encoder_keys_or_with_wrong_shapes_is_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("heads.safetensors");
    let t = Tensor::zeros((4, 192), DType::F32, &Device::Cpu).expect("t");
    candle::safetensors::save(
        &[("rotation_head.weight".to_string(), t)].into_iter().collect(),
        &path,
    )
    .expect("save");
    let e = load_encoder(&unetr_varmap(), &path).expect_err("nothing loads");
    assert!(e.to_string().contains("missing"), "{e}");
    let bad = tmp.path().join("bad.safetensors");
    let t = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).expect("t");
    candle::safetensors::save(
        &[("module.patch_embed.proj.weight".to_string(), t)].into_iter().collect(),
        &bad,
    )
    .expect("save");
    let e = load_encoder(&unetr_varmap(), &bad).expect_err("shape");
    assert!(e.to_string().contains("swinViT.patch_embed.proj.weight"), "{e}");
    assert!(load_encoder(&unetr_varmap(), &tmp.path().join("absent.pt")).is_err());
}

#[test]
fn train_init_from_needs_a_swin_model_and_reports_what_it_loaded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ck = tmp.path().join("enc.safetensors");
    medseg_train::checkpoint::save_weights(&ssl_varmap(1), &ck, 1).expect("save");
    let phantom = medseg_data::phantom::generate(
        tmp.path().join("data"),
        &medseg_data::phantom::PhantomConfig {
            n_cases: 2,
            n_validation: 1,
            shape: [32, 32, 32],
            ..Default::default()
        },
    )
    .expect("phantom");
    // tiny_unet: no Swin encoder to fill
    let mut c = medseg_train::TrainConfig::preset("phantom_unet").expect("preset");
    c.data.datalist = phantom.clone();
    c.data.num_workers = 0;
    c.output.dir = tmp.path().join("runs");
    c.train.init_from = Some(ck.clone());
    let e =
        medseg_train::Trainer::new(c.resolve().expect("plan"), Device::Cpu).expect_err("tiny unet");
    assert!(e.to_string().contains("swin_unetr"), "{e}");
    // swin_unetr fs 12: the encoder loads, the report is written next to the run
    let mut c = medseg_train::TrainConfig::preset("phantom").expect("preset");
    c.data.datalist = phantom;
    c.data.num_workers = 0;
    c.output.dir = tmp.path().join("runs");
    c.train.init_from = Some(ck);
    let t = medseg_train::Trainer::new(c.resolve().expect("plan"), Device::Cpu).expect("trainer");
    let rep = std::fs::read_to_string(t.run_dir().join("init_from.txt")).expect("report");
    assert!(rep.contains("0 missing") && rep.contains("rotation_head.weight"), "{rep}");
    let cfg_text = std::fs::read_to_string(t.run_dir().join("config.toml")).expect("config");
    assert!(cfg_text.contains("init_from"), "the resolved config records init_from");
}
