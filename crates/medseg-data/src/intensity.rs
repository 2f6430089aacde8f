//! Pure intensity functions (the functional tier), computed in f32 like MONAI.
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// MONAI `ScaleIntensityRange`: `(v − a_min)/(a_max − a_min)·(b_max − b_min) + b_min`, then clip to
/// `[b_min, b_max]` when `clip`.
pub fn scale_intensity_range(
    data: &mut [f32],
    a_min: f32,
    a_max: f32,
    b_min: f32,
    b_max: f32,
    clip: bool,
) {
    let d = a_max - a_min;
    let (lo, hi) = if b_min <= b_max { (b_min, b_max) } else { (b_max, b_min) };
    for v in data.iter_mut() {
        let mut x = (*v - a_min) / d;
        x = x * (b_max - b_min) + b_min;
        if clip {
            x = x.clamp(lo, hi);
        }
        *v = x;
    }
}

/// `v · (1 + factor)` (MONAI `ScaleIntensity(factor)`).
pub fn scale(data: &mut [f32], factor: f32) {
    data.iter_mut().for_each(|v| *v *= 1.0 + factor);
}

/// `v + offset` (MONAI `ShiftIntensity`).
pub fn shift(data: &mut [f32], offset: f32) {
    data.iter_mut().for_each(|v| *v += offset);
}

/// Adds `N(mean, std²)` noise drawn from a ChaCha8 stream seeded by `seed` (a non-finite or
/// non-positive `std` adds only `mean`).
pub fn add_gaussian_noise(data: &mut [f32], mean: f32, std: f32, seed: u64) {
    if !std.is_finite() || std <= 0.0 {
        data.iter_mut().for_each(|v| *v += mean);
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(mean as f64, std as f64)
        .unwrap_or_else(|_| unreachable!("std checked positive"));
    for v in data.iter_mut() {
        *v += normal.sample(&mut rng) as f32;
    }
}

/// A uniform draw in `[lo, hi)` that tolerates `lo == hi`.
pub fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}
