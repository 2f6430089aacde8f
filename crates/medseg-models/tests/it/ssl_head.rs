//! `SslHead`: research-code key names and output shapes.
use candle::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::param_count::recording_var_builder;
use medseg_models::{MergeOrder, SslHead, SslHeadConfig};

use crate::common::{cos_weighted_sum, formula, golden_path, input_formula, rel_l2, subsample4};

/// fs 12, legacy merge order (the label-scarce pretraining head), default-initialised.
fn tiny_head() -> candle::Result<(SslHead, VarMap)> {
    let cfg = SslHeadConfig {
        in_channels: 1,
        feature_size: 12,
        dropout_path_rate: 0.0,
        merge_order: MergeOrder::Legacy,
    };
    let varmap = VarMap::new();
    let head = SslHead::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    Ok((head, varmap))
}

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
    let (head, _) = tiny_head()?;
    let x = medseg_testkit::random_tensor(&[2, 1, 64, 32, 32], 1, &Device::Cpu)?;
    let (rot, con, rec) = head.forward_t(&x, false)?;
    assert_eq!(rot.dims(), [2, 4]);
    assert_eq!(con.dims(), [2, 512]);
    assert_eq!(rec.dims(), [2, 1, 64, 32, 32]);
    Ok(())
}

/// Parity with the research `SSLHead` (PyTorch float64, `tools/golden/models_golden.py`
/// `run_ssl_case`): formula weights, fs 12, legacy merge order, a 64×32×32 input (2 bottleneck
/// tokens); the three outputs and the gradients of `L = Σ_t Σ_i t_i·cos(0.05·i)` over the
/// rotation logits, the contrastive embedding and the reconstruction.
#[test]
fn ssl_head_matches_the_research_model_forward_and_backward() -> anyhow::Result<()> {
    let bytes = std::fs::read(golden_path("ssl_head_fs12_legacy.safetensors"))?;
    let g = candle::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let (head, varmap) = tiny_head()?;
    for (k, var) in varmap.data().lock().expect("varmap lock").iter() {
        var.set(&formula(k, var.dims())?)?;
    }
    let in_shape: Vec<usize> =
        g["in_shape"].to_vec1::<i64>()?.into_iter().map(|v| v as usize).collect();
    let (rot, con, rec) = head.forward_t(&input_formula(&in_shape)?, false)?;
    medseg_testkit::assert_close("rotation logits", &rot, &g["rot"], 1e-4, 1e-4);
    medseg_testkit::assert_close("contrastive embedding", &con, &g["con"], 1e-4, 1e-4);
    medseg_testkit::assert_close("reconstruction", &subsample4(&rec)?, &g["rec_sub"], 1e-4, 1e-4);
    let loss = ((cos_weighted_sum(&rot)? + cos_weighted_sum(&con)?)? + cos_weighted_sum(&rec)?)?;
    let (got, want) = (loss.to_scalar::<f32>()?, g["loss"].to_vec1::<f32>()?[0]);
    assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "loss {got} vs {want}");
    let grads = loss.backward()?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut checked = 0;
    for (k, want) in g.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let key = &k["grad.".len()..];
        let var = data.get(key).unwrap_or_else(|| panic!("no parameter {key}"));
        let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {key}"));
        let rel = rel_l2(got, want)?;
        eprintln!("grad {key}: relative L2 {rel:.2e}");
        assert!(rel <= 1e-3, "gradient of {key}: relative L2 error {rel:e} > 1e-3");
        checked += 1;
    }
    assert_eq!(checked, 10, "every golden gradient compared");
    Ok(())
}
