//! The CPU twins of the CUDA kernels against finite differences and against medseg-ops' composed
//! candle paths (window attention; Soft MoE dispatch/combine as composed in medseg-models).
use candle::{Device, Tensor, Var};
use medseg_kernels::reference::{
    AttentionGeom, KernelError, MoeGeom, attention_bwd, attention_fwd, soft_moe_combine_geom,
    soft_moe_dispatch_geom,
};

use medseg_testkit::random_values as values;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32 tensor")
}

/// A shifted-window style mask: 0 or −100, different per window.
fn mask_values(nw: usize, n: usize) -> Vec<f32> {
    (0..nw * n * n)
        .map(|t| if (t / n + t % n + t / (n * n)).is_multiple_of(3) { -100.0 } else { 0.0 })
        .collect()
}

fn small_geom() -> AttentionGeom {
    AttentionGeom {
        batch: 4,
        heads: 2,
        nq: 5,
        nk: 6,
        d: 4,
        dv: 3,
        mask_windows: 2,
        n_valid: 5,
        scale: 0.7,
    }
}

/// `Σ w ⊙ out` of the twin's forward, in f64 for clean finite differences.
#[allow(clippy::too_many_arguments)] // reason: one argument per kernel buffer.
fn loss(
    g: &AttentionGeom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    mask: &[f32],
    w: &[f32],
) -> f64 {
    let (out, _) = attention_fwd(g, q, k, v, Some(bias), Some(mask)).expect("valid geometry");
    out.iter().zip(w).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum()
}

#[test]
fn attention_backward_matches_finite_differences() {
    let g = small_geom();
    let (q, k, v) = (values(g.q_len(), 1), values(g.k_len(), 2), values(g.v_len(), 3));
    let bias = values(g.bias_len(), 4);
    let mut mask = vec![0.0; g.mask_len()];
    mask[3] = -100.0;
    mask[g.nq * g.nk + 7] = -100.0;
    let w = values(g.out_len(), 5);
    let (out, lse) = attention_fwd(&g, &q, &k, &v, Some(&bias), Some(&mask)).expect("fwd");
    let grads =
        attention_bwd(&g, &q, &k, &v, Some(&bias), Some(&mask), &out, &lse, &w).expect("bwd");
    let eps = 1e-2f32;
    let mut worst = 0f64;
    let mut check = |which: usize, analytic: &[f32]| {
        for idx in 0..analytic.len() {
            let mut bufs = [q.clone(), k.clone(), v.clone(), bias.clone()];
            bufs[which][idx] += eps;
            let up = loss(&g, &bufs[0], &bufs[1], &bufs[2], &bufs[3], &mask, &w);
            bufs[which][idx] -= 2.0 * eps;
            let down = loss(&g, &bufs[0], &bufs[1], &bufs[2], &bufs[3], &mask, &w);
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let err = (numeric - f64::from(analytic[idx])).abs() / (1.0 + numeric.abs());
            worst = worst.max(err);
        }
    };
    check(0, &grads.dq);
    check(1, &grads.dk);
    check(2, &grads.dv);
    check(3, grads.dbias.as_deref().expect("bias given"));
    assert!(worst < 2e-3, "finite-difference mismatch {worst}");
    // Keys at index >= n_valid get no gradient at all.
    for bh in 0..g.batch * g.heads {
        let key = bh * g.nk + g.nk - 1;
        assert!(grads.dk[key * g.d..][..g.d].iter().all(|x| *x == 0.0), "dk of a padded key");
        assert!(grads.dv[key * g.dv..][..g.dv].iter().all(|x| *x == 0.0), "dv of a padded key");
    }
}

