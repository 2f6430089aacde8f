//! Back to the input grid through the recorded preprocessing ([`crate::steps::GridStep`]), as
//! MONAI's `Invertd` does it: the steps are undone in reverse order — a crop by padding with
//! zeros, a spacing by resampling back with its mode and padding (`border` by default), an
//! orientation by permuting back.
//!
//! Nothing is resampled step by step: each input-grid voxel walks forward through the steps and
//! ends as a few weighted network-grid voxels (its *taps*: one for exact steps, up to 8 per
//! trilinear step), so the result equals MONAI's chain of inverses while only the output — one
//! slab of input-grid voxels at a time per thread — is computed. Two modes:
//! - [`Inverter::labels`]: a label map with nearest-neighbour spacing inverses (MONAI
//!   `Invertd(nearest_interp=True)`).
//! - [`Inverter::argmax`] / [`Inverter::channel`]: the class probabilities interpolated with the
//!   spacing's own mode (`nearest_interp=False`), then arg-maxed (first channel wins ties, as
//!   `torch.argmax`) or returned per channel; outside the cropped region every channel is 0.
use medseg_data::Affine;
use medseg_data::limits::alloc_volume;
use medseg_data::spatial::{Interp, Padding};
use rayon::prelude::*;

use crate::steps::{GridStep, Inverse};
use crate::{Error, Result};

/// How a prediction returns to the input grid (`medseg predict --resample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// Softmax probabilities interpolated back (each spacing's own mode), then arg-maxed: MONAI
    /// `Invertd(nearest_interp=False)` before `AsDiscrete(argmax=True)`.
    Probabilities,
    /// Arg-max on the network grid, labels mapped back by nearest neighbour.
    Labels,
}

impl Resample {
    /// `probabilities` or `labels`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "probabilities" => Ok(Resample::Probabilities),
            "labels" => Ok(Resample::Labels),
            other => {
                Err(Error::Config(format!("resample {other:?}: expected probabilities or labels")))
            }
        }
    }

    /// The spelling [`Self::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Resample::Probabilities => "probabilities",
            Resample::Labels => "labels",
        }
    }
}

/// One step as an index map from the grid before it to the grid after it.
#[derive(Debug, Clone)]
struct IndexMap {
    /// Index before → (fractional) index after.
    m: Affine,
    /// Shape after.
    to: [usize; 3],
    inverse: Inverse,
}

/// The recorded preprocessing of one case, ready to map network-grid values back.
#[derive(Debug, Clone)]
pub struct Inverter {
    maps: Vec<IndexMap>,
    input_shape: [usize; 3],
    net_shape: [usize; 3],
}

/// A network-grid voxel (linear index) and its weight.
type Tap = (usize, f64);

impl Inverter {
    /// The inverse of `trace` from the network grid (`net_shape`, the last step's output) to the
    /// input grid (`input_shape`, the first step's input).
    pub fn new(trace: &[GridStep], input_shape: [usize; 3], net_shape: [usize; 3]) -> Result<Self> {
        let mut maps = Vec::with_capacity(trace.len());
        let mut shape = input_shape;
        for g in trace {
            if g.from.1 != shape {
                return Err(Error::Shape {
                    what: "preprocessing trace".into(),
                    expected: format!("a step starting on {shape:?}"),
                    got: g.from.1.to_vec(),
                });
            }
            let inv = g.to.0.inverse().ok_or_else(|| {
                Error::Config(format!("singular affine after a preprocessing step: {:?}", g.to.0))
            })?;
            maps.push(IndexMap { m: inv.matmul(&g.from.0), to: g.to.1, inverse: g.inverse });
            shape = g.to.1;
        }
        if shape != net_shape {
            return Err(Error::Shape {
                what: "preprocessing trace".into(),
                expected: format!("ending on the network grid {net_shape:?}"),
                got: shape.to_vec(),
            });
        }
        Ok(Inverter { maps, input_shape, net_shape })
    }

    /// The input grid's shape.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    /// The taps of input voxel `q` into `out` (`scratch` is reused between calls).
    fn taps(&self, q: [usize; 3], nearest: bool, out: &mut Vec<Tap>, scratch: &mut Vec<Tap>) {
        // Walk with 3-D indices packed into the linear index of the current grid.
        let mut shape = self.input_shape;
        out.clear();
        out.push(((q[0] * shape[1] + q[1]) * shape[2] + q[2], 1.0));
        for map in &self.maps {
            scratch.clear();
            let to = map.to;
            for &(lin, w) in out.iter() {
                let idx = [lin / (shape[1] * shape[2]), lin / shape[2] % shape[1], lin % shape[2]];
                let p = map.m.apply(idx.map(|v| v as f64));
                match map.inverse {
                    Inverse::Exact => push_nearest(scratch, p, to, w, Padding::Zeros),
                    Inverse::Resample(_, pad) if nearest => push_nearest(scratch, p, to, w, pad),
                    Inverse::Resample(Interp::Nearest, pad) => push_nearest(scratch, p, to, w, pad),
                    Inverse::Resample(Interp::Linear, pad) => push_linear(scratch, p, to, w, pad),
                }
            }
            std::mem::swap(out, scratch);
            shape = to;
        }
    }

