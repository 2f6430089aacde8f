//! `SslHead`: research-code key names and output shapes.
use candle::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::param_count::recording_var_builder;
use medseg_models::{MergeOrder, SslHead, SslHeadConfig};

#[test]
fn ssl_head_keys_match_research_code() -> candle::Result<()> {
    let (vb, rec) = recording_var_builder();
    SslHead::new(&SslHeadConfig::pretrain(), vb)?;
    let shapes = rec.shapes();
    assert_eq!(shapes["rotation_head.weight"], vec![4, 768]);
    assert_eq!(shapes["contrastive_head.weight"], vec![512, 768]);
    assert_eq!(shapes["conv.0.weight"], vec![384, 768, 3, 3, 3]);
    assert_eq!(shapes["conv.16.weight"], vec![48, 48, 3, 3, 3]);
    assert_eq!(shapes["conv.20.weight"], vec![1, 48, 1, 1, 1]);
    assert_eq!(shapes["conv.20.bias"], vec![1]);
    assert!(shapes.contains_key("swinViT.layers4.0.downsample.reduction.weight"));
    // swinViT (fs48) 8,062,002 + heads.
    let heads: usize = shapes
        .iter()
        .filter(|(k, _)| !k.starts_with("swinViT."))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let total: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(total - heads, 8_062_002);
    Ok(())
}

#[test]
fn ssl_head_output_shapes() -> candle::Result<()> {
    let cfg = SslHeadConfig {
        in_channels: 1,
        feature_size: 12,
        dropout_path_rate: 0.0,
        merge_order: MergeOrder::Legacy,
    };
    let varmap = VarMap::new();
    let head = SslHead::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let x = medseg_testkit::random_tensor(&[2, 1, 64, 32, 32], 1, &Device::Cpu)?;
    let (rot, con, rec) = head.forward_t(&x, false)?;
    assert_eq!(rot.dims(), [2, 4]);
    assert_eq!(con.dims(), [2, 512]);
    assert_eq!(rec.dims(), [2, 1, 64, 32, 32]);
    Ok(())
}
