//! softmax / gelu / leaky_relu: fast vs reference, finite differences, stability.
use candle::{DType, Tensor};
use medseg_ops::{
    gelu, gelu_reference, leaky_relu, leaky_relu_reference, softmax_last_dim,
    softmax_last_dim_reference,
};

use crate::{OpFn, check_fast_vs_reference, check_finite_differences, rand};

#[test]
fn activations_fast_match_reference() {
    let x = (rand(&[4, 7, 343], 1) * 6.0).unwrap();
    let sm = |t: &[Tensor]| softmax_last_dim(&t[0]);
    let sm_ref = |t: &[Tensor]| softmax_last_dim_reference(&t[0]);
    check_fast_vs_reference("softmax", &sm, &sm_ref, std::slice::from_ref(&x), 1e-6);
    let g = |t: &[Tensor]| gelu(&t[0]);
    let g_ref = |t: &[Tensor]| gelu_reference(&t[0]);
    check_fast_vs_reference("gelu", &g, &g_ref, std::slice::from_ref(&x), 2e-6);
    let l = |t: &[Tensor]| leaky_relu(&t[0], 0.01);
    let l_ref = |t: &[Tensor]| leaky_relu_reference(&t[0], 0.01);
    check_fast_vs_reference("leaky relu", &l, &l_ref, &[x], 1e-7);
}

#[test]
fn activation_gradients_match_finite_differences() {
    let x = (rand(&[3, 5], 2) * 3.0).unwrap();
    let ops: [(&str, OpFn); 3] = [
        ("softmax", &|t| softmax_last_dim(&t[0])),
        ("gelu", &|t| gelu(&t[0])),
        ("leaky relu", &|t| leaky_relu(&t[0], 0.2)),
    ];
    for (name, f) in ops {
        check_finite_differences(name, f, std::slice::from_ref(&x), DType::F32, 1e-2, 2e-3);
    }
    let refs: [(&str, OpFn); 3] = [
        ("softmax ref", &|t| softmax_last_dim_reference(&t[0])),
        ("gelu ref", &|t| gelu_reference(&t[0])),
        ("leaky relu ref", &|t| leaky_relu_reference(&t[0], 0.2)),
    ];
    for (name, f) in refs {
        check_finite_differences(name, f, std::slice::from_ref(&x), DType::F64, 1e-6, 1e-6);
    }
}

#[test]
fn softmax_is_stable_for_large_logits() {
    let x =
        Tensor::new(&[[1e4f32, 1e4 - 1.0, -1e4], [-100.0, -100.0, -100.0]], &candle::Device::Cpu)
            .unwrap();
    let y = softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
    let e = (1.0f32).exp();
    assert!((y[0][0] - e / (e + 1.0)).abs() < 1e-6, "{y:?}");
    assert_eq!(y[0][2], 0.0);
    assert!(y[1].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6));
}
