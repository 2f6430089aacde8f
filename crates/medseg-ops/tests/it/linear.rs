//! linear: f32 path = candle's matmul, bf16 products against the reference on rounded operands,
//! gradients of the f32 product in both.
use candle::{DType, Tensor};
use medseg_ops::{Precision, linear, linear_reference, with_precision};

use crate::rand;

/// (M, N, K): row tails (M not a multiple of the kernel's 8 rows or the 64-row tasks), column
/// tails (N not a multiple of 16 or of 48), odd K, a model width, and empty products.
const SHAPES: [(usize, usize, usize); 7] =
    [(37, 50, 33), (8, 16, 2), (130, 144, 48), (5, 3, 1), (200, 96, 384), (4, 6, 0), (0, 5, 3)];

#[test]
fn linear_f32_is_candles_matmul() {
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        let s = 700 + 10 * i as u64;
        let (x, w, b) = (rand(&[m, k], s), rand(&[n, k], s + 1), rand(&[n], s + 2));
        let y = linear(&x, &w, Some(&b)).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        medseg_testkit::assert_close(&format!("{m}x{n}x{k}"), &y, &want, 0.0, 0.0);
    }
}

/// A bf16 × bf16 product is exact in f32, so on operands rounded to bf16 beforehand the kernel
/// equals the f32 reference up to summation order; against the unrounded operands the extra error
/// is that rounding. Without AVX-512 BF16 the setting leaves the f32 result untouched.
#[test]
fn linear_bf16_products_match_reference() {
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        let name = format!("{m}x{n}x{k}");
        let s = 800 + 10 * i as u64;
        let (x, w, b) = (rand(&[m, k], s), rand(&[n, k], s + 1), rand(&[n], s + 2));
        let y = with_precision(Precision::Bf16, || linear(&x, &w, Some(&b))).unwrap();
        if m == 0 {
            assert_eq!(y.dims(), [0, n], "{name}");
            continue;
        }
        if !medseg_ops::bf16_dot_available() {
            let y32 = linear(&x, &w, Some(&b)).unwrap();
            medseg_testkit::assert_close(&name, &y, &y32, 0.0, 0.0);
            continue;
        }
        let on_rounded = linear_reference(&round(&x), &round(&w), Some(&b)).unwrap();
        medseg_testkit::assert_close_on_device(&format!("{name} (rounded)"), &y, &on_rounded, 2e-5);
        let exact = linear_reference(&x, &w, Some(&b)).unwrap();
        medseg_testkit::assert_close_on_device(&format!("{name} (f32 operands)"), &y, &exact, 1e-2);
    }
}

/// Under bf16 the gradients are those of the f32 product.
#[test]
fn linear_bf16_gradients_are_the_f32_ones() {
    let (m, n, k) = (37, 50, 33);
    let x = candle::Var::from_tensor(&rand(&[m, k], 900)).unwrap();
    let w = candle::Var::from_tensor(&rand(&[n, k], 901)).unwrap();
    let dy = rand(&[m, n], 902);
    let y = with_precision(Precision::Bf16, || linear(&x, &w, None)).unwrap();
    let g = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let y_ref = linear_reference(&x, &w, None).unwrap();
    let g_ref = (y_ref * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("x", &x), ("w", &w)] {
        let got = g.get(v.as_tensor()).unwrap();
        let want = g_ref.get(v.as_tensor()).unwrap();
        medseg_testkit::assert_close(&format!("grad {name}"), got, want, 1e-6, 1e-6);
    }
}
