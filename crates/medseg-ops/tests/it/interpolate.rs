//! interpolate3d: fast vs separable reference, finite differences, sizes.
use candle::{DType, Tensor};
use medseg_ops::{InterpolationMode, Resize, interpolate3d, interpolate3d_reference};

use crate::{check_fast_vs_reference, check_finite_differences, rand};

#[test]
fn interpolate_fast_matches_reference() {
    let x = rand(&[2, 3, 5, 4, 6], 1);
    let cases = [Resize::Scale([2.0; 3]), Resize::Size([7, 3, 11]), Resize::Scale([0.5, 1.7, 1.0])];
    for mode in [InterpolationMode::Trilinear, InterpolationMode::Nearest] {
        for resize in cases {
            let fast = |t: &[Tensor]| interpolate3d(&t[0], resize, mode);
            let reference = |t: &[Tensor]| interpolate3d_reference(&t[0], resize, mode);
            check_fast_vs_reference(
                &format!("{mode:?} {resize:?}"),
                &fast,
                &reference,
                std::slice::from_ref(&x),
                1e-5,
            );
        }
    }
}

#[test]
fn interpolate_gradients_match_finite_differences() {
    let x = rand(&[1, 2, 3, 2, 3], 2);
    let f =
        |t: &[Tensor]| interpolate3d(&t[0], Resize::Size([5, 3, 4]), InterpolationMode::Trilinear);
    check_finite_differences("trilinear", &f, std::slice::from_ref(&x), DType::F32, 0.5, 1e-4);
    let r = |t: &[Tensor]| {
        interpolate3d_reference(&t[0], Resize::Size([5, 3, 4]), InterpolationMode::Trilinear)
    };
    check_finite_differences("trilinear ref", &r, &[x], DType::F64, 1e-6, 1e-7);
}

#[test]
fn interpolate_output_sizes_and_errors() {
    let x = rand(&[1, 1, 5, 4, 3], 3);
    let y = interpolate3d(&x, Resize::Scale([1.5, 0.5, 2.0]), InterpolationMode::Nearest).unwrap();
    assert_eq!(y.dims(), [1, 1, 7, 2, 6]);
    // Identity size is the identity.
    let id = interpolate3d(&x, Resize::Size([5, 4, 3]), InterpolationMode::Trilinear).unwrap();
    assert_eq!(
        id.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let e =
        interpolate3d(&x, Resize::Scale([0.1, 1.0, 1.0]), InterpolationMode::Nearest).unwrap_err();
    assert!(e.to_string().contains("empty axis"), "{e}");
    let e = interpolate3d(&x, Resize::Scale([f64::NAN, 1.0, 1.0]), InterpolationMode::Nearest)
        .unwrap_err();
    assert!(e.to_string().contains("finite"), "{e}");
}
