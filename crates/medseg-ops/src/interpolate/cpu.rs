//! CPU kernel of `interpolate3d`: gathers the 8 taps of every output voxel in one pass and
//! scatters the gradient back in the backward, as candle custom ops.
use candle::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::op::Taps;
use crate::storage::f32_slice;

/// The 8-tap gather, with a scatter backward.
pub(crate) struct Interpolate {
    pub(crate) taps: [Taps; 3],
}

impl Interpolate {
    fn in_len(&self) -> usize {
        self.taps.iter().map(|t| t.in_len).product()
    }
    fn out_len(&self) -> usize {
        self.taps.iter().map(Taps::len).product()
    }
}

impl CustomOp1 for Interpolate {
    fn name(&self) -> &'static str {
        "interpolate3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        let [td, th, tw] = &self.taps;
        let (hi, wi) = (th.in_len, tw.in_len);
        let (in_len, plane) = (self.in_len(), th.len() * tw.len());
        let mut y = vec![0f32; x.len() / in_len * self.out_len()];
        // One task per (n, c, od) output plane.
        y.par_chunks_mut(plane).enumerate().for_each(|(task, yp)| {
            let (nc, od) = (task / td.len(), task % td.len());
            let xc = &x[nc * in_len..(nc + 1) * in_len];
            let mut k = 0;
            for oh in 0..th.len() {
                for ow in 0..tw.len() {
                    let mut acc = 0f32;
                    for (id, wd) in [(td.i0[od], td.w0[od]), (td.i1[od], td.w1[od])] {
                        for (ih, wh) in [(th.i0[oh], th.w0[oh]), (th.i1[oh], th.w1[oh])] {
                            let row = (id * hi + ih) * wi;
                            acc += wd
                                * wh
                                * (tw.w0[ow] * xc[row + tw.i0[ow]]
                                    + tw.w1[ow] * xc[row + tw.i1[ow]]);
                        }
                    }
                    yp[k] = acc;
                    k += 1;
                }
            }
        });
        let dims = l.dims();
        let shape = Shape::from((dims[0], dims[1], td.len(), th.len(), tw.len()));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = dy.contiguous()?.apply_op1_no_bwd(&InterpolateBackward {
            taps: self.taps.clone(),
            in_shape: x.shape().clone(),
        })?;
        Ok(Some(dx))
    }
}

/// Adjoint of [`Interpolate`]: scatters `dy` onto the taps, one task per (n, c) channel.
struct InterpolateBackward {
    taps: [Taps; 3],
    in_shape: Shape,
}

impl CustomOp1 for InterpolateBackward {
    fn name(&self) -> &'static str {
        "interpolate3d_backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32_slice(self.name(), s, l)?;
        let [td, th, tw] = &self.taps;
        let (hi, wi) = (th.in_len, tw.in_len);
        let in_len = td.in_len * hi * wi;
        let out_len = td.len() * th.len() * tw.len();
        let mut dx = vec![0f32; self.in_shape.elem_count()];
        dx.par_chunks_mut(in_len).zip(dy.par_chunks(out_len)).for_each(|(dxc, dyc)| {
            let mut k = 0;
            for od in 0..td.len() {
                for oh in 0..th.len() {
                    for ow in 0..tw.len() {
                        let g = dyc[k];
                        k += 1;
                        for (id, wd) in [(td.i0[od], td.w0[od]), (td.i1[od], td.w1[od])] {
                            for (ih, wh) in [(th.i0[oh], th.w0[oh]), (th.i1[oh], th.w1[oh])] {
                                let row = (id * hi + ih) * wi;
                                let gw = g * wd * wh;
                                dxc[row + tw.i0[ow]] += gw * tw.w0[ow];
                                dxc[row + tw.i1[ow]] += gw * tw.w1[ow];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), self.in_shape.clone()))
    }
}