#[test]
fn attention_matches_composed_window_attention() -> candle::Result<()> {
    let dev = Device::Cpu;
    let g = AttentionGeom {
        batch: 4,
        heads: 3,
        nq: 27,
        nk: 27,
        d: 8,
        dv: 8,
        mask_windows: 2,
        n_valid: 27,
        scale: 8f32.powf(-0.5),
    };
    let shape = (g.batch, g.heads, g.nq, g.d);
    let (qv, kv, vv) = (values(g.q_len(), 11), values(g.k_len(), 12), values(g.v_len(), 13));
    let bias_v = values(g.bias_len(), 14);
    let mask_v = mask_values(g.mask_windows, g.nq);
    let w = values(g.out_len(), 15);
    let q = Var::from_vec(qv.clone(), shape, &dev)?;
    let k = Var::from_vec(kv.clone(), shape, &dev)?;
    let v = Var::from_vec(vv.clone(), shape, &dev)?;
    let bias = Var::from_vec(bias_v.clone(), (g.heads, g.nq, g.nk), &dev)?;
    let mask = Tensor::from_vec(mask_v.clone(), (g.mask_windows, g.nq, g.nk), &dev)?;
    let out = medseg_ops::window_attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        f64::from(g.scale),
        Some(bias.as_tensor()),
        Some(&mask),
    )?;
    let l = (&out * Tensor::from_vec(w.clone(), out.shape(), &dev)?)?.sum_all()?;
    let gr = l.backward()?;
    let grad = |t: &Var| gr.get(t.as_tensor()).map(to_vec).expect("gradient");

    let (ours, lse) = attention_fwd(&g, &qv, &kv, &vv, Some(&bias_v), Some(&mask_v)).expect("fwd");
    assert!(max_abs_diff(&ours, &to_vec(&out)) < 1e-5);
    let tg = attention_bwd(&g, &qv, &kv, &vv, Some(&bias_v), Some(&mask_v), &ours, &lse, &w)
        .expect("bwd");
    assert!(max_abs_diff(&tg.dq, &grad(&q)) < 1e-5, "dq");
    assert!(max_abs_diff(&tg.dk, &grad(&k)) < 1e-5, "dk");
    assert!(max_abs_diff(&tg.dv, &grad(&v)) < 1e-5, "dv");
    assert!(max_abs_diff(tg.dbias.as_deref().expect("bias"), &grad(&bias)) < 1e-5, "dbias");
    Ok(())
}

