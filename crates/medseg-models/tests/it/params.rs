//! Parameter counts equal MONAI's (swin-reference §1.15, §2.5) and parameter names/shapes equal
//! MONAI `state_dict()` keys (golden key lists dumped by `tools/golden/models_golden.py`).
use std::collections::BTreeMap;

use medseg_models::{MoeKind, SwinUnetrConfig, count_parameters, parameter_shapes};

use crate::common::golden_path;

fn cfg(fs: usize, out: usize, v2: bool) -> SwinUnetrConfig {
    SwinUnetrConfig { feature_size: fs, use_v2: v2, ..SwinUnetrConfig::monai_default(1, out) }
}

#[test]
fn param_counts_equal_monai() -> candle::Result<()> {
    let cases: [(SwinUnetrConfig, usize); 12] = [
        (SwinUnetrConfig::base(), 62_187_296),
        (SwinUnetrConfig::small(), 15_703_304),
        (SwinUnetrConfig::tiny(), 4_078_220),
        (SwinUnetrConfig::btcv(), 62_187_296),
        (cfg(48, 14, true), 72_762_656),
        (cfg(48, 118, true), 72_767_752),
        (cfg(24, 118, true), 18_349_744),
        (cfg(96, 118, true), 290_402_104),
        (cfg(24, 118, false), 15_705_904),
        (cfg(48, 118, false), 62_192_392),
        (cfg(96, 118, false), 248_100_664),
        (SwinUnetrConfig::swin_smt_paper(), 170_783_560),
    ];
    for (c, want) in cases {
        assert_eq!(count_parameters(&c)?, want, "{c:?}");
    }
    Ok(())
}

#[test]
fn swin_smt_param_counts_equal_reference() -> candle::Result<()> {
    let smt = |v2: bool, stages: usize, e: usize| SwinUnetrConfig {
        use_v2: v2,
        num_layers_with_moe: stages,
        num_experts: e,
        ..SwinUnetrConfig::swin_smt_paper()
    };
    let cases = [
        (smt(true, 3, 32), 181_358_920),
        (smt(true, 3, 4), 83_628_616),
        (smt(false, 2, 32), 165_592_456),
        (smt(false, 3, 4), 73_053_256),
        (smt(false, 3, 8), 87_014_728),
        (smt(false, 3, 16), 114_937_672),
        (smt(false, 3, 64), 282_475_336),
    ];
    for (c, want) in cases {
        assert_eq!(count_parameters(&c)?, want, "{c:?}");
    }
    Ok(())
}

/// Parses `key [d0, d1, ..]` lines, dropping the int64 index buffers (not parameters).
fn golden_keys(file: &str) -> BTreeMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(golden_path(file)).expect("golden key list");
    text.lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, shape) = l.split_once(' ')?;
            let dims = shape
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<usize>().expect("dim"))
                .collect();
            (!k.ends_with("relative_position_index")).then(|| (k.to_string(), dims))
        })
        .collect()
}

fn assert_same_names(
    what: &str,
    ours: &BTreeMap<String, Vec<usize>>,
    monai: &BTreeMap<String, Vec<usize>>,
) {
    let only_ours: Vec<_> = ours.keys().filter(|k| !monai.contains_key(*k)).collect();
    let only_monai: Vec<_> = monai.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_monai.is_empty(),
        "{what}: only in medseg {only_ours:?}; only in MONAI {only_monai:?}"
    );
    for (k, s) in monai {
        assert_eq!(&ours[k], s, "{what}: shape of {k}");
    }
}

#[test]
fn weight_names_equal_monai_state_dict() -> candle::Result<()> {
    let ours = parameter_shapes(&cfg(12, 14, false))?;
    assert_same_names("fs12 v1", &ours, &golden_keys("swin_unetr_fs12_keys.txt"));
    assert_eq!(ours.len(), 151);
    let ours = parameter_shapes(&cfg(12, 14, true))?;
    assert_same_names("fs12 v2", &ours, &golden_keys("swin_unetr_fs12_v2_keys.txt"));
    Ok(())
}

#[test]
fn weight_names_equal_swin_smt_state_dict() -> candle::Result<()> {
    let c = SwinUnetrConfig {
        feature_size: 12,
        use_moe: true,
        num_layers_with_moe: 3,
        num_experts: 4,
        moe_kind: MoeKind::DynamicSlots,
        ..SwinUnetrConfig::monai_default(1, 3)
    };
    let ours = parameter_shapes(&c)?;
    assert_same_names("Swin SMT fs12 E4", &ours, &golden_keys("swin_smt_fs12_e4_keys.txt"));
    Ok(())
}

#[test]
fn fixed_slot_soft_moe_keys() -> candle::Result<()> {
    let c = SwinUnetrConfig {
        feature_size: 12,
        use_moe: true,
        num_layers_with_moe: 1,
        num_experts: 2,
        moe_kind: MoeKind::FixedSlots,
        slots_per_expert: Some(5),
        ..SwinUnetrConfig::monai_default(1, 3)
    };
    let ours = parameter_shapes(&c)?;
    let p = "swinViT.layers4.0.blocks.0.mlp.";
    assert_eq!(ours[&format!("{p}slot_embeds")], vec![2, 5, 96]);
    assert_eq!(ours[&format!("{p}norm.gamma")], vec![96]);
    assert_eq!(ours[&format!("{p}slot_norm.gamma")], vec![96]);
    assert_eq!(ours[&format!("{p}experts.experts.1.3.weight")], vec![96, 384]);
    assert!(ours.contains_key("swinViT.layers3.0.blocks.0.mlp.linear1.weight"));
    Ok(())
}
