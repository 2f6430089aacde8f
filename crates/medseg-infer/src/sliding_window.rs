//! Sliding-window inference with MONAI semantics (`monai/inferers/utils.py`
//! `sliding_window_inference`, `monai/data/utils.py` `dense_patch_slices`,
//! `compute_importance_map`), as a plain function over any predictor.
//!
//! 1. A spatial dim smaller than the roi is zero-padded symmetrically (`diff/2` before).
//! 2. Interval per dim `int(roi·(1 − overlap))` (≥ 1), or `roi` when roi equals the size.
//! 3. Window starts `i·interval` until the first that reaches the end; the last is pulled back to
//!    `size − roi`. Windows are the Cartesian product, D slowest, batched `sw_batch_size` at a time
//!    across batch items.
//! 4. Importance map: ones (`constant`) or the separable Gaussian `exp(−x²/(2σ²))`,
//!    `σ = sigma_scale·roi`, `x = −(roi−1)/2 … (roi−1)/2`, not renormalised, clamped below at
//!    `max(min, 1e-3)`.
//! 5. Output = Σ w·pred / Σ w on raw predictor outputs, cropped back to the input size.
//!
//! Predictor outputs must have the roi's spatial size (MONAI's zoom branch is not ported).
//!
//! [`sliding_window_stream`] is the one implementation: it hands out each D-slice once no later
//! window covers it, so only about `roi[0]` slices of scores are alive at a time.
//! [`sliding_window_inference`] collects them into MONAI's `[B, K, D, H, W]` output;
//! [`sliding_window_argmax`] keeps only the labels (118 classes × 300³ voxels: 12.7 GB of f32
//! scores in full, about `roi[0]/300` of that streamed).
use std::collections::VecDeque;

use candle::{DType, Tensor};

use crate::{Error, Result};

/// How overlapping windows are blended (MONAI `BlendMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlendMode {
    /// Every voxel of a window weighs 1.
    Constant,
    /// Gaussian weights centred on the window.
    Gaussian,
}

/// Sliding-window settings (MONAI argument names).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlidingWindowConfig {
    /// Window size `(D, H, W)` (`roi_size`).
    pub roi: [usize; 3],
    /// Windows per predictor call (`sw_batch_size`).
    pub sw_batch_size: usize,
    /// Fraction of overlap between neighbouring windows, in `[0, 1)`.
    pub overlap: f64,
    /// Blending of overlapping windows.
    pub mode: BlendMode,
    /// σ of the Gaussian as a fraction of the roi (`sigma_scale`, 0.125 in MONAI).
    pub sigma_scale: f64,
}

impl SlidingWindowConfig {
    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        if self.roi.contains(&0) {
            return Err(Error::Config(format!("inference.roi {:?} has a zero size", self.roi)));
        }
        if self.sw_batch_size == 0 {
            return Err(Error::Config("inference.sw_batch_size must be ≥ 1".into()));
        }
        if !(0.0..1.0).contains(&self.overlap) {
            return Err(Error::Config(format!(
                "inference.overlap must be in [0, 1), got {}",
                self.overlap
            )));
        }
        if !(self.sigma_scale > 0.0 && self.sigma_scale.is_finite()) {
            return Err(Error::Config(format!(
                "inference.sigma_scale must be > 0, got {}",
                self.sigma_scale
            )));
        }
        Ok(())
    }
}

/// Window start positions per dim for an (already padded) `size` (MONAI `dense_patch_slices`).
pub fn window_starts(size: [usize; 3], roi: [usize; 3], overlap: f64) -> [Vec<usize>; 3] {
    std::array::from_fn(|i| {
        let interval = if roi[i] == size[i] {
            roi[i]
        } else {
            // Python `int(roi * (1 - overlap))`: truncation of the f64 product.
            ((roi[i] as f64 * (1.0 - overlap)) as usize).max(1)
        };
        let num = size[i].div_ceil(interval);
        let scan = (0..num).find(|d| d * interval + roi[i] >= size[i]).map_or(1, |d| d + 1);
        (0..scan)
            .map(|k| {
                let s = k * interval;
                s - (s + roi[i]).saturating_sub(size[i])
            })
            .collect()
    })
}

