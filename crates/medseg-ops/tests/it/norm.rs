//! instance_norm3d / layer_norm: fast vs reference, finite differences, validation.
use candle::{DType, Tensor};
use medseg_ops::{
    instance_norm_add_norm_leaky_relu, instance_norm_add_norm_leaky_relu_reference,
    instance_norm_leaky_relu, instance_norm_leaky_relu_reference, instance_norm3d,
    instance_norm3d_reference, layer_norm, layer_norm_reference,
};

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

#[test]
fn fused_norm_leaky_relu_matches_reference() {
    let x = ((rand(&[2, 3, 9, 8, 7], 21) * 5.0).unwrap() + 100.0).unwrap();
    let r = rand(&[2, 3, 9, 8, 7], 22);
    let fast = |t: &[Tensor]| instance_norm_leaky_relu(&t[0], t.get(1), 1e-5, 0.01);
    let reference = |t: &[Tensor]| instance_norm_leaky_relu_reference(&t[0], t.get(1), 1e-5, 0.01);
    check_fast_vs_reference(
        "norm + residual + leaky relu",
        &fast,
        &reference,
        &[x.clone(), r],
        5e-4,
    );
    check_fast_vs_reference("norm + leaky relu", &fast, &reference, &[x], 5e-4);
}

#[test]
fn fused_norm_leaky_relu_gradients_match_finite_differences() {
    let inputs = [rand(&[1, 2, 3, 2, 2], 31), rand(&[1, 2, 3, 2, 2], 32)];
    // Finite differences across the kink would be wrong: every pre-activation (x̂ + r and x̂) must
    // be clear of 0 by more than a step moves it (1e-3 · rstd).
    let xh = instance_norm3d_reference(&inputs[0].to_dtype(DType::F64).unwrap(), None, None, 1e-5)
        .unwrap();
    for pre in [(&xh + inputs[1].to_dtype(DType::F64).unwrap()).unwrap(), xh.clone()] {
        let min = pre.abs().unwrap().flatten_all().unwrap().min(0).unwrap();
        let min = min.to_scalar::<f64>().unwrap();
        assert!(min > 0.01, "pre-activation {min} too close to the kink for this test");
        let negatives = pre.lt(0.0).unwrap().to_dtype(DType::F64).unwrap().sum_all().unwrap();
        assert!(negatives.to_scalar::<f64>().unwrap() >= 2.0, "both slopes must be exercised");
    }
    for (name, n) in [("with residual", 2), ("without residual", 1)] {
        let reference =
            |t: &[Tensor]| instance_norm_leaky_relu_reference(&t[0], t.get(1), 1e-5, 0.2);
        check_finite_differences(name, &reference, &inputs[..n], DType::F64, 1e-6, 1e-6);
        let fast = |t: &[Tensor]| instance_norm_leaky_relu(&t[0], t.get(1), 1e-5, 0.2);
        check_finite_differences(name, &fast, &inputs[..n], DType::F32, 1e-3, 2e-3);
    }
}

#[test]
fn fused_norm_leaky_relu_rejects_bad_arguments() {
    let x = rand(&[1, 3, 2, 2, 2], 1);
    let e = instance_norm_leaky_relu(&x, Some(&rand(&[1, 3, 2, 2, 1], 2)), 1e-5, 0.01)
        .unwrap_err()
        .to_string();
    assert!(e.contains("residual [1, 3, 2, 2, 1] must have the shape of x"), "{e}");
    let e = instance_norm_leaky_relu(&x, None, 1e-5, -0.1).unwrap_err().to_string();
    assert!(e.contains("negative_slope must be ≥ 0"), "{e}");
}

#[test]
fn fused_norm_add_norm_leaky_relu_matches_reference() {
    let x = ((rand(&[2, 3, 9, 8, 7], 41) * 5.0).unwrap() + 100.0).unwrap();
    let r = ((rand(&[2, 3, 9, 8, 7], 42) * 3.0).unwrap() - 20.0).unwrap();
    let fast = |t: &[Tensor]| instance_norm_add_norm_leaky_relu(&t[0], &t[1], 1e-5, 0.01);
    let reference =
        |t: &[Tensor]| instance_norm_add_norm_leaky_relu_reference(&t[0], &t[1], 1e-5, 0.01);
    check_fast_vs_reference("norm + norm(residual) + leaky relu", &fast, &reference, &[x, r], 5e-4);
}

#[test]
fn fused_norm_add_norm_leaky_relu_gradients_match_finite_differences() {
    let inputs = [rand(&[1, 2, 3, 2, 2], 51), rand(&[1, 2, 3, 2, 2], 52)];
    // Every pre-activation x̂ + r̂ must be clear of the kink by more than a step moves it.
    let f64s: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect();
    let pre = (instance_norm3d_reference(&f64s[0], None, None, 1e-5).unwrap()
        + instance_norm3d_reference(&f64s[1], None, None, 1e-5).unwrap())
    .unwrap();
    let min = pre.abs().unwrap().flatten_all().unwrap().min(0).unwrap();
    let min = min.to_scalar::<f64>().unwrap();
    assert!(min > 0.01, "pre-activation {min} too close to the kink for this test");
    let negatives = pre.lt(0.0).unwrap().to_dtype(DType::F64).unwrap().sum_all().unwrap();
    assert!(negatives.to_scalar::<f64>().unwrap() >= 2.0, "both slopes must be exercised");
    let reference =
        |t: &[Tensor]| instance_norm_add_norm_leaky_relu_reference(&t[0], &t[1], 1e-5, 0.2);
    check_finite_differences("norm2 leaky ref", &reference, &inputs, DType::F64, 1e-6, 1e-6);
    let fast = |t: &[Tensor]| instance_norm_add_norm_leaky_relu(&t[0], &t[1], 1e-5, 0.2);
    check_finite_differences("norm2 leaky fast", &fast, &inputs, DType::F32, 1e-3, 2e-3);
    let e = instance_norm_add_norm_leaky_relu(&inputs[0], &rand(&[1, 2, 3, 2, 1], 2), 1e-5, 0.2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("residual [1, 2, 3, 2, 1] must have the shape of x"), "{e}");
}
