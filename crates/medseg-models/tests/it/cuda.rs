//! Swin SMT on CUDA (feature `cuda`, skipped without a device): a tiny model with dynamic-slot
//! and fixed-slot MoE against the same weights on the CPU, and the E = 3 goldens of both MoE
//! paddings through the fused Soft MoE path.
use std::collections::HashMap;

use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::{MoeKind, SwinUnetr, SwinUnetrConfig};

use crate::common::{formula_model, golden_path, input_formula, subsample4};

fn cuda_or_skip(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let reason = e.to_string();
            let reason = reason.lines().next().unwrap_or("unknown error").to_string();
            println!("{test}: skipped, no CUDA device ({reason})");
            None
        }
    }
}

/// The model of `cfg` on `dev` with the variables of `vm`.
fn on_device(cfg: &SwinUnetrConfig, vm: &VarMap, dev: &Device) -> candle::Result<SwinUnetr> {
    let tensors = vm
        .data()
        .lock()
        .map_err(|_| candle::Error::Msg("varmap lock".into()))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_device(dev)?)))
        .collect::<candle::Result<HashMap<_, _>>>()?;
    SwinUnetr::new(cfg, VarBuilder::from_tensors(tensors, DType::F32, dev))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle::Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Logits within 1e-4 (f32) of the CPU for both MoE kinds.
#[test]
fn cuda_swin_smt_matches_cpu() -> candle::Result<()> {
    let Some(dev) = cuda_or_skip("cuda_swin_smt_matches_cpu") else { return Ok(()) };
    for kind in [MoeKind::DynamicSlots, MoeKind::FixedSlots] {
        let cfg = SwinUnetrConfig {
            use_moe: true,
            num_layers_with_moe: 2,
            num_experts: 4,
            moe_kind: kind,
            slots_per_expert: Some(2),
            ..SwinUnetrConfig::tiny()
        };
        let vm = VarMap::new();
        let model = SwinUnetr::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
        let x = Tensor::randn(0f32, 1.0, (1, 1, 32, 32, 32), &Device::Cpu)?;
        let want = model.forward_t(&x, false)?;
        let got = on_device(&cfg, &vm, &dev)?.forward_t(&x.to_device(&dev)?, false)?;
        let diff = max_abs_diff(&want, &got.to_device(&Device::Cpu)?)?;
        assert!(diff < 1e-4, "{kind:?}: CUDA vs CPU logits differ by {diff}");
    }
    Ok(())
}

/// The E = 3 Swin SMT goldens (official and masked padding) through the fused path on CUDA:
/// `out_sub` within 1e-4 of the float64 reference.
#[test]
fn cuda_swin_smt_e3_goldens() -> anyhow::Result<()> {
    let Some(dev) = cuda_or_skip("cuda_swin_smt_e3_goldens") else { return Ok(()) };
    for name in ["smt_e3_fs12_official", "smt_e3_fs12_padded"] {
        let bytes = std::fs::read(golden_path(&format!("{name}.safetensors")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let cfg = SwinUnetrConfig::from_json(&meta["config"])?;
        let g = candle::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let shape: Vec<usize> =
            g["in_shape"].to_vec1::<i64>()?.into_iter().map(|v| v as usize).collect();
        let (_, vm) = formula_model(&cfg)?;
        let model = on_device(&cfg, &vm, &dev)?;
        let out = model.forward_t(&input_formula(&shape)?.to_device(&dev)?, false)?;
        let diff = max_abs_diff(&subsample4(&out.to_device(&Device::Cpu)?)?, &g["out_sub"])?;
        eprintln!("{name} on CUDA: out_sub max-abs {diff:.2e}");
        assert!(diff <= 1e-4, "{name} on CUDA: out_sub off by {diff}");
    }
    Ok(())
}
