//! One `DynamicSlotsSoftMoE` (dim 24, E = 3, 10 tokens → 2 padding tokens, batch 2) against
//! `tools/golden/models_golden.py`'s `moe_dyn_e3_{official,masked}` goldens: output ≤ 1e-5
//! max-abs, gradients of the input and of every parameter ≤ 1e-4 relative L2, for both
//! `MoePadding` values, through the composed path and (feature `cuda`) the fused path.
use candle::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::{DynamicSlotsSoftMoe, MoePadding};

use crate::common::{cos_weighted_sum, formula, golden_path, rel_l2};

/// Which forward of the module a case runs.
#[derive(Debug, Clone, Copy)]
enum Path {
    Composed,
    #[cfg(feature = "cuda")]
    Fused,
}

struct Golden {
    tensors: std::collections::HashMap<String, Tensor>,
    padding: MoePadding,
    dim: usize,
    experts: usize,
}

fn golden(padding: &str) -> anyhow::Result<Golden> {
    let bytes = std::fs::read(golden_path(&format!("moe_dyn_e3_{padding}.safetensors")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let padding = serde_json::from_value(serde_json::Value::String(meta["moe_padding"].clone()))?;
    Ok(Golden {
        tensors: candle::safetensors::load_buffer(&bytes, &Device::Cpu)?,
        padding,
        dim: meta["dim"].parse()?,
        experts: meta["num_experts"].parse()?,
    })
}

/// The module with formula weights under `mlp.` (the golden script's keys), on `dev`.
fn formula_moe(
    g: &Golden,
    padding: MoePadding,
    dev: &Device,
) -> anyhow::Result<(DynamicSlotsSoftMoe, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let m = DynamicSlotsSoftMoe::new(g.dim, g.experts, 4, padding, vb.pp("mlp"))?;
    for (k, var) in varmap.data().lock().expect("varmap lock").iter() {
        var.set(&formula(k, var.dims())?.to_device(dev)?)?;
    }
    Ok((m, varmap))
}

fn max_abs(t: &Tensor) -> candle::Result<f32> {
    t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn check(padding: &str, path: Path, dev: &Device) -> anyhow::Result<()> {
    let g = golden(padding)?;
    let (m, varmap) = formula_moe(&g, g.padding, dev)?;
    assert_eq!(m.padding(), g.padding);
    let x = Var::from_tensor(&g.tensors["input"].to_device(dev)?)?;
    let out = match path {
        Path::Composed => m.forward_composed(x.as_tensor())?,
        #[cfg(feature = "cuda")]
        Path::Fused => m.forward_fused(x.as_tensor())?,
    };
    let label = format!("{padding} {path:?} on {dev:?}");
    let diff = max_abs(&(out.to_device(&Device::Cpu)? - &g.tensors["out"])?)?;
    eprintln!("{label}: out max-abs {diff:.2e}");
    assert!(diff <= 1e-5, "{label}: output off by {diff:e}");
    let grads = cos_weighted_sum(&out)?.backward()?;
    let mut compared = 0;
    let data = varmap.data().lock().expect("varmap lock");
    for (key, want) in g.tensors.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let key = &key["grad.".len()..];
        let var = if key == "input" { &x } else { &data[key] };
        let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{label}: no grad {key}"));
        let rel = rel_l2(&got.to_device(&Device::Cpu)?, want)?;
        assert!(rel <= 1e-4, "{label}: grad {key} rel-L2 {rel:e}");
        compared += 1;
    }
    // input, norm, to_slot_embeds.{0,2}, 3 experts × 4 tensors
    assert_eq!(compared, 16, "{label}: gradients compared");
    Ok(())
}

#[test]
fn dynamic_slots_official_padding_composed() -> anyhow::Result<()> {
    check("official", Path::Composed, &Device::Cpu)
}

#[test]
fn dynamic_slots_masked_padding_composed() -> anyhow::Result<()> {
    check("masked", Path::Composed, &Device::Cpu)
}

/// The fused path on the CPU (the kernels' reference twin) and, when present, on CUDA.
#[cfg(feature = "cuda")]
#[test]
fn dynamic_slots_both_paddings_fused() -> anyhow::Result<()> {
    let mut devices = vec![Device::Cpu];
    match Device::new_cuda(0) {
        Ok(d) => devices.push(d),
        Err(e) => println!("dynamic_slots_both_paddings_fused: no CUDA device, CPU only ({e})"),
    }
    for dev in &devices {
        for padding in ["official", "masked"] {
            check(padding, Path::Fused, dev)?;
        }
    }
    Ok(())
}

/// Each mode's output is more than 1e-4 from the other mode's golden (the goldens separate).
#[test]
fn the_two_paddings_differ_on_a_padded_sequence() -> anyhow::Result<()> {
    for (mode, other) in [(MoePadding::Official, "masked"), (MoePadding::Masked, "official")] {
        let g = golden(other)?;
        let (m, _) = formula_moe(&g, mode, &Device::Cpu)?;
        let diff = max_abs(&(m.forward_composed(&g.tensors["input"])? - &g.tensors["out"])?)?;
        assert!(diff > 1e-4, "{mode:?} vs the {other} golden: only {diff:e} apart");
    }
    Ok(())
}

/// The fixed-slot `SoftMoE`: fused path (the kernels' CPU twin) equals the composed path,
/// forward and gradients.
#[cfg(feature = "cuda")]
#[test]
fn fixed_slots_fused_matches_composed_on_cpu() -> anyhow::Result<()> {
    use medseg_models::SoftMoe;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let m = SoftMoe::new(16, 3, 2, 2, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let x = Var::from_tensor(&medseg_testkit::random_tensor(&[2, 11, 16], 5, &dev)?)?;
    let want = m.forward_composed(x.as_tensor())?;
    let got = m.forward_fused(x.as_tensor())?;
    let diff = max_abs(&(&want - &got)?)?;
    assert!(diff <= 1e-5, "fused vs composed SoftMoE: {diff:e}");
    let gw = cos_weighted_sum(&want)?.backward()?;
    let gg = cos_weighted_sum(&got)?.backward()?;
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter().map(|(k, v)| (k.as_str(), v)).chain([("input", &x)]) {
        let (a, b) = (gw.get(var.as_tensor()), gg.get(var.as_tensor()));
        let (Some(a), Some(b)) = (a, b) else { panic!("no gradient for {name}") };
        let rel = rel_l2(b, a)?;
        assert!(rel <= 1e-4, "grad {name}: fused vs composed rel-L2 {rel:e}");
    }
    Ok(())
}

/// Zero experts is an error, not a division by zero in the padding arithmetic.
#[test]
fn zero_experts_is_an_error() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let e = DynamicSlotsSoftMoe::new(8, 0, 4, MoePadding::Official, vb).expect_err("0 experts");
    assert!(e.to_string().contains("num_experts"), "{e}");
}
