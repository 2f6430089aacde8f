//! Fused window attention (`window_attention_qkv`) against its composed twin, forward and the
//! gradients of `qkv` and the bias; finite differences of both; the general `fused_attention`
//! (packed q ‖ k ‖ v, `nq ≠ nk`, `d ≠ dv`, excluded keys) against finite differences and a
//! composed softmax; argument validation.
use candle::{DType, Device, Tensor};
use medseg_ops::{
    fused_attention, shifted_window_mask, window_attention_qkv, window_attention_qkv_reference,
};

use crate::{OpFn, check_fast_vs_reference, check_finite_differences, rand};

/// A `[nW, N, N]` mask of 0 and −100 with a window-dependent pattern (MONAI's values).
fn mask(nw: usize, n: usize) -> Tensor {
    let v: Vec<f32> = (0..nw * n * n)
        .map(|i| {
            let (w, r, c) = (i / (n * n), (i / n) % n, i % n);
            if (r % (w + 2) == 0) != (c % (w + 2) == 0) { -100.0 } else { 0.0 }
        })
        .collect();
    Tensor::from_vec(v, (nw, n, n), &Device::Cpu).unwrap()
}

#[test]
fn fused_matches_composed_with_and_without_bias_and_mask() {
    // Odd token counts exercise the vector tails; 27 = a 3³ window, 45 > 32 lanes.
    for &(bw, nw, n, heads, hd) in &[(4, 2, 27, 2, 3), (3, 3, 45, 3, 4), (2, 1, 8, 1, 16)] {
        let c = heads * hd;
        let qkv = rand(&[bw, n, 3 * c], 1);
        let bias = (rand(&[heads, n, n], 2) * 0.5).unwrap();
        let m = mask(nw, n);
        let scale = (hd as f64).powf(-0.5);
        let what = format!("bw {bw} nW {nw} N {n} heads {heads} hd {hd}");

        let fast = |t: &[Tensor]| window_attention_qkv(&t[0], heads, scale, Some(&t[1]), Some(&m));
        let reference = |t: &[Tensor]| {
            window_attention_qkv_reference(&t[0], heads, scale, Some(&t[1]), Some(&m))
        };
        check_fast_vs_reference(&what, &fast, &reference, &[qkv.clone(), bias.clone()], 2e-5);

        let fast = |t: &[Tensor]| window_attention_qkv(&t[0], heads, scale, None, None);
        let reference =
            |t: &[Tensor]| window_attention_qkv_reference(&t[0], heads, scale, None, None);
        check_fast_vs_reference(&format!("{what}, plain"), &fast, &reference, &[qkv], 2e-5);
    }
}

#[test]
fn fused_matches_composed_on_a_real_shift_mask() {
    // A 2×2×2-window grid of a 6³ volume, window 3, shift 1: MONAI's 27-region mask.
    let m = shifted_window_mask([6, 6, 6], [3, 3, 3], [1, 1, 1], &Device::Cpu).unwrap();
    let (nw, n) = (m.dim(0).unwrap(), m.dim(1).unwrap());
    let (heads, hd) = (2, 4);
    let qkv = rand(&[2 * nw, n, 3 * heads * hd], 3);
    let bias = rand(&[heads, n, n], 4);
    let fast = |t: &[Tensor]| window_attention_qkv(&t[0], heads, 0.5, Some(&t[1]), Some(&m));
    let reference =
        |t: &[Tensor]| window_attention_qkv_reference(&t[0], heads, 0.5, Some(&t[1]), Some(&m));
    check_fast_vs_reference("shift mask", &fast, &reference, &[qkv, bias], 2e-5);
}

#[test]
fn fused_and_composed_gradients_match_finite_differences() {
    let (bw, nw, n, heads, hd) = (2, 2, 10, 2, 3);
    let m = mask(nw, n);
    let inputs = [rand(&[bw, n, 3 * heads * hd], 5), rand(&[heads, n, n], 6)];
    let fast: OpFn = &|t| window_attention_qkv(&t[0], heads, 0.6, Some(&t[1]), Some(&m));
    check_finite_differences("fused attention", fast, &inputs, DType::F32, 1e-2, 3e-3);
    let m64 = m.to_dtype(DType::F64).unwrap();
    let reference: OpFn =
        &|t| window_attention_qkv_reference(&t[0], heads, 0.6, Some(&t[1]), Some(&m64));
    check_finite_differences("composed attention", reference, &inputs, DType::F64, 1e-6, 1e-6);
}

#[test]
fn fused_keeps_the_input_dtype() {
    let qkv = rand(&[2, 8, 12], 7).to_dtype(DType::F64).unwrap();
    let y = window_attention_qkv(&qkv, 2, 0.5, None, None).unwrap();
    assert_eq!((y.dtype(), y.dims()), (DType::F64, &[2, 8, 4][..]));
}

#[test]
fn fused_rejects_bad_shapes() {
    let qkv = rand(&[4, 8, 12], 8);
    let err = |r: candle::Result<Tensor>| r.unwrap_err().to_string();
    assert!(err(window_attention_qkv(&qkv, 3, 1.0, None, None)).contains("divisible by heads"));
    let bias = rand(&[2, 8, 7], 9);
    assert!(err(window_attention_qkv(&qkv, 2, 1.0, Some(&bias), None)).contains("bias"));
    let m = rand(&[3, 8, 8], 10);
    assert!(err(window_attention_qkv(&qkv, 2, 1.0, None, Some(&m))).contains("nW dividing 4"));
}

