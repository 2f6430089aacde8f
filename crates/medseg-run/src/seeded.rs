//! Seeded parameter initialisation: a `VarBuilder` backend that fills new variables from a
//! ChaCha8 stream derived from `(seed, variable name)`, so the same seed gives the same initial
//! weights whatever the creation order (candle's CPU RNG cannot be seeded).
use candle::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A [`VarMap`] whose missing variables are created from a seeded stream.
pub struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SeededVarMap {
    /// Wraps `varmap`.
    pub fn new(varmap: VarMap, seed: u64) -> Self {
        SeededVarMap { varmap, seed }
    }

    /// A `VarBuilder` creating (or reusing) variables of `varmap`.
    pub fn var_builder(
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(SeededVarMap::new(varmap.clone(), seed)),
            dtype,
            dev.clone(),
        )
    }
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the name, mixed with the seed (splitmix in medseg-data).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    medseg_data::phantom::mix_seed(seed, h)
}

fn init_values(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f32> {
        (0..n).map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32).collect()
    };
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f32> {
        (0..n).map(|_| (mean + std * rng.sample::<f64, _>(StandardNormal)) as f32).collect()
    };
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Kaiming { dist, fan, non_linearity } => {
            let fan = fan.for_shape(shape);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(rng, -b, b)
                }
                candle_nn::init::NormalOrUniform::Normal => normal(rng, 0.0, std),
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data =
            self.varmap.data().lock().map_err(|_| candle::Error::Msg("varmap lock".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle::bail!(
                    "variable {name} exists with shape {:?}, requested {:?}",
                    v.shape(),
                    s
                )
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(name_seed(self.seed, name));
        let vals = init_values(h, &s, &mut rng);
        let t = Tensor::from_vec(vals, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle::bail!("variable {name}: get_unchecked is not supported by the seeded var map")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().map(|d| d.contains_key(name)).unwrap_or(false)
    }
}