/// The importance map `[rd·rh·rw]` (C order) of `mode`.
pub fn importance_map(roi: [usize; 3], mode: BlendMode, sigma_scale: f64) -> Vec<f32> {
    let n: usize = roi.iter().product();
    match mode {
        BlendMode::Constant => vec![1.0; n],
        BlendMode::Gaussian => {
            // Computed in f32 like MONAI (`torch.arange(..., dtype=torch.float)`).
            let g: [Vec<f32>; 3] = std::array::from_fn(|i| {
                let sigma = (roi[i] as f64 * sigma_scale) as f32;
                let half = (roi[i] as f32 - 1.0) / 2.0;
                (0..roi[i])
                    .map(|k| {
                        let x = -half + k as f32;
                        (x * x / (-2.0 * sigma * sigma)).exp()
                    })
                    .collect()
            });
            let mut m = Vec::with_capacity(n);
            for a in &g[0] {
                for b in &g[1] {
                    for c in &g[2] {
                        m.push(a * b * c);
                    }
                }
            }
            let min = m.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
            m.iter_mut().for_each(|v| *v = v.max(min));
            m
        }
    }
}

/// One finished D-slice of the blended output, on the input's grid.
#[derive(Debug, Clone, Copy)]
pub struct BlendedSlice<'a> {
    /// Batch item.
    pub batch: usize,
    /// Slice index along D.
    pub d: usize,
    /// Blended scores `[K, H, W]` (channel-major, C order).
    pub scores: &'a [f32],
}

/// Runs `predictor` over sliding windows of `input` `[B, C, D, H, W]` and blends the outputs.
///
/// # Shapes
/// `predictor`: `[n, C, rd, rh, rw] → [n, K, rd, rh, rw]` with `n ≤ sw_batch_size`.
/// Returns `[B, K, D, H, W]` in f32 on the input's device.
///
/// Holds the whole `[B, K, D, H, W]` result; [`sliding_window_argmax`] and
/// [`sliding_window_stream`] do not.
pub fn sliding_window_inference<F>(
    input: &Tensor,
    cfg: &SlidingWindowConfig,
    predictor: F,
) -> Result<Tensor>
where
    F: FnMut(&Tensor) -> Result<Tensor>,
{
    let (b, _c, d, h, w) = input.dims5()?;
    let vox = d * h * w;
    let mut out: Vec<f32> = Vec::new();
    let k = sliding_window_stream(input, cfg, predictor, |s| {
        let k = s.scores.len() / (h * w);
        if out.is_empty() {
            out = vec![0f32; b * k * vox];
        }
        for (c, src) in s.scores.chunks(h * w).enumerate() {
            let at = (s.batch * k + c) * vox + s.d * h * w;
            out[at..at + h * w].copy_from_slice(src);
        }
        Ok(())
    })?;
    Ok(Tensor::from_vec(out, (b, k, d, h, w), input.device())?)
}

/// Sliding-window inference followed by the argmax over channels (first channel wins ties, as
/// `torch.argmax`), without ever holding the `[B, K, D, H, W]` scores: the labels equal the argmax
/// of [`sliding_window_inference`]'s output bit for bit.
///
/// Returns `[B, D, H, W]` u8 on the input's device. Errors: more than 256 channels, or a
/// non-finite blended score ([`Error::NonFiniteOutput`] names the voxel and channel).
pub fn sliding_window_argmax<F>(
    input: &Tensor,
    cfg: &SlidingWindowConfig,
    predictor: F,
) -> Result<Tensor>
where
    F: FnMut(&Tensor) -> Result<Tensor>,
{
    let (b, _c, d, h, w) = input.dims5()?;
    let hw = h * w;
    let mut labels = vec![0u8; b * d * hw];
    sliding_window_stream(input, cfg, predictor, |s| {
        let k = s.scores.len() / hw;
        if k > 256 {
            return Err(Error::Shape {
                what: "sliding_window_argmax".into(),
                expected: "at most 256 channels (u8 labels)".into(),
                got: vec![k],
            });
        }
        if let Some(i) = s.scores.iter().position(|v| !v.is_finite()) {
            let (c, v) = (i / hw, i % hw);
            return Err(Error::NonFiniteOutput {
                value: s.scores[i],
                batch: s.batch,
                channel: c,
                voxel: [s.d, v / w, v % w],
            });
        }
        let dst = &mut labels[(s.batch * d + s.d) * hw..][..hw];
        for (l, c) in dst.iter_mut().zip(medseg_metrics::argmax_channels(s.scores, k)) {
            *l = c as u8;
        }
        Ok(())
    })?;
    Ok(Tensor::from_vec(labels, (b, d, h, w), input.device())?)
}

