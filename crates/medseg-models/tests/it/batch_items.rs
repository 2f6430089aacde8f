//! Batch items are independent on the CPU: a forward of `[a; b]` equals the forwards of `a` and
//! `b` alone up to f32 rounding (the matrix products' blocking follows the row count), in f32
//! and in bf16 products. medseg-infer runs the windows of a sliding-window batch one at a time
//! on the CPU and relies on this.
use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::{SwinUnetr, SwinUnetrConfig};
use medseg_ops::{Precision, with_precision};

fn check(name: &str, cfg: &SwinUnetrConfig, size: usize) -> anyhow::Result<()> {
    let varmap = VarMap::new();
    SwinUnetr::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let model = SwinUnetr::new(cfg, medseg_models::frozen_var_builder(&varmap)?)?;
    let x = Tensor::randn(0f32, 1f32, (2, 1, size, size, size), &Device::Cpu)?;
    for p in [Precision::F32, Precision::Bf16] {
        let both = with_precision(p, || model.forward_t(&x, false))?;
        for i in 0..2 {
            let one = with_precision(p, || model.forward_t(&x.narrow(0, i, 1)?, false))?;
            let batched = both.narrow(0, i, 1)?;
            let diff = (&batched - one)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = batched.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff <= 1e-5 * scale,
                "{name} ({}): item {i} differs by {diff} batched (output scale {scale})",
                p.as_str()
            );
        }
    }
    Ok(())
}

#[test]
fn swin_unetr_items_do_not_depend_on_the_batch() -> anyhow::Result<()> {
    check("swin_unetr fs12", &SwinUnetrConfig::tiny(), 32)
}

#[test]
fn swin_smt_items_do_not_depend_on_the_batch() -> anyhow::Result<()> {
    let cfg = SwinUnetrConfig {
        use_moe: true,
        num_experts: 4,
        out_channels: 5,
        ..SwinUnetrConfig::tiny()
    };
    check("swin_smt fs12", &cfg, 32)
}
