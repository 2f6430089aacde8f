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

/// Runs `predictor` over sliding windows of `input` `[B, C, D, H, W]` and blends the outputs.
///
/// # Shapes
/// `predictor`: `[n, C, rd, rh, rw] → [n, K, rd, rh, rw]` with `n ≤ sw_batch_size`.
/// Returns `[B, K, D, H, W]` in f32 on the input's device.
pub fn sliding_window_inference<F>(
    input: &Tensor,
    cfg: &SlidingWindowConfig,
    mut predictor: F,
) -> Result<Tensor>
where
    F: FnMut(&Tensor) -> Result<Tensor>,
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
    let vox: usize = size.iter().product();
    let rvox: usize = roi.iter().product();
    // count map, shared by all batch items
    let mut count = vec![0f32; vox];
    for s in &windows {
        for_each_voxel(size, roi, *s, |dst, src| count[dst] += wmap[src]);
    }
    let mut out: Vec<f32> = Vec::new();
    let mut k_out = 0usize;
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
        if out.is_empty() {
            k_out = pd[1];
            out = vec![0f32; b * k_out * vox];
        } else if pd[1] != k_out {
            return Err(Error::Shape {
                what: "sliding-window predictor output channels".into(),
                expected: format!("{k_out} channels in every call"),
                got: pd,
            });
        }
        let p: Vec<f32> = pred.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        for (j, idx) in (g..end).enumerate() {
            let (bi, s) = (idx / nwin, windows[idx % nwin]);
            for k in 0..k_out {
                let src = &p[(j * k_out + k) * rvox..(j * k_out + k + 1) * rvox];
                let dst = &mut out[(bi * k_out + k) * vox..(bi * k_out + k + 1) * vox];
                for_each_voxel(size, roi, s, |di, si| dst[di] += src[si] * wmap[si]);
            }
        }
        g = end;
    }
    for chunk in out.chunks_mut(vox) {
        for (o, c) in chunk.iter_mut().zip(&count) {
            *o /= c;
        }
    }
    let y = Tensor::from_vec(out, (b, k_out, size[0], size[1], size[2]), input.device())?;
    // 5. crop the padding back off
    let mut y = y;
    for i in 0..3 {
        if size[i] != orig[i] {
            y = y.narrow(2 + i, before[i], orig[i])?;
        }
    }
    Ok(y.contiguous()?)
}

/// Calls `f(dst_index, src_index)` for every voxel of the window at `start` (C order).
fn for_each_voxel(
    size: [usize; 3],
    roi: [usize; 3],
    start: [usize; 3],
    mut f: impl FnMut(usize, usize),
) {
    let mut si = 0;
    for a in 0..roi[0] {
        for b in 0..roi[1] {
            let row = ((start[0] + a) * size[1] + start[1] + b) * size[2] + start[2];
            for c in 0..roi[2] {
                f(row + c, si);
                si += 1;
            }
        }
    }
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
