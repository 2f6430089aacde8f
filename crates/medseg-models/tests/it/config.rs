//! Config: MONAI argument names, defaults, presets, validation errors.
use medseg_models::{MergeOrder, SwinUnetrConfig};

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