#[test]
fn soft_moe_dispatch_and_combine_match_composed_path() -> candle::Result<()> {
    // Mirrors medseg-models `soft_moe.rs` (`DynamicSlotsSoftMoe::forward`, `dispatch_combine`,
    // `experts_and_combine`): tokens padded with zeros, padded rows masked with −f32::MAX.
    let dev = Device::Cpu;
    let m = MoeGeom { batch: 2, tokens: 12, valid_tokens: 10, slots: 8, dim: 6, out_dim: 6 };
    let mut xv = values(m.batch * m.tokens * m.dim, 21);
    for b in 0..m.batch {
        for t in m.valid_tokens..m.tokens {
            xv[(b * m.tokens + t) * m.dim..][..m.dim].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let sv = values(m.batch * m.slots * m.dim, 22);
    let yv = values(m.batch * m.slots * m.out_dim, 23);
    let (w1, w2) = (values(m.batch * m.slots * m.dim, 24), values(m.batch * m.tokens * m.dim, 25));
    let x = Var::from_vec(xv.clone(), (m.batch, m.tokens, m.dim), &dev)?;
    let slots = Var::from_vec(sv.clone(), (m.batch, m.slots, m.dim), &dev)?;
    let y = Var::from_vec(yv.clone(), (m.batch, m.slots, m.out_dim), &dev)?;
    let pad: Vec<f32> =
        (0..m.tokens).map(|t| if t < m.valid_tokens { 0.0 } else { -f32::MAX }).collect();
    let pad = Tensor::from_vec(pad, (1, m.tokens, 1), &dev)?;
    // [B, n, d] x [B, d, m] -> [B, n, m]
    let logits = x.matmul(&slots.t()?)?.broadcast_add(&pad)?;
    let dispatch_t = medseg_ops::softmax_last_dim(&logits.transpose(1, 2)?.contiguous()?)?;
    let combine = medseg_ops::softmax_last_dim(&logits)?;
    let slots_in = dispatch_t.matmul(x.as_tensor())?;
    let out = combine.matmul(y.as_tensor())?;
    let l = ((&slots_in * Tensor::from_vec(w1.clone(), slots_in.shape(), &dev)?)?.sum_all()?
        + (&out * Tensor::from_vec(w2.clone(), out.shape(), &dev)?)?.sum_all()?)?;
    let gr = l.backward()?;
    let grad = |t: &Var| gr.get(t.as_tensor()).map(to_vec).expect("gradient");

    let gd = soft_moe_dispatch_geom(&m);
    let (ours_in, lse_d) = attention_fwd(&gd, &sv, &xv, &xv, None, None).expect("dispatch");
    assert!(max_abs_diff(&ours_in, &to_vec(&slots_in)) < 1e-5, "slot inputs");
    let gc = soft_moe_combine_geom(&m);
    let (ours_out, lse_c) = attention_fwd(&gc, &xv, &sv, &yv, None, None).expect("combine");
    assert!(max_abs_diff(&ours_out, &to_vec(&out)) < 1e-5, "combined output");

    let d = attention_bwd(&gd, &sv, &xv, &xv, None, None, &ours_in, &lse_d, &w1).expect("bwd");
    let c = attention_bwd(&gc, &xv, &sv, &yv, None, None, &ours_out, &lse_c, &w2).expect("bwd");
    let sum = |a: &[f32], b: &[f32], c: &[f32]| -> Vec<f32> {
        a.iter().zip(b).zip(c).map(|((x, y), z)| x + y + z).collect()
    };
    let dx = sum(&d.dk, &d.dv, &c.dq);
    let dslots: Vec<f32> = d.dq.iter().zip(&c.dk).map(|(a, b)| a + b).collect();
    assert!(max_abs_diff(&dx, &grad(&x)) < 1e-5, "dx");
    assert!(max_abs_diff(&dslots, &grad(&slots)) < 1e-5, "dslots");
    assert!(max_abs_diff(&c.dv, &grad(&y)) < 1e-5, "dy");
    Ok(())
}

#[test]
fn attention_rejects_mismatched_buffers() {
    let g = small_geom();
    let (q, k, v) = (values(g.q_len(), 1), values(g.k_len() - 1, 2), values(g.v_len(), 3));
    let err = attention_fwd(&g, &q, &k, &v, None, None).expect_err("short k");
    assert_eq!(err, KernelError::Length { name: "k", got: g.k_len() - 1, want: g.k_len() });
    let bad = AttentionGeom { mask_windows: 3, ..g };
    let k = values(g.k_len(), 2);
    let mask = vec![0.0; bad.mask_len()];
    assert!(matches!(
        attention_fwd(&bad, &q, &k, &v, None, Some(&mask)),
        Err(KernelError::Geometry(_))
    ));
}

#[test]
fn fully_masked_rows_give_zero_output_and_gradient() {
    let g = AttentionGeom { n_valid: 0, ..small_geom() };
    let (q, k, v) = (values(g.q_len(), 1), values(g.k_len(), 2), values(g.v_len(), 3));
    let (out, lse) = attention_fwd(&g, &q, &k, &v, None, None).expect("fwd");
    assert!(out.iter().all(|x| *x == 0.0));
    assert!(lse.iter().all(|x| *x == f32::NEG_INFINITY));
    let w = values(g.out_len(), 4);
    let gr = attention_bwd(&g, &q, &k, &v, None, None, &out, &lse, &w).expect("bwd");
    assert!(gr.dq.iter().chain(&gr.dk).chain(&gr.dv).all(|x| *x == 0.0));
}

/// Output size of a convolution along one axis.
fn conv_out(i: usize, k: usize, s: usize, p: usize, l: usize) -> usize {
    (i + 2 * p - l * (k - 1) - 1) / s + 1
}

/// `y[n, co, p] = Σ w[co, ci_g·K] cols[n, g·ci_g·K + …, p]` per group (plain loops).
#[allow(clippy::too_many_arguments)] // reason: one argument per size.
fn grouped_gemm(
    cols: &[f32],
    w: &[f32],
    n: usize,
    ci: usize,
    co: usize,
    groups: usize,
    taps: usize,
    positions: usize,
) -> Vec<f32> {
    let (ci_g, co_g) = (ci / groups, co / groups);
    let mut y = vec![0f32; n * co * positions];
    for b in 0..n {
        for o in 0..co {
            let g = o / co_g;
            for r in 0..ci_g * taps {
                let wv = w[o * ci_g * taps + r];
                let row = &cols[((b * ci + g * ci_g) * taps + r) * positions..][..positions];
                for (yv, c) in y[(b * co + o) * positions..][..positions].iter_mut().zip(row) {
                    *yv += wv * c;
                }
            }
        }
    }
    y
}

#[test]
fn im2col_gemm_matches_conv3d() -> candle::Result<()> {
    let dev = Device::Cpu;
    // (input, kernel, stride, padding, dilation, groups)
    let cases = [
        ([5, 6, 7], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], 1),
        ([6, 5, 4], [2, 3, 1], [2, 1, 2], [0, 1, 0], [1, 1, 1], 2),
        ([7, 7, 6], [3, 3, 2], [2, 2, 1], [2, 1, 1], [2, 1, 3], 2),
    ];
    for (input, kernel, stride, padding, dilation, groups) in cases {
        let (n, ci, co) = (2, 4, 6);
        let output: [usize; 3] = std::array::from_fn(|a| {
            conv_out(input[a], kernel[a], stride[a], padding[a], dilation[a])
        });
        let g = medseg_kernels::reference::Im2colGeom {
            volumes: n * ci,
            input,
            output,
            kernel,
            stride,
            padding,
            dilation,
        };
        let xv = values(g.x_len(), 41);
        let wv = values(co * ci / groups * g.taps(), 42);
        let cols = medseg_kernels::reference::im2col(&g, &xv).expect("im2col");
        let ours = grouped_gemm(&cols, &wv, n, ci, co, groups, g.taps(), g.positions());
        let x = Tensor::from_vec(xv.clone(), (n, ci, input[0], input[1], input[2]), &dev)?;
        let w =
            Tensor::from_vec(wv.clone(), (co, ci / groups, kernel[0], kernel[1], kernel[2]), &dev)?;
        let cfg = medseg_ops::Conv3dConfig { stride, padding, dilation, groups };
        let want = medseg_ops::conv3d(&x, &w, None, &cfg)?;
        assert!(max_abs_diff(&ours, &to_vec(&want)) < 1e-4, "conv {input:?} {kernel:?} {stride:?}");

        // col2im is the adjoint of im2col: <im2col(x), c> = <x, col2im(c)>.
        let c = values(g.cols_len(), 43);
        let back = medseg_kernels::reference::col2im(&g, &c).expect("col2im");
        let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| f64::from(a * b)).sum();
        let rhs: f64 = xv.iter().zip(&back).map(|(a, b)| f64::from(a * b)).sum();
        assert!((lhs - rhs).abs() < 1e-3 * (1.0 + lhs.abs()), "adjoint {lhs} vs {rhs}");
    }
    Ok(())
}

