//! Gradient checkpointing (`use_checkpoint` for the Swin blocks, `checkpoint_encoders` for the
//! CNN encoders) changes memory, not training: the same losses and weights step for step.
use candle::{DType, Device, Tensor};
use candle_nn::VarMap;
use medseg_testkit::random_tensor;
use medseg_train::loss::dice_ce_loss;
use medseg_train::{AdamW, AdamWConfig, DiceCeConfig, Grads, ModelConfig};

/// Named weights after training.
type Weights = Vec<(String, Tensor)>;

/// Losses of 3 AdamW steps on one fixed batch, and the final weights, from seeded weights.
fn losses(checkpoint: bool) -> anyhow::Result<(Vec<f32>, Weights)> {
    let mut cfg = super::tiny_swin_unetr();
    if let ModelConfig::SwinUnetr(m) = &mut cfg {
        m.use_checkpoint = checkpoint;
        m.checkpoint_encoders = checkpoint;
    }
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model =
        cfg.build(medseg_train::seeded::SeededVarMap::var_builder(&varmap, 7, DType::F32, &dev))?;
    let mut opt = AdamW::from_varmap(&varmap, AdamWConfig::new(1e-3, 1e-5, [0.9, 0.999], 1e-8))?;
    let x = random_tensor(&[1, 1, 64, 32, 32], 3, &dev)?;
    let y: Vec<f32> = (0..64 * 32 * 32).map(|i| ((i / 997) % 3) as f32).collect();
    let y = Tensor::from_vec(y, (1, 1, 64, 32, 32), &dev)?;
    let mut out = Vec::new();
    for _ in 0..3 {
        let loss = dice_ce_loss(&model.forward_t(&x, true)?, &y, &DiceCeConfig::monai())?;
        out.push(loss.to_scalar::<f32>()?);
        let g = loss.backward()?;
        let mut grads = Grads::new();
        grads.accumulate(&g, opt.vars().map(|(_, v)| v), 1.0)?;
        opt.step(&grads)?;
    }
    let weights = opt.vars().map(|(k, v)| (k.to_string(), v.as_tensor().clone())).collect();
    Ok((out, weights))
}

#[test]
fn checkpointed_model_trains_identically() -> anyhow::Result<()> {
    let (plain, wp) = losses(false)?;
    let (ckpt, wc) = losses(true)?;
    // The forward passes are the same computation; the backward sums a few gradients in another
    // order (the checkpointed blocks hand theirs back in one piece), so allow f32 rounding.
    for (i, (a, b)) in plain.iter().zip(&ckpt).enumerate() {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "step {i}: loss {a} vs {b} checkpointed");
    }
    for ((k, a), (_, b)) in wp.iter().zip(&wc) {
        let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(d <= 1e-6, "{k}: weights differ by {d} after 3 steps");
    }
    Ok(())
}
