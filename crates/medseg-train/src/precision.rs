//! bf16 mixed precision with f32 master weights (docs/cuda.md §4).
//!
//! The optimiser keeps the f32 variables of the `VarMap` (the masters). For each step a
//! [`precision_var_builder`] hands the model differentiable casts of the masters
//! (`master.to_dtype(bf16)`, not detached), so the forward runs in bf16 and `backward()` delivers
//! f32 gradients on the masters through the casts' backward. Numerically sensitive parts stay in
//! f32 inside medseg-ops (norms, softmax, GELU, attention accumulation); the loss is computed on
//! the f32 cast of the logits. bf16 has f32's exponent range, so no loss scaling is needed.
//! Works on any device; it pays off on CUDA (cuBLAS bf16 GEMMs, bf16 attention kernels).
use std::collections::HashMap;

use candle::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// The compute precision of training and inference (`precision = "f32" | "bf16"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// bf16 activations and weight copies, f32 master weights and loss.
    Bf16,
}

impl Precision {
    /// The dtype activations and weight copies use.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// A `VarBuilder` over the variables of `varmap` cast to `precision`'s dtype, differentiably:
/// gradients of a loss computed with a model built from it land on the f32 variables. With
/// [`Precision::F32`] the variables themselves are handed out (no copies).
pub fn precision_var_builder(
    varmap: &VarMap,
    precision: Precision,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let data =
        varmap.data().lock().map_err(|_| candle::Error::Msg("varmap lock poisoned".into()))?;
    let dtype = precision.dtype();
    let tensors = data
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}

#[cfg(test)]
mod tests {
    use candle::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::{Precision, precision_var_builder};
    use crate::model::{ModelConfig, TinyUnetConfig};

    /// Loss and the master gradients (in VarMap order) of a tiny U-Net at `precision`.
    fn loss_and_grads(vm: &VarMap, precision: Precision) -> candle::Result<(f32, Vec<Tensor>)> {
        let dev = Device::Cpu;
        let cfg = ModelConfig::TinyUnet(TinyUnetConfig {
            in_channels: 1,
            out_channels: 2,
            features: 4,
            levels: 2,
        });
        let model = cfg
            .build(precision_var_builder(vm, precision, &dev)?)
            .map_err(|e| candle::Error::Msg(e.to_string()))?;
        let x = Tensor::arange(0f32, 512.0, &dev)?
            .affine(1.0 / 256.0, -1.0)?
            .sin()?
            .reshape((1, 1, 8, 8, 8))?;
        let y = model.forward_t(&x.to_dtype(precision.dtype())?, true)?;
        let loss = y.to_dtype(DType::F32)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let vars = vm.all_vars();
        let mut out = Vec::with_capacity(vars.len());
        for v in &vars {
            match grads.get(v.as_tensor()) {
                Some(g) => out.push(g.clone()),
                None => candle::bail!("a master variable got no gradient"),
            }
        }
        Ok((loss.to_scalar::<f32>()?, out))
    }

    #[test]
    fn bf16_steps_put_f32_gradients_on_the_masters() -> candle::Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let cfg = ModelConfig::TinyUnet(TinyUnetConfig {
            in_channels: 1,
            out_channels: 2,
            features: 4,
            levels: 2,
        });
        cfg.build(VarBuilder::from_varmap(&vm, DType::F32, &dev))
            .map_err(|e| candle::Error::Msg(e.to_string()))?;
        // The builder hands out bf16 copies that still belong to the masters' graph.
        let vb = precision_var_builder(&vm, Precision::Bf16, &dev)?;
        let name = vm.data().lock().map(|d| d.keys().next().cloned()).ok().flatten();
        let name = name.ok_or_else(|| candle::Error::Msg("empty varmap".into()))?;
        let copy = vb.get_unchecked(&name)?;
        assert_eq!((vb.dtype(), copy.dtype()), (DType::BF16, DType::BF16));
        assert!(copy.track_op(), "the cast must stay differentiable");
        let (l32, g32) = loss_and_grads(&vm, Precision::F32)?;
        let (l16, g16) = loss_and_grads(&vm, Precision::Bf16)?;
        assert!((l32 - l16).abs() <= 2e-2 * l32.abs().max(1e-3), "loss f32 {l32} vs bf16 {l16}");
        assert!(g16.iter().all(|g| g.dtype() == DType::F32), "master gradients stay f32");
        // Compared as one vector: conv biases in front of instance norms have (numerically)
        // zero gradients whose direction is pure rounding noise.
        let flat = |gs: &[Tensor]| -> candle::Result<Tensor> {
            Tensor::cat(&gs.iter().map(|g| g.flatten_all()).collect::<candle::Result<Vec<_>>>()?, 0)
        };
        let (a, b) = (flat(&g32)?, flat(&g16)?);
        let dot = (&a * &b)?.sum_all()?.to_scalar::<f32>()?;
        let na = a.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        let nb = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        assert!(
            na > 0.0 && dot / (na * nb) > 0.99,
            "gradient direction drifts: cos {}",
            dot / (na * nb)
        );
        assert!((na - nb).abs() < 0.05 * na, "gradient norm f32 {na} vs bf16 {nb}");
        Ok(())
    }

    #[test]
    fn precision_parses_from_config_strings() {
        #[derive(serde::Deserialize)]
        struct C {
            precision: Precision,
        }
        let c: C = toml::from_str("precision = \"bf16\"").expect("valid");
        assert_eq!(c.precision, Precision::Bf16);
        assert!(toml::from_str::<C>("precision = \"fp8\"").is_err());
        assert_eq!(Precision::default().dtype(), DType::F32);
    }
}
