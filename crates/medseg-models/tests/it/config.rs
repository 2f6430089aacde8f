//! Config: MONAI argument names, defaults, presets, validation errors.
use medseg_models::{MergeOrder, MoePadding, SwinUnetrConfig};

#[test]
fn parses_monai_arguments_with_defaults() -> candle::Result<()> {
    let c = SwinUnetrConfig::from_json(
        r#"{"in_channels": 1, "out_channels": 14, "feature_size": 48}"#,
    )?;
    assert_eq!(c.depths, [2, 2, 2, 2]);
    assert_eq!(c.num_heads, [3, 6, 12, 24]);
    assert_eq!(c.window(), [7, 7, 7]);
    assert!(c.normalize && c.qkv_bias && !c.use_v2);
    assert_eq!(c.resolved_merge_order(), MergeOrder::Fixed);
    let c = SwinUnetrConfig::from_json(
        r#"{"in_channels": 4, "out_channels": 3, "feature_size": 24, "use_v2": true,
            "downsample": "mergingv2", "window_size": [7, 7, 5]}"#,
    )?;
    assert_eq!(c.resolved_merge_order(), MergeOrder::V2);
    assert_eq!(c.window(), [7, 7, 5]);
    let c = SwinUnetrConfig::from_json(
        r#"{"in_channels": 1, "out_channels": 118, "img_size": [128, 128, 128], "feature_size": 48,
            "use_moe": true, "num_layers_with_moe": 3, "num_experts": 32, "merge_order": "legacy"}"#,
    )?;
    assert_eq!(c.resolved_merge_order(), MergeOrder::Legacy);
    assert!(c.stage_uses_moe(1) && !c.stage_uses_moe(0));
    Ok(())
}

#[test]
fn round_trips_through_json() -> anyhow::Result<()> {
    for c in [SwinUnetrConfig::tiny(), SwinUnetrConfig::swin_smt_paper(), SwinUnetrConfig::large()]
    {
        let s = serde_json::to_string(&c)?;
        assert_eq!(SwinUnetrConfig::from_json(&s)?, c);
    }
    Ok(())
}

#[test]
fn rejects_bad_configs() {
    let bad = [
        (r#"{"in_channels": 1, "out_channels": 2, "feature_size": 20}"#, "multiple of 12"),
        (r#"{"in_channels": 1, "out_channels": 2, "drop_rate": 1.5}"#, "drop_rate"),
        (r#"{"in_channels": 1, "out_channels": 2, "img_size": 100}"#, "divisible by 32"),
        (r#"{"in_channels": 1, "out_channels": 2, "bogus": 1}"#, "unknown field"),
        (r#"{"in_channels": 1, "out_channels": 2, "spatial_dims": 2}"#, "spatial_dims"),
        (r#"{"in_channels": 1, "out_channels": 2, "downsample": "conv"}"#, "downsample"),
        (r#"{"in_channels": 1, "out_channels": 2, "num_heads": [5, 6, 12, 24]}"#, "num_heads"),
    ];
    for (json, needle) in bad {
        match SwinUnetrConfig::from_json(json) {
            Ok(c) => panic!("accepted {json}: {c:?}"),
            Err(e) => assert!(e.to_string().contains(needle), "{json}: {e}"),
        }
    }
}

#[test]
fn merge_orders_are_the_documented_permutations() {
    assert_eq!(MergeOrder::Legacy.sublattices(), [0, 4, 2, 1, 5, 2, 1, 7]);
    assert_eq!(MergeOrder::Fixed.sublattices(), [0, 4, 2, 1, 6, 5, 3, 7]);
    assert_eq!(MergeOrder::V2.sublattices(), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert!(MergeOrder::parse("nope").is_err());
}

#[test]
fn rejects_input_not_divisible_by_32() -> candle::Result<()> {
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle::DType::F32, &candle::Device::Cpu);
    let m = medseg_models::SwinUnetr::new(&crate::common::tiny_cfg(), vb)?;
    let x = candle::Tensor::zeros((1, 1, 32, 32, 48), candle::DType::F32, &candle::Device::Cpu)?;
    let e = m.forward_t(&x, false).expect_err("48 is not divisible by 32");
    assert!(e.to_string().contains("divisible by 32"), "{e}");
    Ok(())
}

/// Swin SMT's official code vendors MONAI's pre-1.5 `PatchMerging`: without `merge_order`, a
/// `use_moe` config resolves to Legacy (an explicit value or "mergingv2" still wins), while a
/// plain SwinUNETR keeps MONAI 1.6.1's Fixed.
#[test]
fn swin_smt_defaults_to_the_legacy_merge_order() -> candle::Result<()> {
    let smt = r#"{"in_channels": 1, "out_channels": 3, "use_moe": true, "num_experts": 3"#;
    let cases = [
        (format!("{smt}}}"), MergeOrder::Legacy, "Swin SMT default"),
        (format!(r#"{smt}, "merge_order": "fixed"}}"#), MergeOrder::Fixed, "set by the config"),
        (format!(r#"{smt}, "downsample": "mergingv2"}}"#), MergeOrder::V2, "mergingv2"),
        (r#"{"in_channels": 1, "out_channels": 3}"#.to_string(), MergeOrder::Fixed, "MONAI 1.6.1"),
    ];
    for (json, want, source) in cases {
        let c = SwinUnetrConfig::from_json(&json)?;
        assert_eq!(c.resolved_merge_order(), want, "{json}");
        let (order, why) = c.merge_order_with_source();
        assert_eq!(order, want, "{json}");
        assert!(why.contains(source), "{json}: source {why:?}");
    }
    assert_eq!(SwinUnetrConfig::swin_smt_paper().resolved_merge_order(), MergeOrder::Legacy);
    Ok(())
}

/// `moe_padding` defaults to the official Swin SMT semantics; "masked" selects
/// soft-moe-pytorch's; anything else is rejected naming the field's values.
#[test]
fn moe_padding_defaults_to_official() -> candle::Result<()> {
    let base = r#"{"in_channels": 1, "out_channels": 3, "use_moe": true"#;
    assert_eq!(SwinUnetrConfig::from_json(&format!("{base}}}"))?.moe_padding, MoePadding::Official);
    let c = SwinUnetrConfig::from_json(&format!(r#"{base}, "moe_padding": "masked"}}"#))?;
    assert_eq!(c.moe_padding, MoePadding::Masked);
    let c = SwinUnetrConfig::from_json(&format!(r#"{base}, "moe_padding": "official"}}"#))?;
    assert_eq!(c.moe_padding, MoePadding::Official);
    assert_eq!(SwinUnetrConfig::monai_default(1, 2).moe_padding, MoePadding::Official);
    let e = SwinUnetrConfig::from_json(&format!(r#"{base}, "moe_padding": "zeros"}}"#))
        .expect_err("unknown moe_padding");
    assert!(e.to_string().contains("official") && e.to_string().contains("masked"), "{e}");
    Ok(())
}