    /// Runs `f(slab index, slab, taps buffers)` over the input grid's axis-0 slabs in parallel.
    fn for_each_slab<T: Send>(
        &self,
        out: &mut [T],
        f: impl Fn([usize; 3], &mut T, &mut Vec<Tap>, &mut Vec<Tap>) + Sync,
    ) {
        let [_, ny, nz] = self.input_shape;
        if ny * nz == 0 {
            return;
        }
        out.par_chunks_mut(ny * nz).enumerate().for_each(|(i, slab)| {
            let (mut taps, mut scratch) = (Vec::with_capacity(8), Vec::with_capacity(8));
            for (r, v) in slab.iter_mut().enumerate() {
                f([i, r / nz, r % nz], v, &mut taps, &mut scratch);
            }
        });
    }

    fn check_len(&self, what: &str, len: usize, k: usize) -> Result<()> {
        let n: usize = self.net_shape.iter().product();
        if len != k * n {
            return Err(Error::Shape {
                what: what.into(),
                expected: format!("{k} × {n} network-grid values"),
                got: vec![len],
            });
        }
        Ok(())
    }

    /// A network-grid label map on the input grid, nearest neighbour through every spacing
    /// (MONAI `Invertd(nearest_interp=True)`); voxels outside the crop get 0.
    pub fn labels(&self, net: &[u8]) -> Result<Vec<u8>> {
        self.check_len("network-grid labels", net.len(), 1)?;
        let mut out = alloc_volume("labels on the input grid", self.input_shape, 0u8)?;
        self.for_each_slab(&mut out, |q, v, taps, scratch| {
            self.taps(q, true, taps, scratch);
            *v = taps.first().map_or(0, |&(i, _)| net[i]);
        });
        Ok(out)
    }

    /// The argmax of the `k` channel-major network-grid probabilities carried back with each
    /// spacing's own interpolation (MONAI `Invertd(nearest_interp=False)` then
    /// `AsDiscrete(argmax=True)`), one `u8` label per input voxel.
    pub fn argmax(&self, probs: &[f32], k: usize) -> Result<Vec<u8>> {
        self.check_len("network-grid probabilities", probs.len(), k)?;
        if k > 256 {
            return Err(Error::Shape {
                what: "argmax to u8 labels".into(),
                expected: "at most 256 channels".into(),
                got: vec![k],
            });
        }
        let n: usize = self.net_shape.iter().product();
        let mut out = alloc_volume("labels on the input grid", self.input_shape, 0u8)?;
        self.for_each_slab(&mut out, |q, v, taps, scratch| {
            self.taps(q, false, taps, scratch);
            let (mut best, mut best_v) = (0usize, f32::NEG_INFINITY);
            for c in 0..k {
                let ch = &probs[c * n..(c + 1) * n];
                let val = taps.iter().map(|&(i, w)| w * f64::from(ch[i])).sum::<f64>() as f32;
                if val > best_v {
                    (best, best_v) = (c, val);
                }
            }
            *v = best as u8;
        });
        Ok(out)
    }

    /// Channel `c` of the `k` channel-major network-grid probabilities on the input grid (the
    /// values [`Self::argmax`] compares).
    pub fn channel(&self, probs: &[f32], k: usize, c: usize) -> Result<Vec<f32>> {
        self.check_len("network-grid probabilities", probs.len(), k)?;
        let n: usize = self.net_shape.iter().product();
        let ch = probs.get(c * n..(c + 1) * n).ok_or_else(|| Error::Shape {
            what: "probability channel".into(),
            expected: format!("a channel below {k}"),
            got: vec![c],
        })?;
        let mut out = alloc_volume("probabilities on the input grid", self.input_shape, 0f32)?;
        self.for_each_slab(&mut out, |q, v, taps, scratch| {
            self.taps(q, false, taps, scratch);
            *v = taps.iter().map(|&(i, w)| w * f64::from(ch[i])).sum::<f64>() as f32;
        });
        Ok(out)
    }
}

/// PyTorch `grid_sample` coordinate padding (`align_corners=False`): `border` clamps into the
/// grid, `reflection` mirrors about the outer voxel faces, `zeros` leaves the coordinate.
fn pad_coord(x: f64, n: usize, pad: Padding) -> f64 {
    let nf = n as f64;
    match pad {
        Padding::Zeros => x,
        Padding::Border => x.clamp(0.0, nf - 1.0),
        Padding::Reflection => {
            let span = 2.0 * nf;
            let mut v = (x + 0.5).rem_euclid(span);
            if v > nf {
                v = span - v;
            }
            (v - 0.5).clamp(0.0, nf - 1.0)
        }
    }
}

/// The nearest voxel (round half to even, as `grid_sample(mode="nearest")`), dropped outside.
fn push_nearest(out: &mut Vec<Tap>, p: [f64; 3], to: [usize; 3], w: f64, pad: Padding) {
    let mut idx = [0usize; 3];
    for d in 0..3 {
        let r = pad_coord(p[d], to[d], pad).round_ties_even();
        if !(r >= 0.0 && r <= to[d] as f64 - 1.0) {
            return;
        }
        idx[d] = r as usize;
    }
    out.push(((idx[0] * to[1] + idx[1]) * to[2] + idx[2], w));
}

