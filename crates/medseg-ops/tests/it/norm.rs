//! instance_norm3d / layer_norm: fast vs reference, finite differences, validation.
use candle::{DType, Tensor};
use medseg_ops::{instance_norm3d, instance_norm3d_reference, layer_norm, layer_norm_reference};

use crate::{check_fast_vs_reference, check_finite_differences, rand};

#[test]
fn instance_norm_fast_matches_reference() {
    // Offset and scale the input so a naive one-pass variance would lose precision.
    let x = ((rand(&[2, 3, 9, 8, 7], 1) * 5.0).unwrap() + 100.0).unwrap();
    let (w, b) = (rand(&[3], 2), rand(&[3], 3));
    let fast = |t: &[Tensor]| instance_norm3d(&t[0], t.get(1), t.get(2), 1e-5);
    let reference = |t: &[Tensor]| instance_norm3d_reference(&t[0], t.get(1), t.get(2), 1e-5);
    check_fast_vs_reference("instance norm affine", &fast, &reference, &[x.clone(), w, b], 5e-4);
    check_fast_vs_reference("instance norm", &fast, &reference, &[x], 5e-4);
}

#[test]
fn layer_norm_fast_matches_reference() {
    let x = rand(&[3, 5, 48], 4);
    let (w, b) = (rand(&[48], 5), rand(&[48], 6));
    let fast = |t: &[Tensor]| layer_norm(&t[0], t.get(1), t.get(2), 1e-5);
    let reference = |t: &[Tensor]| layer_norm_reference(&t[0], t.get(1), t.get(2), 1e-5);
    check_fast_vs_reference("layer norm affine", &fast, &reference, &[x.clone(), w, b], 1e-4);
    check_fast_vs_reference("layer norm", &fast, &reference, &[x], 1e-4);
}

#[test]
fn norm_gradients_match_finite_differences() {
    let inputs = [rand(&[1, 2, 3, 2, 2], 7), rand(&[2], 8), rand(&[2], 9)];
    let reference = |t: &[Tensor]| instance_norm3d_reference(&t[0], t.get(1), t.get(2), 1e-5);
    check_finite_differences("instance norm ref", &reference, &inputs, DType::F64, 1e-5, 1e-6);
    let fast = |t: &[Tensor]| instance_norm3d(&t[0], t.get(1), t.get(2), 1e-5);
    check_finite_differences("instance norm fast", &fast, &inputs, DType::F32, 1e-2, 2e-3);

    let inputs = [rand(&[3, 6], 10), rand(&[6], 11), rand(&[6], 12)];
    let reference = |t: &[Tensor]| layer_norm_reference(&t[0], t.get(1), t.get(2), 1e-5);
    check_finite_differences("layer norm ref", &reference, &inputs, DType::F64, 1e-5, 1e-6);
    let fast = |t: &[Tensor]| layer_norm(&t[0], t.get(1), t.get(2), 1e-5);
    check_finite_differences("layer norm fast", &fast, &inputs, DType::F32, 1e-2, 2e-3);
}

#[test]
fn norm_rejects_bad_shapes() {
    let x = rand(&[1, 3, 2, 2, 2], 1);
    let e = instance_norm3d(&x, Some(&rand(&[4], 2)), None, 1e-5).unwrap_err().to_string();
    assert!(e.contains("weight must have shape [3]"), "{e}");
    let e = layer_norm(&x, None, Some(&rand(&[3], 2)), 1e-5).unwrap_err().to_string();
    assert!(e.contains("bias must have shape [2]"), "{e}");
    let e = instance_norm3d(&rand(&[4, 3], 1), None, None, 1e-5).unwrap_err().to_string();
    assert!(e.contains("[N, C, spatial"), "{e}");
}
