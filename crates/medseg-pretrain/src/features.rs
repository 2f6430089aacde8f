//! A collapse check for pretrained encoders: the participation ratio of hidden-state features.
//!
//! The research pretext losses can make an encoder whose features vary along about one direction
//! (docs/pretraining.md, "controls"): such an encoder fine-tunes worse than a random one. The
//! pretrainer logs this ratio per Swin stage at every validation (`val_pr0`…`val_pr4` of
//! `metrics.csv`).
use candle::{DType, Tensor};

use crate::Result;

/// Participation ratio `(Σλ)² / Σλ²` of the eigenvalues `λ` of the channel covariance of
/// `features` `[B, C, D, H, W]` over all `B·D·H·W` positions, computed as `tr(Σ)² / ‖Σ‖²_F`.
/// 1 when every position's feature vector lies on one line through the mean, `C` when the
/// variance is spread evenly over `C` directions; 0 for features that do not vary at all.
pub fn participation_ratio(features: &Tensor) -> Result<f64> {
    let (b, c, d, h, w) = features.dims5()?;
    let n = b * d * h * w;
    let z = features.to_dtype(DType::F64)?.transpose(0, 1)?.reshape((c, n))?;
    let z = z.broadcast_sub(&z.mean_keepdim(1)?)?;
    let cov = (z.matmul(&z.t()?)? / n as f64)?;
    let trace = (z.sqr()?.sum_all()?.to_scalar::<f64>()?) / n as f64;
    let frobenius2 = cov.sqr()?.sum_all()?.to_scalar::<f64>()?;
    Ok(if frobenius2 > 0.0 { trace * trace / frobenius2 } else { 0.0 })
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
        let pr = participation_ratio(&a.broadcast_mul(&v)?)?;
        assert!((pr - 1.0).abs() < 1e-9, "{pr}");
        // one-hot features cycling through C = 4 channels: Σ = I/C − 11ᵀ/C², eigenvalues 1/C
        // (C − 1 times) and 0, so PR = C − 1
        let c = 4;
        let onehot: Vec<f32> = (0..c)
            .flat_map(|ch| (0..16).map(move |pos| f32::from(u8::from(pos % c == ch))))
            .collect();
        let pr = participation_ratio(&Tensor::from_vec(onehot, (1, c, 1, 4, 4), &dev)?)?;
        assert!((pr - (c - 1) as f64).abs() < 1e-9, "{pr}");
        // constant features
        assert_eq!(participation_ratio(&Tensor::ones((2, 3, 2, 2, 2), DType::F32, &dev)?)?, 0.0);
        Ok(())
    }
}
