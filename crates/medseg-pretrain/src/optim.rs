//! The optimisers of research `main.py --opt`: AdamW (medseg-train's `torch.optim.AdamW` port,
//! decay / no-decay groups) and [`Sgd`], `torch.optim.SGD(lr, momentum, weight_decay)`
//! (dampening 0, not Nesterov): `d = g + wd·p; b = d` on the first step, else `b = μ·b + d`;
//! `p ← p − lr·b`, coupled decay on every parameter.
use std::collections::HashMap;
use std::path::Path;

use candle::{Tensor, Var};
use candle_nn::VarMap;
use medseg_train::optim::{AdamW, AdamWConfig, Grads};

use crate::Result;
use crate::config::{OptimConfig, OptimKind};

/// `torch.optim.SGD` with momentum and coupled weight decay.
#[derive(Debug)]
pub struct Sgd {
    params: Vec<(String, Var, Option<Tensor>)>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    step: u64,
}

impl Sgd {
    /// Optimises `vars`, kept in name order.
    pub fn new(mut vars: Vec<(String, Var)>, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars.into_iter().map(|(n, v)| (n, v, None)).collect();
        Sgd { params, lr, momentum, weight_decay, step: 0 }
    }

    /// One step; parameters without a gradient are skipped.
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
        self.step += 1;
        for (_, var, buf) in &mut self.params {
            let Some(g) = grads.get(var) else { continue };
            let p = var.as_tensor().detach();
            let d =
                if self.weight_decay != 0.0 { (g + (&p * self.weight_decay)?)? } else { g.clone() };
            let b = match (buf.take(), self.momentum) {
                (_, 0.0) | (None, _) => d,
                (Some(prev), m) => ((prev * m)? + d)?,
            };
            var.set(&(&p - (&b * self.lr)?)?)?;
            if self.momentum != 0.0 {
                *buf = Some(b);
            }
        }
        Ok(())
    }

    /// Momentum buffers as `buf.<name>` (parameters that have one).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .filter_map(|(n, _, b)| b.as_ref().map(|b| (format!("buf.{n}"), b.clone())))
            .collect()
    }

    /// Restores the buffers saved by [`Sgd::state_tensors`].
    pub fn load_state(
        &mut self,
        t: &HashMap<String, Tensor>,
        step: u64,
        path: &Path,
    ) -> Result<()> {
        for (n, var, buf) in &mut self.params {
            *buf = match t.get(&format!("buf.{n}")) {
                None => None,
                Some(b) if b.dims() == var.dims() => Some(b.to_device(var.device())?),
                Some(b) => {
                    return Err(medseg_run::Error::checkpoint(
                        path,
                        format!(
                            "momentum of {n:?} has shape {:?}, parameter {:?}",
                            b.dims(),
                            var.dims()
                        ),
                    )
                    .into());
                }
            };
        }
        self.step = step;
        Ok(())
    }
}

/// AdamW or SGD behind one interface.
#[derive(Debug)]
pub enum Optimizer {
    /// medseg-train AdamW.
    AdamW(AdamW),
    /// [`Sgd`].
    Sgd(Sgd),
}

impl Optimizer {
    /// Builds the optimiser of `cfg` over every variable of `varmap`.
    pub fn new(varmap: &VarMap, cfg: &OptimConfig) -> Result<Self> {
        Ok(match cfg.kind {
            OptimKind::Adamw => Optimizer::AdamW(AdamW::from_varmap(
                varmap,
                AdamWConfig::new(cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps),
            )?),
            OptimKind::Sgd => {
                let vars = medseg_train::optim::varmap_vars(varmap)?;
                Optimizer::Sgd(Sgd::new(vars, cfg.lr, cfg.momentum, cfg.weight_decay))
            }
        })
    }

    /// Sets the learning rate of the next step.
    pub fn set_learning_rate(&mut self, lr: f64) {
        match self {
            Optimizer::AdamW(o) => o.set_learning_rate(lr),
            Optimizer::Sgd(o) => o.lr = lr,
        }
    }

    /// One step.
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
        match self {
            Optimizer::AdamW(o) => Ok(o.step(grads)?),
            Optimizer::Sgd(o) => o.step(grads),
        }
    }

    /// The optimised variables, name order.
    pub fn vars(&self) -> Vec<Var> {
        match self {
            Optimizer::AdamW(o) => o.vars().map(|(_, v)| v.clone()).collect(),
            Optimizer::Sgd(o) => o.params.iter().map(|(_, v, _)| v.clone()).collect(),
        }
    }

    /// Optimiser state for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Optimizer::AdamW(o) => o.state_tensors(),
            Optimizer::Sgd(o) => o.state_tensors(),
        }
    }

    /// Restores [`Optimizer::state_tensors`] at `step`.
    pub fn load_state(
        &mut self,
        t: &HashMap<String, Tensor>,
        step: u64,
        path: &Path,
    ) -> Result<()> {
        match self {
            Optimizer::AdamW(o) => Ok(o.load_state(t, step, path)?),
            Optimizer::Sgd(o) => o.load_state(t, step, path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    #[test]
    fn sgd_matches_torch_by_hand() {
        // p = 1, g = 0.5 twice, lr 0.1, momentum 0.9, wd 0.1:
        // step 1: d = 0.5 + 0.1 = 0.6, b = 0.6, p = 0.94
        // step 2: d = 0.5 + 0.094 = 0.594, b = 0.54 + 0.594 = 1.134, p = 0.94 − 0.1134 = 0.8266
        let v = Var::from_tensor(&Tensor::new(&[1f32], &Device::Cpu).expect("t")).expect("var");
        let mut o = Sgd::new(vec![("w".into(), v.clone())], 0.1, 0.9, 0.1);
        for _ in 0..2 {
            let mut g = Grads::new();
            g.insert(&v, Tensor::new(&[0.5f32], &Device::Cpu).expect("g"));
            o.step(&g).expect("step");
        }
        let p = v.as_tensor().to_vec1::<f32>().expect("vec")[0];
        assert!((p - 0.8266).abs() < 1e-6, "{p}");
    }
}