/// The 8 trilinear corners with their weights; corners outside the grid read 0 (dropped).
fn push_linear(out: &mut Vec<Tap>, p: [f64; 3], to: [usize; 3], w: f64, pad: Padding) {
    let mut i0 = [0isize; 3];
    let mut f = [0f64; 3];
    for d in 0..3 {
        let x = pad_coord(p[d], to[d], pad);
        if !x.is_finite() {
            return;
        }
        let fl = x.floor();
        i0[d] = fl as isize;
        f[d] = x - fl;
    }
    for corner in 0..8 {
        let mut wt = w;
        let mut lin = 0usize;
        for d in 0..3 {
            let hi = (corner >> (2 - d)) & 1 == 1;
            let ii = i0[d] + hi as isize;
            wt *= if hi { f[d] } else { 1.0 - f[d] };
            if ii < 0 || ii >= to[d] as isize {
                wt = 0.0;
                break;
            }
            lin = lin * to[d] + ii as usize;
        }
        if wt != 0.0 {
            out.push((lin, wt));
        }
    }
}

#[cfg(test)]
mod tests {
    use medseg_data::spatial::resample_to_grid;
    use medseg_data::{Sample, Volume};

    use super::*;
    use crate::steps::{Step, apply_steps};

    /// A 9×7×6 LPS volume, positive in a box.
    fn sample() -> Sample {
        let shape = [9, 7, 6];
        let data = (0..shape.iter().product::<usize>())
            .map(|l| {
                let (i, j, k) = (l / 42, l / 6 % 7, l % 6);
                if (2..7).contains(&i) && (1..6).contains(&j) && (1..5).contains(&k) {
                    (i + 2 * j + 3 * k) as f32
                } else {
                    -1.0
                }
            })
            .collect();
        let affine = Affine::from_parts(
            [[-2.0, 0.0, 0.0], [0.0, -1.5, 0.0], [0.0, 0.0, 2.5]],
            [10.0, 4.0, -3.0],
        );
        Sample::new(Volume::new(data, shape, affine).expect("volume"), None).expect("sample")
    }

    #[test]
    fn exact_steps_invert_exactly_and_pad_the_crop_with_zeros() {
        let s = sample();
        let input = s.image.clone();
        let steps = [
            Step::Orientation { axcodes: "RAS".into() },
            Step::CropForeground { margin: [0; 3], allow_smaller: true, k_divisible: [1; 3] },
        ];
        let (net, trace) = apply_steps(s, &steps).expect("apply");
        let inv = Inverter::new(&trace, input.shape(), net.image.shape()).expect("inverter");
        // One channel of probabilities equal to the image: carried back it is the image inside
        // the crop and 0 outside.
        let back = inv.channel(net.image.data(), 1, 0).expect("back");
        for (b, &v) in back.iter().zip(input.data()) {
            assert_eq!(*b, if v > 0.0 { v } else { 0.0 });
        }
    }

    #[test]
    fn a_spacing_inverse_equals_monai_resampling_back_with_border_padding() {
        let s = sample();
        let input = s.image.clone();
        let steps = [Step::Spacing {
            pixdim: [1.1, 0.9, 2.0],
            mode: Interp::Linear,
            padding: Padding::Border,
        }];
        let (net, trace) = apply_steps(s, &steps).expect("apply");
        let inv = Inverter::new(&trace, input.shape(), net.image.shape()).expect("inverter");
        // MONAI's inverse: SpatialResample back onto the input grid, same mode and padding.
        let want = resample_to_grid(
            &net.image,
            &input.affine,
            input.shape(),
            Interp::Linear,
            Padding::Border,
            |v| v as f32,
        )
        .expect("resample");
        let got = inv.channel(net.image.data(), 1, 0).expect("back");
        let worst = got.iter().zip(want.data()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "max difference {worst}");
        // Labels: nearest with border padding.
        let lab: Vec<u8> = net.image.data().iter().map(|v| (v.max(0.0) as u8) % 7).collect();
        let lab_vol = net.image.with_data(lab.clone()).expect("labels");
        let want = resample_to_grid(
            &lab_vol,
            &input.affine,
            input.shape(),
            Interp::Nearest,
            Padding::Border,
            |v| v as u8,
        )
        .expect("resample");
        assert_eq!(inv.labels(&lab).expect("labels"), want.data());
    }

    #[test]
    fn argmax_takes_the_first_of_equal_channels() {
        let trace: Vec<GridStep> = Vec::new();
        let inv = Inverter::new(&trace, [1, 1, 3], [1, 1, 3]).expect("identity");
        let probs = [0.5f32, 0.2, 0.0, 0.5, 0.8, 0.0];
        assert_eq!(inv.argmax(&probs, 2).expect("argmax"), vec![0, 1, 0]);
        assert!(inv.argmax(&probs[..5], 2).is_err());
    }
}
