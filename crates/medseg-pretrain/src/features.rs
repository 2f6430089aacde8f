//! A collapse check for pretrained encoders: the participation ratio of hidden-state features.
//!
//! The research pretext losses can make an encoder whose features vary along about one direction
//! (docs/pretraining.md, "controls"): such an encoder fine-tunes worse than a random one. The
//! pretrainer logs this ratio per Swin stage at every validation (`val_pr0`…`val_pr4` of
//! `metrics.csv`), over the positions inside the body ([`foreground_cells`]): over a whole crop
//! the body-vs-air contrast alone can make the ratio about 1 while the body's features stay rich.
use candle::{DType, Tensor};

use crate::{Error, Result};

/// Participation ratio `(Σλ)² / Σλ²` of the eigenvalues `λ` of the channel covariance of
/// `features` `[B, C, D, H, W]` over its `B·D·H·W` positions (those where `mask`
/// `[B, 1, D, H, W]` is non-zero, when given), computed as `tr(Σ)² / ‖Σ‖²_F`.
/// 1 when every position's feature vector lies on one line through the mean, `C` when the
/// variance is spread evenly over `C` directions; 0 for features that do not vary at all;
/// NaN with fewer than 2 positions.
pub fn participation_ratio(features: &Tensor, mask: Option<&Tensor>) -> Result<f64> {
    let (b, c, d, h, w) = features.dims5()?;
    let z = features.to_dtype(DType::F64)?.transpose(0, 1)?.reshape((c, b * d * h * w))?;
    let z = match mask {
        None => z,
        Some(m) => {
            if m.dims() != [b, 1, d, h, w] {
                return Err(Error::Config(format!(
                    "participation_ratio: mask {:?} must be [{b}, 1, {d}, {h}, {w}]",
                    m.dims()
                )));
            }
            let keep: Vec<u32> = m
                .flatten_all()?
                .ne(0f64)?
                .to_vec1::<u8>()?
                .iter()
                .enumerate()
                .filter(|(_, k)| **k != 0)
                .map(|(i, _)| i as u32)
                .collect();
            let n = keep.len();
            z.index_select(&Tensor::from_vec(keep, n, z.device())?, 1)?
        }
    };
    let n = z.dim(1)?;
    if n < 2 {
        return Ok(f64::NAN);
    }
    let z = z.broadcast_sub(&z.mean_keepdim(1)?)?;
    let cov = (z.matmul(&z.t()?)? / n as f64)?;
    let trace = (z.sqr()?.sum_all()?.to_scalar::<f64>()?) / n as f64;
    let frobenius2 = cov.sqr()?.sum_all()?.to_scalar::<f64>()?;
    Ok(if frobenius2 > 0.0 { trace * trace / frobenius2 } else { 0.0 })
}

/// The cells of a `factor`-times coarser grid that lie inside the foreground of `image`
/// `[B, 1, X, Y, Z]`: more than 99 % of their voxels `> threshold` (the body mask of
/// `tools/reference/encoder_features.py`). Returns `[B, 1, X/f, Y/f, Z/f]` u8. The mask of Swin
/// stage `s` is `factor = 2^(s+1)`.
pub fn foreground_cells(image: &Tensor, factor: usize, threshold: f64) -> Result<Tensor> {
    let (b, c, x, y, z) = image.dims5()?;
    let f = factor;
    if c != 1 || f == 0 || x % f != 0 || y % f != 0 || z % f != 0 {
        return Err(Error::Config(format!(
            "foreground_cells: image {:?} must be [B, 1, X, Y, Z] with X, Y, Z divisible by {f}",
            image.dims()
        )));
    }
    let inside = image.gt(threshold)?.to_dtype(DType::F32)?;
    let cells = inside
        .reshape(vec![b, x / f, f, y / f, f, z / f, f])?
        .sum(6)?
        .sum(4)?
        .sum(2)?
        .gt(0.99 * (f * f * f) as f64)?;
    Ok(cells.unsqueeze(1)?)
}

#[cfg(test)]
mod tests {
    use candle::Device;

    use super::*;

    #[test]
    fn one_direction_gives_one_and_even_spread_gives_the_direction_count() -> Result<()> {
        let dev = Device::Cpu;
        // every position = a(x)·v: rank one
        let a = Tensor::arange(0f32, 16.0, &dev)?.reshape((1, 1, 2, 2, 4))?;
        let v = Tensor::new(&[1f32, -2.0, 0.5], &dev)?.reshape((1, 3, 1, 1, 1))?;
        let pr = participation_ratio(&a.broadcast_mul(&v)?, None)?;
        assert!((pr - 1.0).abs() < 1e-9, "{pr}");
        // one-hot features cycling through C = 4 channels: Σ = I/C − 11ᵀ/C², eigenvalues 1/C
        // (C − 1 times) and 0, so PR = C − 1
        let c = 4;
        let onehot: Vec<f32> = (0..c)
            .flat_map(|ch| (0..16).map(move |pos| f32::from(u8::from(pos % c == ch))))
            .collect();
        let pr = participation_ratio(&Tensor::from_vec(onehot, (1, c, 1, 4, 4), &dev)?, None)?;
        assert!((pr - (c - 1) as f64).abs() < 1e-9, "{pr}");
        // constant features
        assert_eq!(
            participation_ratio(&Tensor::ones((2, 3, 2, 2, 2), DType::F32, &dev)?, None)?,
            0.0
        );
        Ok(())
    }

    #[test]
    fn the_mask_keeps_only_its_positions() -> Result<()> {
        let dev = Device::Cpu;
        // positions 0..8: rank one on the first half, one-hot over 4 channels on the second
        let mut v = vec![0f32; 4 * 8];
        for pos in 0..4 {
            for ch in 0..4 {
                v[ch * 8 + pos] = pos as f32 * [1.0, -2.0, 0.5, 3.0][ch];
                v[ch * 8 + 4 + pos] = f32::from(u8::from(pos == ch));
            }
        }
        let f = Tensor::from_vec(v, (1, 4, 2, 2, 2), &dev)?;
        let first = Tensor::new(&[1u8, 1, 1, 1, 0, 0, 0, 0], &dev)?.reshape((1, 1, 2, 2, 2))?;
        let second = Tensor::new(&[0u8, 0, 0, 0, 1, 1, 1, 1], &dev)?.reshape((1, 1, 2, 2, 2))?;
        assert!((participation_ratio(&f, Some(&first))? - 1.0).abs() < 1e-9);
        assert!((participation_ratio(&f, Some(&second))? - 3.0).abs() < 1e-9);
        let one = Tensor::new(&[1u8, 0, 0, 0, 0, 0, 0, 0], &dev)?.reshape((1, 1, 2, 2, 2))?;
        assert!(participation_ratio(&f, Some(&one))?.is_nan());
        assert!(participation_ratio(&f, Some(&first.reshape((1, 1, 8, 1, 1))?)).is_err());
        Ok(())
    }

    #[test]
    fn foreground_cells_are_the_blocks_inside_the_body() -> Result<()> {
        let dev = Device::Cpu;
        // 4×2×2 image, factor 2: the first block all inside, the second has one air voxel
        let mut v = vec![1f32; 16];
        v[15] = 0.0;
        let img = Tensor::from_vec(v, (1, 1, 4, 2, 2), &dev)?;
        let cells = foreground_cells(&img, 2, 0.01)?;
        assert_eq!(cells.dims(), [1, 1, 2, 1, 1]);
        assert_eq!(cells.flatten_all()?.to_vec1::<u8>()?, [1, 0]);
        assert!(foreground_cells(&img, 3, 0.01).is_err());
        Ok(())
    }
}