/// Blended scores of one batch item for the padded D-slices `first..first + slices.len()`;
/// each slice is `[K + 1, H, W]` of the padded grid, the last channel the summed weights.
struct Pending {
    batch: usize,
    first: usize,
    slices: VecDeque<Vec<f32>>,
}

/// The streaming core of the sliding-window functions: MONAI's windows, batching and blending
/// (module docs), with each D-slice handed to `sink` as soon as no later window covers it.
/// Windows run D-slowest, so only about `roi[0]` slices of `K` channels are alive at a time
/// instead of the whole volume. Slices come in order of batch item, then D. Returns `K`.
pub fn sliding_window_stream<F, S>(
    input: &Tensor,
    cfg: &SlidingWindowConfig,
    mut predictor: F,
    mut sink: S,
) -> Result<usize>
where
    F: FnMut(&Tensor) -> Result<Tensor>,
    S: FnMut(BlendedSlice<'_>) -> Result<()>,
{
    cfg.validate()?;
    let (b, _c, d, h, w) = input.dims5()?;
    let orig = [d, h, w];
    let roi = cfg.roi;
    // 1. pad dims smaller than the roi
    let mut x = input.clone();
    let mut before = [0usize; 3];
    for i in 0..3 {
        let diff = roi[i].saturating_sub(orig[i]);
        if diff > 0 {
            before[i] = diff / 2;
            x = x.pad_with_zeros(2 + i, diff / 2, diff - diff / 2)?;
        }
    }
    let size: [usize; 3] = std::array::from_fn(|i| orig[i].max(roi[i]));
    let starts = window_starts(size, roi, cfg.overlap);
    let mut windows = Vec::new();
    for &s0 in &starts[0] {
        for &s1 in &starts[1] {
            for &s2 in &starts[2] {
                windows.push([s0, s1, s2]);
            }
        }
    }
    let wmap = importance_map(roi, cfg.mode, cfg.sigma_scale);
    let nwin = windows.len();
    let plane = size[1] * size[2];
    let rplane = roi[1] * roi[2];
    let mut k_out = 0usize;
    let mut pending: Vec<Pending> = Vec::new();
    let mut out_slice: Vec<f32> = Vec::new();
    // Emitted slice buffers, reused for new slices (fewer fresh pages to fault in).
    let mut spare: Vec<Vec<f32>> = Vec::new();
    // Normalises, crops and emits the slices of `p` before padded index `upto`.
    let mut flush =
        |p: &mut Pending, upto: usize, k: usize, spare: &mut Vec<Vec<f32>>| -> Result<()> {
            while p.first < upto {
                let Some(sl) = p.slices.pop_front() else { break };
                let dd = p.first;
                p.first += 1;
                if dd < before[0] || dd >= before[0] + orig[0] {
                    spare.push(sl);
                    continue;
                }
                let count = &sl[k * plane..];
                out_slice.clear();
                for c in 0..k {
                    let ch = &sl[c * plane..(c + 1) * plane];
                    for i in before[1]..before[1] + orig[1] {
                        let row = i * size[2] + before[2];
                        let (src, cnt) = (&ch[row..row + orig[2]], &count[row..row + orig[2]]);
                        out_slice.extend(src.iter().zip(cnt).map(|(v, n)| v / n));
                    }
                }
                sink(BlendedSlice { batch: p.batch, d: dd - before[0], scores: &out_slice })?;
                spare.push(sl);
            }
            Ok(())
        };
    let total = nwin * b;
    let mut g = 0;
    while g < total {
        let end = (g + cfg.sw_batch_size).min(total);
        let crops = (g..end)
            .map(|idx| {
                let (bi, s) = (idx / nwin, windows[idx % nwin]);
                Ok(x.narrow(0, bi, 1)?
                    .narrow(2, s[0], roi[0])?
                    .narrow(3, s[1], roi[1])?
                    .narrow(4, s[2], roi[2])?)
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = Tensor::cat(&crops, 0)?;
        let pred = predictor(&batch)?;
        let pd = pred.dims().to_vec();
        if pd.len() != 5 || pd[0] != end - g || pd[2..] != roi {
            return Err(Error::Shape {
                what: "sliding-window predictor output".into(),
                expected: format!("[{}, K, {}, {}, {}]", end - g, roi[0], roi[1], roi[2]),
                got: pd,
            });
        }
        if k_out == 0 {
            k_out = pd[1];
        } else if pd[1] != k_out {
            return Err(Error::Shape {
                what: "sliding-window predictor output channels".into(),
                expected: format!("{k_out} channels in every call"),
                got: pd,
            });
        }
        let pred = pred.to_dtype(DType::F32)?;
        for (j, idx) in (g..end).enumerate() {
            let (bi, s) = (idx / nwin, windows[idx % nwin]);
            let pi = match pending.iter().position(|q| q.batch == bi) {
                Some(i) => i,
                None => {
                    pending.push(Pending { batch: bi, first: 0, slices: VecDeque::new() });
                    pending.len() - 1
                }
            };
            let q = &mut pending[pi];
            while q.first + q.slices.len() < s[0] + roi[0] {
                let sl = match spare.pop() {
                    Some(mut v) => {
                        v.fill(0.0);
                        v
                    }
                    None => vec![0f32; (k_out + 1) * plane],
                };
                q.slices.push_back(sl);
            }
            // One channel of the window at a time: the host copy is `roi` voxels, not `K·roi`.
            for k in 0..=k_out {
                let src: Option<Vec<f32>> = if k < k_out {
                    Some(pred.get(j)?.get(k)?.flatten_all()?.to_vec1()?)
                } else {
                    None
                };
                for a in 0..roi[0] {
                    let sl = &mut q.slices[s[0] + a - q.first];
                    let dst = &mut sl[k * plane..(k + 1) * plane];
                    let wsl = &wmap[a * rplane..(a + 1) * rplane];
                    for r in 0..roi[1] {
                        let row = (s[1] + r) * size[2] + s[2];
                        let (dr, wr) =
                            (&mut dst[row..row + roi[2]], &wsl[r * roi[2]..(r + 1) * roi[2]]);
                        match &src {
                            Some(src) => {
                                let sr = &src[a * rplane + r * roi[2]..][..roi[2]];
                                dr.iter_mut().zip(sr).zip(wr).for_each(|((o, v), w)| *o += v * w);
                            }
                            None => dr.iter_mut().zip(wr).for_each(|(o, w)| *o += w),
                        }
                    }
                }
            }
        }
        g = end;
        // Slices before the next window's start (or every slice of a finished item) are final.
        let next = (g < total).then(|| (g / nwin, windows[g % nwin][0]));
        for q in pending.iter_mut() {
            let upto = match next {
                Some((bi, s0)) if bi == q.batch => s0,
                _ => usize::MAX,
            };
            flush(q, upto, k_out, &mut spare)?;
        }
        pending.retain(|q| !q.slices.is_empty() || next.is_some_and(|(bi, _)| bi == q.batch));
    }
    Ok(k_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btcv_window_starts_match_the_reference_note() {
        // swin-reference §4.5: 255×223×276, roi 96, overlap 0.5 / 0.25 / 0.7.
        let s = window_starts([255, 223, 276], [96; 3], 0.5);
        assert_eq!(s[0], vec![0, 48, 96, 144, 159]);
        assert_eq!(s[1], vec![0, 48, 96, 127]);
        assert_eq!(s[2], vec![0, 48, 96, 144, 180]);
        let s = window_starts([255, 223, 276], [96; 3], 0.25);
        assert_eq!(s[0], vec![0, 72, 144, 159]);
        assert_eq!((s[1].len(), s[2].len()), (3, 4));
        let s = window_starts([255, 223, 276], [96; 3], 0.7);
        assert_eq!((s[0].len(), s[1].len(), s[2].len()), (7, 6, 8));
    }

    #[test]
    fn gaussian_peak_is_not_renormalised() {
        let m = importance_map([96; 3], BlendMode::Gaussian, 0.125);
        let peak = m.iter().copied().fold(0f32, f32::max);
        assert!((peak - 0.9974).abs() < 1e-4, "peak {peak}");
        assert!(m.iter().all(|&v| v >= 1e-3));
    }
}
