//! CPU kernels of the activations: element-wise GELU / leaky ReLU and row softmax, each a candle
//! custom op with its backward.
use candle::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::simd;
use crate::storage::f32_slice;

/// Elements per rayon task for element-wise kernels.
const CHUNK: usize = 32_768;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Unary {
    Gelu,
    LeakyRelu(f32),
}

impl Unary {
    #[inline(always)]
    fn f(self, x: f32) -> f32 {
        match self {
            Unary::Gelu => 0.5 * x * (1.0 + simd::erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Unary::LeakyRelu(s) => {
                if x > 0.0 {
                    x
                } else {
                    x * s
                }
            }
        }
    }

    /// Derivative `f'(x)`.
    #[inline(always)]
    fn df(self, x: f32) -> f32 {
        match self {
            Unary::Gelu => {
                // Φ(x) + x·φ(x)
                const INV_SQRT_2PI: f32 = 0.398_942_3;
                let cdf = 0.5 * (1.0 + simd::erf(x * std::f32::consts::FRAC_1_SQRT_2));
                cdf + x * INV_SQRT_2PI * simd::exp(-0.5 * x * x)
            }
            Unary::LeakyRelu(s) => {
                if x > 0.0 {
                    1.0
                } else {
                    s
                }
            }
        }
    }

    fn map(self, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| match self {
            // One monomorphic loop per variant so each vectorises.
            Unary::Gelu => simd::map(xc, yc, |v| Unary::Gelu.f(v)),
            Unary::LeakyRelu(s) => simd::map(xc, yc, |v| Unary::LeakyRelu(s).f(v)),
        });
        y
    }

    fn map_grad(self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(
            |(oc, (xc, gc))| match self {
                Unary::Gelu => simd::map2(xc, gc, oc, |v, g| g * Unary::Gelu.df(v)),
                Unary::LeakyRelu(s) => simd::map2(xc, gc, oc, |v, g| g * Unary::LeakyRelu(s).df(v)),
            },
        );
        dx
    }
}

impl CustomOp1 for Unary {
    fn name(&self) -> &'static str {
        match self {
            Unary::Gelu => "gelu",
            Unary::LeakyRelu(_) => "leaky_relu",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        Ok((CpuStorage::F32(self.map(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &UnaryBackward(*self))?))
    }
}

/// `dx = f'(x)·dy` of a [`Unary`], from `(x, dy)`.
pub(crate) struct UnaryBackward(pub(crate) Unary);

impl CustomOp2 for UnaryBackward {
    fn name(&self) -> &'static str {
        "unary_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        Ok((CpuStorage::F32(self.0.map_grad(x, dy)), l1.shape().clone()))
    }
}

/// Softmax over contiguous rows of `len` elements.
pub(crate) struct Softmax {
    pub(crate) len: usize,
}

fn rows_chunk(len: usize) -> usize {
    len * (CHUNK / len.max(1)).max(1)
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax_last_dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        let mut y = vec![0f32; x.len()];
        let chunk = rows_chunk(self.len);
        y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(self.len).zip(xc.chunks(self.len)) {
                let max = simd::max(xr);
                simd::map(xr, yr, |v| simd::exp(v - max));
                let inv = (1.0 / simd::sum_f32(yr)) as f32;
                yr.iter_mut().for_each(|o| *o *= inv);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = SoftmaxBackward { len: self.len };
        Ok(Some(y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
    }
}

/// `dx = y ⊙ (dy − Σ dy ⊙ y)` per row, from `(y, dy)`.
struct SoftmaxBackward {
    len: usize,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax_last_dim_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        let mut dx = vec![0f32; y.len()];
        let chunk = rows_chunk(self.len);
        dx.par_chunks_mut(chunk).zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk))).for_each(
            |(oc, (yc, gc))| {
                let rows =
                    oc.chunks_mut(self.len).zip(yc.chunks(self.len).zip(gc.chunks(self.len)));
                for (or, (yr, gr)) in rows {
                    let dot = simd::dot(yr, gr);
                    for ((o, &yv), &g) in or.iter_mut().zip(yr).zip(gr) {
                        *o = yv * (g - dot);
                    }
                }
            },
        );
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