#[test]
fn gemm_col2im_matches_conv_transpose3d() -> candle::Result<()> {
    let dev = Device::Cpu;
    // Transposed conv of x [N, Ci, D…] = col2im of (wᵀ·x) with the geometry of the forward
    // convolution that maps the (larger) output back to x's grid.
    let (n, ci, co, groups) = (1, 4, 2, 2);
    let (xin, kernel, stride, padding, outpad) =
        ([3, 4, 2], [2, 3, 2], [2, 2, 1], [0, 1, 0], [1, 0, 0]);
    let out: [usize; 3] =
        std::array::from_fn(|a| (xin[a] - 1) * stride[a] - 2 * padding[a] + kernel[a] + outpad[a]);
    let g = medseg_kernels::reference::Im2colGeom {
        volumes: n * co,
        input: out,
        output: xin,
        kernel,
        stride,
        padding,
        dilation: [1; 3],
    };
    let xv = values(n * ci * xin.iter().product::<usize>(), 51);
    let wv = values(ci * co / groups * g.taps(), 52);
    // cols[n, (co, k), p] = Σ_ci w[ci, co_g, k] x[n, ci, p] per group.
    let (ci_g, co_g, taps, positions) = (ci / groups, co / groups, g.taps(), g.positions());
    let mut cols = vec![0f32; g.cols_len()];
    for gi in 0..groups {
        for o in 0..co_g {
            for k in 0..taps {
                for i in 0..ci_g {
                    let wv = wv[((gi * ci_g + i) * co_g + o) * taps + k];
                    let xr = &xv[(gi * ci_g + i) * positions..][..positions];
                    let row = &mut cols[((gi * co_g + o) * taps + k) * positions..][..positions];
                    for (r, x) in row.iter_mut().zip(xr) {
                        *r += wv * x;
                    }
                }
            }
        }
    }
    let ours = medseg_kernels::reference::col2im(&g, &cols).expect("col2im");
    let x = Tensor::from_vec(xv, (n, ci, xin[0], xin[1], xin[2]), &dev)?;
    let w = Tensor::from_vec(wv, (ci, co / groups, kernel[0], kernel[1], kernel[2]), &dev)?;
    let cfg = medseg_ops::ConvTranspose3dConfig {
        stride,
        padding,
        output_padding: outpad,
        dilation: [1; 3],
        groups,
    };
    let want = medseg_ops::conv_transpose3d(&x, &w, None, &cfg)?;
    assert_eq!(want.dims()[2..], out);
    assert!(max_abs_diff(&ours, &to_vec(&want)) < 1e-4);
    Ok(())
}