#[test]
fn fused_backward_is_bitwise_repeatable() {
    // 40 windows: several bias-accumulator groups, summed in a fixed order.
    let (bw, n, heads, hd) = (40, 27, 3, 4);
    let m = mask(4, n);
    let run = || {
        let qkv = candle::Var::from_tensor(&rand(&[bw, n, 3 * heads * hd], 12)).unwrap();
        let bias = candle::Var::from_tensor(&rand(&[heads, n, n], 13)).unwrap();
        let y = window_attention_qkv(qkv.as_tensor(), heads, 0.5, Some(bias.as_tensor()), Some(&m))
            .unwrap();
        let g = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(g.get(qkv.as_tensor()).unwrap()), flat(g.get(bias.as_tensor()).unwrap()))
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "the fused backward changed between identical runs");
    }
}

/// `softmax(q·kᵀ·scale + bias + mask)·v` over the first `n_valid` keys, composed from candle ops
/// (the `n_valid` extension of the composed window attention).
fn attention_composed(
    t: &[Tensor],
    scale: f64,
    mask: &Tensor,
    n_valid: usize,
) -> candle::Result<Tensor> {
    let (q, k, v, bias) = (&t[0], &t[1], &t[2], &t[3]);
    let (b, h, nq, _) = q.dims4()?;
    let nw = mask.dim(0)?;
    let k = k.narrow(2, 0, n_valid)?;
    let v = v.narrow(2, 0, n_valid)?;
    let bias = bias.narrow(2, 0, n_valid)?;
    let mask = mask.narrow(2, 0, n_valid)?.to_dtype(q.dtype())?;
    let s = (q * scale)?.matmul(&k.t()?)?.broadcast_add(&bias.unsqueeze(0)?)?;
    // [B, H, nq, nv] -> [B/nW, nW, H, nq, nv] + [1, nW, 1, nq, nv]
    let s = s
        .reshape((b / nw, nw, h, nq, n_valid))?
        .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
        .reshape((b, h, nq, n_valid))?;
    candle_nn::ops::softmax(&s, candle::D::Minus1)?.matmul(&v.contiguous()?)
}

#[test]
fn fused_attention_with_excluded_keys_matches_composed_and_finite_differences() {
    // Soft-MoE-like: nq ≠ nk, d ≠ dv, the last key excluded, two masks over four items.
    let (b, h, nq, nk, d, dv, nw, nv) = (4, 2, 5, 6, 4, 3, 2, 5);
    let m = mask(nw, nq).narrow(2, 0, 5).unwrap();
    let m = Tensor::cat(&[&m, &m.narrow(2, 0, 1).unwrap()], 2).unwrap();
    assert_eq!(m.dims(), [nw, nq, nk]);
    let inputs = [
        rand(&[b, h, nq, d], 21),
        rand(&[b, h, nk, d], 22),
        rand(&[b, h, nk, dv], 23),
        rand(&[h, nq, nk], 24),
    ];
    let fast =
        |t: &[Tensor]| fused_attention(&t[0], &t[1], &t[2], 0.7, Some(&t[3]), Some(&m), Some(nv));
    let reference = |t: &[Tensor]| attention_composed(t, 0.7, &m, nv);
    // The excluded key's rows of k, v and bias get zero gradients on both sides.
    check_fast_vs_reference_padded(&fast, &reference, &inputs);
    check_finite_differences(
        "fused attention, excluded key",
        &fast,
        &inputs,
        DType::F32,
        1e-2,
        3e-3,
    );
}

/// [`check_fast_vs_reference`] for a reference that reads only part of its inputs: inputs it does
/// not read get no gradient there, which must then be zero on the fast side.
fn check_fast_vs_reference_padded(fast: OpFn, reference: OpFn, inputs: &[Tensor]) {
    let vars: Vec<candle::Var> =
        inputs.iter().map(|t| candle::Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let yf = fast(&ts).unwrap();
    let yr = reference(&ts).unwrap();
    medseg_testkit::assert_close("forward", &yf, &yr, 2e-5, 2e-5);
    let r = rand(yf.dims(), 25);
    let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (&yr * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let a = gf.get(v.as_tensor()).expect("fast gradient");
        let b = match gr.get(v.as_tensor()) {
            Some(b) => b.clone(),
            None => a.zeros_like().unwrap(),
        };
        medseg_testkit::assert_close(&format!("grad of input {i}"), a, &b, 2e-5, 2e-5);
    }
}

#[test]
fn fully_excluded_keys_give_zero_output_and_gradients() {
    let q = candle::Var::from_tensor(&rand(&[2, 1, 3, 4], 26)).unwrap();
    let k = candle::Var::from_tensor(&rand(&[2, 1, 5, 4], 27)).unwrap();
    let y = fused_attention(q.as_tensor(), k.as_tensor(), k.as_tensor(), 1.0, None, None, Some(0))
        .unwrap();
    assert_eq!(y.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let g = y.sum_all().unwrap().backward().unwrap();
    for v in [&q, &k] {
        let gv = g.get(v.as_tensor()).expect("gradient");
        assert_eq!(gv.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}

#[test]
fn fused_attention_rejects_bad_shapes() {
    let q = rand(&[2, 1, 4, 3], 1);
    let k = rand(&[2, 1, 5, 2], 2);
    let err = fused_attention(&q, &k, &k, 1.0, None, None, None).expect_err("d mismatch");
    assert!(err.to_string().contains("fused_attention"), "{err}");
    let k = rand(&[2, 1, 5, 3], 2);
    let err = fused_attention(&q, &k, &k, 1.0, None, None, Some(6)).expect_err("n_valid");
    assert!(err.to_string().contains("n_valid"), "{err}");
    let bias = rand(&[1, 4, 4], 3);
    let err = fused_attention(&q, &k, &k, 1.0, Some(&bias), None, None).expect_err("bias");
    assert!(err.to_string().contains("bias"), "{err}");
}
