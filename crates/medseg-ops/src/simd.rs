//! Scalar kernels written so that LLVM vectorises them: lane-split sums and branch-free `exp`/`erf`.
//!
//! `exp` and `erf` here replace libm calls, which do not vectorise and dominated softmax and GELU
//! (candle's scalar `gelu_erf` runs at ≈ 72 Melem/s on this machine).

const LANES: usize = 8;

/// Runs `f` compiled for the best vector ISA of the running CPU (AVX-512, AVX2+FMA, or the
/// x86-64 baseline): the repository never sets `target-cpu`, so this runtime dispatch is how the
/// kernels' plain loops (and `exp`/`erf`) get wide vectors. `f` must be an `#[inline(always)]`
/// closure calling `#[inline(always)]` functions: a closure LLVM does not inline stays one
/// baseline-ISA function called from every instance (`perf annotate` shows xmm registers then).
#[inline(always)]
pub(crate) fn vectorized<R, F: FnOnce() -> R>(f: F) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features enabled on `run_avx512`.
            return unsafe { run_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above, for AVX2 + FMA.
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
unsafe fn run_avx512<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

/// `y[i] = f(x[i])`, [`vectorized`].
#[inline(always)]
pub(crate) fn map<F: Fn(f32) -> f32>(x: &[f32], y: &mut [f32], f: F) {
    vectorized(
        #[inline(always)]
        || {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = f(v);
            }
        },
    )
}

/// `y[i] = f(a[i], b[i])`, [`vectorized`].
#[inline(always)]
pub(crate) fn map2<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], y: &mut [f32], f: F) {
    vectorized(
        #[inline(always)]
        || {
            for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
                *o = f(u, v);
            }
        },
    )
}

/// Sum of `xs` in f64, accumulated as eight f32 lanes per 1024-element block.
pub(crate) fn sum_f32(xs: &[f32]) -> f64 {
    xs.chunks(1024).map(|c| lane_sum(c, |v| v) as f64).sum()
}

/// `Σ a·b` over eight f32 lanes (rows of a few hundred elements; no f64 needed).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    lane_sum2(a, b, |x, y| x * y)
}

/// Maximum over eight lanes (NaN-propagation is not needed: inputs are finite logits).
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let c = xs.chunks_exact(LANES);
    let tail = c.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in c {
        for l in 0..LANES {
            acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `Σ f(x)` over eight f32 lanes (for blocks of up to a few thousand elements).
#[inline(always)]
pub(crate) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = xs.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    let tail: f32 = it.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ f(a, b)` over eight f32 lanes, pairwise over `a` and `b` (for blocks like [`lane_sum`]).
#[inline(always)]
pub(crate) fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` with ≈ 2 ulp error on the f32 range; 0 below −87.3 and saturating above 88.7.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x0 = x;
    let x = x.clamp(-87.336_55, 88.722_83);
    // Round to nearest with the 1.5·2²³ trick (vectorises without SSE4.1's roundps).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial on [−ln2/2, ln2/2].
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_66;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n by exponent bits; n ∈ [−126, 128] after the clamp, 2^128 handled by splitting.
    // Wrapping integer ops: n is bounded by the clamp, and checked arithmetic (debug/test builds)
    // would put an overflow branch in the loop and stop it vectorising.
    // n as an integer from the bits of t (t lies in [2²³, 2²⁴), where one ulp is 1): a float →
    // int cast would saturate, which LLVM compiles to one scalar conversion per lane.
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let half = ni >> 1;
    let s1 = f32::from_bits((half.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((ni.wrapping_sub(half).wrapping_add(127) as u32) << 23);
    let y = e * s1 * s2;
    // Below the clamp expf underflows to 0; keep that (softmax masks rely on exact zeros).
    if x0 < -87.336_55 { 0.0 } else { y }
}

/// `erf(x)` after Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5·10⁻⁷), branch-free.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f64;
        for i in -8700..8800 {
            let x = i as f32 * 0.01;
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(-200.0) < 1e-37);
    }

    #[test]
    fn erf_matches_f64_series() {
        // Reference: the Maclaurin series of erf, summed in f64 (converges fast for |x| ≤ 3).
        fn erf64(x: f64) -> f64 {
            let mut sum = 0.0;
            let mut term = x;
            for n in 0..200 {
                sum += term / (2 * n + 1) as f64;
                term *= -x * x / (n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        for i in -300..=300 {
            let x = i as f32 * 0.01;
            let err = (erf(x) as f64 - erf64(x as f64)).abs();
            assert!(err < 4e-7, "erf({x}) error {err}");
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn dot_and_max_match_plain_loops() {
        for n in [0, 1, 7, 8, 9, 343] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 * 0.5).collect();
            let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - d).abs() < 1e-3, "n = {n}");
            assert_eq!(max(&a), a.iter().copied().fold(f32::NEG_INFINITY, f32::max), "n = {n}");
        }
    }

    #[test]
    fn sums_are_accurate() {
        let xs: Vec<f32> = (0..100_003).map(|i| (i % 7) as f32 - 3.0 + 0.25).collect();
        let exact: f64 = xs.iter().map(|&v| v as f64).sum();
        assert!((sum_f32(&xs) - exact).abs() < 1e-6 * exact.abs().max(1.0));
    }
}
