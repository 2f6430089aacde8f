//! Every parameter receives a gradient (candle's fast ops drop them silently), for a model that
//! contains every module kind (v2 blocks, MLP and dynamic-slot MoE stages) and for the
//! fixed-slot Soft MoE; gradient checkpointing (Swin blocks and CNN encoders) gives the same
//! gradients as the plain backward.
use candle::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::{MoeKind, SwinUnetr, SwinUnetrConfig};
use medseg_testkit::{assert_all_vars_have_grad, assert_close, random_tensor};

fn all_kinds() -> SwinUnetrConfig {
    SwinUnetrConfig {
        feature_size: 12,
        use_v2: true,
        use_moe: true,
        num_layers_with_moe: 2,
        num_experts: 3,
        patch_norm: true,
        ..SwinUnetrConfig::monai_default(1, 2)
    }
}

fn grads(
    cfg: &SwinUnetrConfig,
    seed: u64,
) -> anyhow::Result<(VarMap, candle::backprop::GradStore)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = SwinUnetr::new(cfg, vb)?;
    let x = random_tensor(&[1, 1, 64, 32, 32], seed, &Device::Cpu)?;
    let out = model.forward_t(&x, true)?;
    let w = random_tensor(out.dims(), seed + 1, &Device::Cpu)?;
    let g = (out * w)?.sum_all()?.backward()?;
    Ok((varmap, g))
}

#[test]
fn every_parameter_gets_a_gradient_fixed_slot_moe() -> anyhow::Result<()> {
    let cfg = SwinUnetrConfig {
        moe_kind: MoeKind::FixedSlots,
        slots_per_expert: Some(4),
        use_v2: false,
        patch_norm: false,
        ..all_kinds()
    };
    let (varmap, g) = grads(&cfg, 5)?;
    assert_all_vars_have_grad(&varmap, &g);
    Ok(())
}

#[test]
fn every_parameter_gets_a_gradient_and_checkpointing_matches() -> anyhow::Result<()> {
    let cfg = all_kinds();
    let ckpt = SwinUnetrConfig { use_checkpoint: true, checkpoint_encoders: true, ..cfg.clone() };
    // Same seeds in both runs: VarMap init is random, so copy the weights across.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let plain = SwinUnetr::new(&cfg, vb)?;
    let varmap2 = VarMap::new();
    let vb2 = VarBuilder::from_varmap(&varmap2, DType::F32, &Device::Cpu);
    let with_ckpt = SwinUnetr::new(&ckpt, vb2)?;
    {
        let a = varmap.data().lock().expect("lock");
        let b = varmap2.data().lock().expect("lock");
        for (k, v) in a.iter() {
            b[k].set(v.as_tensor())?;
        }
    }
    let x = random_tensor(&[1, 1, 64, 32, 32], 11, &Device::Cpu)?;
    let o1 = plain.forward_t(&x, true)?;
    let o2 = with_ckpt.forward_t(&x, true)?;
    assert_close("checkpointed forward", &o2, &o1, 1e-6, 0.0);
    let w = random_tensor(o1.dims(), 12, &Device::Cpu)?;
    let g1 = (o1 * &w)?.sum_all()?.backward()?;
    // Every parameter of a model with every module kind receives a gradient.
    assert_all_vars_have_grad(&varmap, &g1);
    let g2 = (o2 * &w)?.sum_all()?.backward()?;
    let a = varmap.data().lock().expect("lock");
    let b = varmap2.data().lock().expect("lock");
    for (k, v) in a.iter() {
        let ga = g1.get(v.as_tensor()).unwrap_or_else(|| panic!("plain: no grad {k}"));
        let gb = g2.get(b[k].as_tensor()).unwrap_or_else(|| panic!("checkpointed: no grad {k}"));
        let scale = ga.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
        assert_close(&format!("grad {k}"), gb, ga, 1e-5 * scale.max(1e-3), 1e-4);
    }
    Ok(())
}
