//! The compute precision of the CPU convolution and linear products, chosen per thread for a
//! scope.
//!
//! [`Precision::Bf16`] runs the forward product of `conv3d` (where the geometry suits the direct
//! kernel) and of `linear` with both operands rounded to bf16 (round to nearest even) and
//! products summed in f32 by AVX-512 BF16 dot products (`vdpbf16ps`), where the CPU has them;
//! everything else (norms, softmax, the other ops, backward products) stays in f32, and so do the tensors
//! between ops. Without AVX-512 BF16 (or off x86-64) the setting changes nothing: the f32 path
//! runs. The setting is read on the thread that calls the op, so a forward pass run inside
//! [`with_precision`] uses it however many threads the kernels then spread over.
use std::cell::Cell;

/// Operand precision of the convolution and linear products (accumulation is f32 in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 operands (the default).
    #[default]
    F32,
    /// bf16 operands, f32 accumulation, on CPUs with AVX-512 BF16.
    Bf16,
}

impl Precision {
    /// `"f32"` or `"bf16"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision {other:?}: expected f32 or bf16")),
        }
    }
}

thread_local! {
    static PRECISION: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision in effect on this thread.
pub fn precision() -> Precision {
    PRECISION.with(Cell::get)
}

/// Runs `f` with `p` in effect on this thread (restored afterwards, also on unwinding).
pub fn with_precision<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            PRECISION.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(PRECISION.with(|c| c.replace(p)));
    f()
}

/// Whether this CPU has the AVX-512 BF16 dot products that [`Precision::Bf16`] uses.
pub fn bf16_dot_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 → bf16 bits, rounded to nearest even (NaN stays a quiet NaN): the operand rounding of
/// the bf16 kernels, the same as candle's `to_dtype(BF16)`.
#[inline(always)]
pub(crate) fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    if v.is_nan() { 0x7fc0 } else { rounded }
}

/// `o[i]` = `lo[i]` (low half) and `hi[i]` (high half, 0 without `hi`) in bf16: the word
/// layout of `vdpbf16ps`, which sums the products of the two halves into one f32 lane. Used for
/// the conv input's channel pairs and the bf16 product panels; vectorised.
pub(crate) fn pair_into_words(o: &mut [u32], lo: &[f32], hi: Option<&[f32]>) {
    crate::simd::vectorized(
        #[inline(always)]
        || match hi {
            Some(hi) => {
                for ((o, &a), &b) in o.iter_mut().zip(lo).zip(hi) {
                    *o = bf16_bits(a) | (bf16_bits(b) << 16);
                }
            }
            None => {
                for (o, &a) in o.iter_mut().zip(lo) {
                    *o = bf16_bits(a);
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets_and_restores() {
        assert_eq!(precision(), Precision::F32);
        let inner = with_precision(Precision::Bf16, precision);
        assert_eq!(inner, Precision::Bf16);
        assert_eq!(precision(), Precision::F32);
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("f16".parse::<Precision>().unwrap_err().contains("f16"));
    }
}
