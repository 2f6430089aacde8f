//! Formula weights and inputs shared with `tools/golden/models_golden.py`.
use std::path::PathBuf;

use candle::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::{SwinUnetr, SwinUnetrConfig};

/// `sum((j + 1)·byte_j) mod 997` over the key's bytes.
pub fn key_seed(key: &str) -> u64 {
    key.bytes().enumerate().map(|(j, b)| (j as u64 + 1) * b as u64).sum::<u64>() % 997
}

/// The golden script's `uniform(seed, n)`: splitmix64 of `(seed << 32) + i`, top 24 bits
/// mapped to `[-1, 1)` (exact in f64).
pub fn uniform(seed: u64, n: usize) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let mut z = (seed << 32).wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// The golden script's `formula(key, shape)`.
pub fn formula(key: &str, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let norm_scale = key.ends_with(".gamma") || (key.contains("norm") && key.ends_with(".weight"));
    let fan_in = if shape.is_empty() { 1 } else { n / shape[0] };
    let amp = (3.0 / fan_in as f64).sqrt();
    let v: Vec<f32> = uniform(key_seed(key) + 1, n)
        .into_iter()
        .map(|base| {
            let w = if norm_scale {
                1.0 + 0.1 * base
            } else if key.ends_with(".bias") {
                0.05 * base
            } else if key.ends_with("relative_position_bias_table") {
                0.5 * base
            } else if key.ends_with("slot_embeds") {
                base
            } else {
                base * amp
            };
            w as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The golden script's `input_formula(shape)`.
pub fn input_formula(shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = uniform(7, n).into_iter().map(|u| u as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Builds `cfg` on a fresh VarMap and overwrites every variable with [`formula`].
pub fn formula_model(cfg: &SwinUnetrConfig) -> Result<(SwinUnetr, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = SwinUnetr::new(cfg, vb)?;
    {
        let data = varmap.data().lock().expect("varmap lock");
        for (k, var) in data.iter() {
            var.set(&formula(k, var.dims())?)?;
        }
    }
    Ok((model, varmap))
}

/// `t[:, :, ::4, ::4, ::4]` of a `[B, C, D, H, W]` tensor (how the goldens store large outputs).
pub fn subsample4(t: &Tensor) -> Result<Tensor> {
    let pick = |n: usize| Tensor::arange_step(0u32, n as u32, 4, t.device());
    let (_, _, d, h, w) = t.dims5()?;
    t.index_select(&pick(d)?, 2)?.index_select(&pick(h)?, 3)?.index_select(&pick(w)?, 4)
}

/// The goldens' scalar loss of an output: `Σ_i t_i·cos(0.05·i)` over the flattened tensor.
pub fn cos_weighted_sum(t: &Tensor) -> Result<Tensor> {
    let wl: Vec<f32> = (0..t.elem_count()).map(|i| (0.05 * i as f64).cos() as f32).collect();
    (t * Tensor::from_vec(wl, t.shape(), t.device())?)?.sum_all()
}

/// Relative L2 error `‖got − want‖₂ / ‖want‖₂` (against a float64 reference gradient).
pub fn rel_l2(got: &Tensor, want: &Tensor) -> Result<f64> {
    let diff = (got - want)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    let norm = want.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    Ok(diff / norm.max(1e-12))
}

/// `crates/medseg-models/tests/golden/<name>`.
pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden").join(name)
}

/// A small random-weight config (fs 12, 3 classes).
pub fn tiny_cfg() -> SwinUnetrConfig {
    SwinUnetrConfig { feature_size: 12, ..SwinUnetrConfig::monai_default(1, 3) }
}
