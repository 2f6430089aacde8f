//! The CUDA path of Swin SMT's Soft MoE layers (feature `cuda`): dispatch and combine through
//! medseg-ops' fused attention kernels, so the `[B, n, E·S]` logits are never stored (for dynamic
//! slots `E·S ≈ n`: 32 768² floats per image at stage 2 of a 128³ input).
//!
//! Same mathematics as `soft_moe.rs` (`dispatch_combine` + `experts_and_combine`); the padded
//! tokens of `DynamicSlotsSoftMoE` are excluded from the dispatch softmax by `n_valid` instead of
//! a `−f32::MAX` logit, which gives them exactly zero weight either way.
use candle::{Result, Tensor};

use crate::soft_moe::FeedForward;

/// Slot inputs → experts → combine. `x` `[B, n, d]` (normalised, padded), `slots` `[B, E·S, d]`
/// or `[E·S, d]` (normalised), `n_valid` real tokens → `[B, n, d]`.
pub(crate) fn forward(
    x: &Tensor,
    slots: &Tensor,
    n_valid: usize,
    experts: &[FeedForward],
    slots_per_expert: usize,
) -> Result<Tensor> {
    let (b, _n, d) = x.dims3()?;
    let (e, s) = (experts.len(), slots_per_expert);
    // [B, E·S, d] -> [B, E, S, d]
    let slots_in = medseg_ops::soft_moe_dispatch(x, slots, n_valid)?.reshape((b, e, s, d))?;
    let mut outs = Vec::with_capacity(e);
    for (i, ex) in experts.iter().enumerate() {
        // [B, E, S, d] -> [B, S, d]
        outs.push(ex.forward(&slots_in.narrow(1, i, 1)?.squeeze(1)?.contiguous()?)?);
    }
    // E × [B, S, d] -> [B, E, S, d] -> [B, E·S, d]
    let y = Tensor::stack(&outs, 1)?.reshape((b, e * s, d))?;
    medseg_ops::soft_moe_combine(x, slots, &y)
}

#[cfg(test)]
mod tests {
    use candle::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::forward;
    use crate::soft_moe::FeedForward;

    /// The composed path of soft_moe.rs on the same inputs (padded rows masked with −f32::MAX).
    fn composed(
        x: &Tensor,
        slots: &Tensor,
        n_valid: usize,
        experts: &[FeedForward],
        s: usize,
    ) -> candle::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let e = experts.len();
        let pad: Vec<f32> = (0..n).map(|t| if t < n_valid { 0.0 } else { -f32::MAX }).collect();
        let logits =
            x.matmul(&slots.t()?)?.broadcast_add(&Tensor::from_vec(pad, (1, n, 1), x.device())?)?;
        let dispatch_t = medseg_ops::softmax_last_dim(&logits.transpose(1, 2)?.contiguous()?)?;
        let combine = medseg_ops::softmax_last_dim(&logits)?;
        let slots_in = dispatch_t.matmul(x)?.reshape((b, e, s, d))?;
        let mut outs = Vec::new();
        for (i, ex) in experts.iter().enumerate() {
            outs.push(ex.forward(&slots_in.narrow(1, i, 1)?.squeeze(1)?.contiguous()?)?);
        }
        combine.matmul(&Tensor::stack(&outs, 1)?.reshape((b, e * s, d))?)
    }

    #[test]
    fn fused_moe_on_cpu_matches_composed_soft_moe() -> candle::Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let (b, n, n_valid, d, e, s) = (2, 12, 10, 8, 3, 4);
        let experts: Vec<FeedForward> =
            (0..e).map(|i| FeedForward::new(d, 2, vb.pp(i))).collect::<candle::Result<_>>()?;
        let x = Tensor::randn(0f32, 1.0, (b, n, d), &dev)?;
        let keep = Tensor::from_vec(
            (0..n).map(|t| f32::from(u8::from(t < n_valid))).collect::<Vec<_>>(),
            (1, n, 1),
            &dev,
        )?;
        let x = x.broadcast_mul(&keep)?;
        let slots = Tensor::randn(0f32, 1.0, (b, e * s, d), &dev)?;
        let want = composed(&x, &slots, n_valid, &experts, s)?;
        let got = forward(&x, &slots, n_valid, &experts, s)?;
        let diff = (want - got)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "fused vs composed Soft MoE: {diff}");
        Ok(())
    }

    /// A tiny Swin SMT (dynamic-slot and fixed-slot MoE in the last stages) on CUDA against the
    /// same weights on CPU: logits within 1e-4 (f32), skipped without a device.
    #[test]
    fn cuda_swin_smt_matches_cpu() -> candle::Result<()> {
        use crate::swin_unetr::{MoeKind, SwinUnetr, SwinUnetrConfig};
        let dev = match Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                let reason = e.to_string();
                let reason = reason.lines().next().unwrap_or("unknown error");
                println!("cuda_swin_smt_matches_cpu: skipped, no CUDA device ({reason})");
                return Ok(());
            }
        };
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
            let model =
                SwinUnetr::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
            let x = Tensor::randn(0f32, 1.0, (1, 1, 32, 32, 32), &Device::Cpu)?;
            let want = model.forward_t(&x, false)?;
            let tensors = vm
                .data()
                .lock()
                .map_err(|_| candle::Error::Msg("varmap lock".into()))?
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_device(&dev)?)))
                .collect::<candle::Result<std::collections::HashMap<_, _>>>()?;
            let cuda_model =
                SwinUnetr::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &dev))?;
            let got = cuda_model.forward_t(&x.to_device(&dev)?, false)?.to_device(&Device::Cpu)?;
            let diff = (want - got)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{kind:?}: CUDA vs CPU logits differ by {diff}");
        }
        Ok(())
    }
}
