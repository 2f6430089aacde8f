//! conv3d / conv_transpose3d: fast vs reference, finite differences, validation.
use candle::{DType, Tensor};
use medseg_ops::{
    Conv3dConfig, ConvTranspose3dConfig, Precision, conv_transpose3d, conv_transpose3d_reference,
    conv3d, conv3d_reference, with_precision,
};

use crate::{check_fast_vs_reference, check_finite_differences, rand};

/// (name, input shape, weight shape, config, with bias)
type Case<C> = (&'static str, [usize; 5], [usize; 5], C, bool);

fn conv_cases() -> Vec<Case<Conv3dConfig>> {
    let c = Conv3dConfig::default();
    vec![
        ("k3 s1 p1", [2, 3, 6, 5, 7], [4, 3, 3, 3, 3], Conv3dConfig::uniform(1, 1), false),
        ("k1", [1, 5, 4, 4, 4], [6, 5, 1, 1, 1], c, true),
        ("k2 s2 patch embed", [1, 2, 8, 6, 4], [6, 2, 2, 2, 2], Conv3dConfig::uniform(2, 0), true),
        (
            "mixed stride/pad/dilation, groups 2",
            [2, 4, 7, 6, 9],
            [6, 2, 3, 2, 3],
            Conv3dConfig { stride: [2, 1, 3], padding: [1, 0, 2], dilation: [1, 2, 2], groups: 2 },
            true,
        ),
        (
            "large tile (W > tile rows)",
            [1, 2, 3, 40, 70],
            [3, 2, 3, 3, 3],
            Conv3dConfig::uniform(1, 1),
            false,
        ),
    ]
}

#[test]
fn conv3d_fast_matches_reference() {
    for (i, (name, xs, ws, cfg, with_bias)) in conv_cases().into_iter().enumerate() {
        let s = 100 * i as u64;
        let mut inputs = vec![rand(&xs, s), rand(&ws, s + 1)];
        if with_bias {
            inputs.push(rand(&[ws[0]], s + 2));
        }
        let fast = |t: &[Tensor]| conv3d(&t[0], &t[1], t.get(2), &cfg);
        let reference = |t: &[Tensor]| conv3d_reference(&t[0], &t[1], t.get(2), &cfg);
        check_fast_vs_reference(name, &fast, &reference, &inputs, 2e-5);
    }
}

/// Geometries the direct AVX-512 kernel serves on CPUs that have it (W stride 1, one group, rows of
/// ≥ 16 outputs): partial vectors, tiles spanning rows, W padding masks, dilation, D/H stride, 1×1.
fn direct_cases() -> Vec<Case<Conv3dConfig>> {
    vec![
        (
            "direct k3 p1, W 37",
            [2, 3, 3, 4, 37],
            [5, 3, 3, 3, 3],
            Conv3dConfig::uniform(1, 1),
            false,
        ),
        (
            "direct k3 p1, W 16, 9 co",
            [1, 4, 2, 3, 16],
            [9, 4, 3, 3, 3],
            Conv3dConfig::uniform(1, 1),
            true,
        ),
        (
            "direct dilation 2, pad 2, D/H stride 2",
            [1, 2, 6, 5, 20],
            [3, 2, 3, 2, 3],
            Conv3dConfig { stride: [2, 2, 1], padding: [2, 1, 2], dilation: [2, 1, 2], groups: 1 },
            true,
        ),
        ("direct k1, W 24", [1, 6, 2, 2, 24], [7, 6, 1, 1, 1], Conv3dConfig::default(), true),
        (
            "direct k3 no pad, W 18",
            [1, 2, 3, 3, 20],
            [4, 2, 3, 3, 3],
            Conv3dConfig::default(),
            false,
        ),
    ]
}

#[test]
fn conv3d_direct_geometries_match_reference() {
    for (i, (name, xs, ws, cfg, with_bias)) in direct_cases().into_iter().enumerate() {
        let s = 300 + 10 * i as u64;
        let mut inputs = vec![rand(&xs, s), rand(&ws, s + 1)];
        if with_bias {
            inputs.push(rand(&[ws[0]], s + 2));
        }
        let fast = |t: &[Tensor]| conv3d(&t[0], &t[1], t.get(2), &cfg);
        let reference = |t: &[Tensor]| conv3d_reference(&t[0], &t[1], t.get(2), &cfg);
        check_fast_vs_reference(name, &fast, &reference, &inputs, 2e-5);
    }
    // Finite differences through the direct kernel (forward, and the data gradient, which runs
    // as a forward convolution with the flipped weight).
    let cfg = Conv3dConfig::uniform(1, 1);
    let inputs = [rand(&[1, 2, 2, 2, 17], 41), rand(&[2, 2, 3, 3, 3], 42), rand(&[2], 43)];
    let fast = |t: &[Tensor]| conv3d(&t[0], &t[1], t.get(2), &cfg);
    check_finite_differences("conv3d direct f32", &fast, &inputs, DType::F32, 0.5, 1e-3);
}

/// bf16 products (`Precision::Bf16`). A bf16 × bf16 product is exact in f32, so with both
/// operands rounded to bf16 beforehand (candle's cast: round to nearest even, as the kernel
/// rounds) the kernel must equal the f32 reference up to f32 summation order (2e-5, as the f32
/// fast path); against the unrounded operands the only extra error is that rounding (≤ 2⁻⁹
/// relative per operand, summed over Ci·K terms of random sign: ≤ 1e-2 of the output scale here).
/// Without AVX-512 BF16 the setting must leave the f32 result untouched.
#[test]
fn conv3d_bf16_products_match_reference() {
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    // The direct kernel's geometries, and (conv_cases) the tiled im2col path's: rows shorter
    // than 16, strides, groups.
    let mut cases = direct_cases();
    cases.extend(conv_cases());
    cases.push((
        "bf16 odd channels",
        [1, 5, 3, 3, 20],
        [6, 5, 3, 3, 3],
        Conv3dConfig::uniform(1, 1),
        true,
    ));
    for (i, (name, xs, ws, cfg, with_bias)) in cases.into_iter().enumerate() {
        let s = 500 + 10 * i as u64;
        let (x, w) = (rand(&xs, s), rand(&ws, s + 1));
        let b = with_bias.then(|| rand(&[ws[0]], s + 2));
        let y = with_precision(Precision::Bf16, || conv3d(&x, &w, b.as_ref(), &cfg)).unwrap();
        if !medseg_ops::bf16_dot_available() {
            let y32 = conv3d(&x, &w, b.as_ref(), &cfg).unwrap();
            medseg_testkit::assert_close(name, &y, &y32, 0.0, 0.0);
            continue;
        }
        let on_rounded = conv3d_reference(&round(&x), &round(&w), b.as_ref(), &cfg).unwrap();
        medseg_testkit::assert_close_on_device(
            &format!("{name} (rounded operands)"),
            &y,
            &on_rounded,
            2e-5,
        );
        let exact = conv3d_reference(&x, &w, b.as_ref(), &cfg).unwrap();
        medseg_testkit::assert_close_on_device(&format!("{name} (f32 operands)"), &y, &exact, 1e-2);
    }
}

fn transpose_cases() -> Vec<Case<ConvTranspose3dConfig>> {
    vec![
        ("k2 s2 up", [2, 4, 3, 4, 2], [4, 3, 2, 2, 2], ConvTranspose3dConfig::uniform(2), false),
        (
            "k3 s2 p1 op1 bias",
            [1, 3, 3, 2, 4],
            [3, 2, 3, 3, 3],
            ConvTranspose3dConfig {
                stride: [2; 3],
                padding: [1; 3],
                output_padding: [1, 0, 1],
                ..Default::default()
            },
            true,
        ),
        (
            "groups 2 dilation 2 stride (1,2,3)",
            [1, 4, 3, 3, 2],
            [4, 3, 2, 3, 2],
            ConvTranspose3dConfig {
                stride: [1, 2, 3],
                padding: [0, 1, 0],
                output_padding: [0, 1, 2],
                dilation: [2, 1, 2],
                groups: 2,
            },
            true,
        ),
    ]
}

#[test]
fn conv_transpose3d_fast_matches_reference() {
    for (i, (name, xs, ws, cfg, with_bias)) in transpose_cases().into_iter().enumerate() {
        let s = 1000 + 100 * i as u64;
        let mut inputs = vec![rand(&xs, s), rand(&ws, s + 1)];
        if with_bias {
            inputs.push(rand(&[ws[1] * cfg.groups], s + 2));
        }
        let fast = |t: &[Tensor]| conv_transpose3d(&t[0], &t[1], t.get(2), &cfg);
        let reference = |t: &[Tensor]| conv_transpose3d_reference(&t[0], &t[1], t.get(2), &cfg);
        check_fast_vs_reference(name, &fast, &reference, &inputs, 2e-5);
    }
}

#[test]
fn conv_gradients_match_finite_differences() {
    let cfg =
        Conv3dConfig { stride: [2, 1, 1], padding: [1, 1, 0], dilation: [1, 1, 2], groups: 1 };
    let inputs = [rand(&[1, 2, 4, 3, 5], 1), rand(&[2, 2, 3, 2, 2], 2), rand(&[2], 3)];
    let reference = |t: &[Tensor]| conv3d_reference(&t[0], &t[1], t.get(2), &cfg);
    check_finite_differences("conv3d reference f64", &reference, &inputs, DType::F64, 1e-4, 1e-7);
    // The convolution is linear in each input, so f32 differences with a large step are exact up
    // to rounding.
    let fast = |t: &[Tensor]| conv3d(&t[0], &t[1], t.get(2), &cfg);
    check_finite_differences("conv3d fast f32", &fast, &inputs, DType::F32, 0.5, 1e-3);
    // The im2col + GEMM path (the one other devices run; here its CPU kernel).
    let im2col = |t: &[Tensor]| medseg_ops::conv3d_im2col(&t[0], &t[1], t.get(2), &cfg);
    check_finite_differences("conv3d im2col f32", &im2col, &inputs, DType::F32, 0.5, 1e-3);

    let tcfg = ConvTranspose3dConfig {
        stride: [2, 1, 2],
        padding: [0, 1, 1],
        output_padding: [1, 0, 0],
        ..Default::default()
    };
    let inputs = [rand(&[1, 2, 2, 3, 3], 4), rand(&[2, 2, 2, 3, 3], 5), rand(&[2], 6)];
    let reference = |t: &[Tensor]| conv_transpose3d_reference(&t[0], &t[1], t.get(2), &tcfg);
    check_finite_differences("conv_t reference f64", &reference, &inputs, DType::F64, 1e-4, 1e-7);
    let fast = |t: &[Tensor]| conv_transpose3d(&t[0], &t[1], t.get(2), &tcfg);
    check_finite_differences("conv_t fast f32", &fast, &inputs, DType::F32, 0.5, 1e-3);
    let col2im = |t: &[Tensor]| medseg_ops::conv_transpose3d_col2im(&t[0], &t[1], t.get(2), &tcfg);
    check_finite_differences("conv_t col2im f32", &col2im, &inputs, DType::F32, 0.5, 1e-3);
}

#[test]
fn conv3d_keeps_half_dtypes() {
    let x = rand(&[1, 2, 4, 4, 4], 9);
    let w = rand(&[3, 2, 3, 3, 3], 10);
    let cfg = Conv3dConfig::uniform(1, 1);
    let y32 = conv3d(&x, &w, None, &cfg).unwrap();
    for dt in [DType::BF16, DType::F16, DType::F64] {
        let y = conv3d(&x.to_dtype(dt).unwrap(), &w.to_dtype(dt).unwrap(), None, &cfg).unwrap();
        assert_eq!(y.dtype(), dt);
        medseg_testkit::assert_close(
            "half conv",
            &y.to_dtype(DType::F32).unwrap(),
            &y32,
            0.1,
            0.02,
        );
    }
}

#[test]
fn conv_rejects_bad_arguments() {
    let x = rand(&[1, 4, 4, 4, 4], 1);
    let err = |r: candle::Result<Tensor>| r.expect_err("must fail").to_string();
    let c = Conv3dConfig::default();
    assert!(
        err(conv3d(&rand(&[4, 4, 4, 4], 1), &rand(&[2, 4, 1, 1, 1], 2), None, &c)).contains("5-D")
    );
    assert!(err(conv3d(&x, &rand(&[2, 3, 1, 1, 1], 2), None, &c)).contains("groups"));
    let g3 = Conv3dConfig { groups: 3, ..c };
    assert!(err(conv3d(&x, &rand(&[3, 1, 1, 1, 1], 2), None, &g3)).contains("divisible"));
    assert!(err(conv3d(&x, &rand(&[2, 4, 5, 1, 1], 2), None, &c)).contains("smaller than"));
    assert!(err(conv3d(&x, &rand(&[2, 4, 1, 1, 1], 2), Some(&rand(&[3], 3)), &c)).contains("bias"));
    let s0 = Conv3dConfig { stride: [0, 1, 1], ..c };
    assert!(err(conv3d(&x, &rand(&[2, 4, 1, 1, 1], 2), None, &s0)).contains("≥ 1"));
    let t =
        ConvTranspose3dConfig { output_padding: [2, 0, 0], ..ConvTranspose3dConfig::uniform(2) };
    assert!(
        err(conv_transpose3d(&x, &rand(&[4, 2, 2, 2, 2], 2), None, &t)).contains("output_padding")
    );
    assert!(
        err(conv_transpose3d(&x, &rand(&[3, 2, 2, 2, 2], 2), None, &t)).contains("weight"),
        "transposed weight must be [Ci, Co/g, k…]"
    );
}

/// At the channel counts of the models (reductions longer than one 512-long chunk), the direct
/// kernel agrees with the im2col + GEMM path (it uses `gemm`'s k-chunks, so on CPUs where `gemm`
/// blocks k by 512 the two agree bit for bit; the tolerance covers other cache geometries).
#[test]
fn conv3d_direct_matches_im2col_path_at_model_widths() {
    for (ci, co, sz) in [(24, 12, 20), (48, 24, 16), (96, 48, 16), (20, 8, 17)] {
        let cfg = Conv3dConfig::uniform(1, 1);
        let x = rand(&[1, ci, 4, 5, sz], ci as u64);
        let w = rand(&[co, ci, 3, 3, 3], co as u64);
        let direct = conv3d(&x, &w, None, &cfg).unwrap();
        let im2col = medseg_ops::conv3d_im2col(&x, &w, None, &cfg).unwrap();
        medseg_testkit::assert_close(&format!("{ci}->{co}"), &direct, &im2col, 1e-5, 1e-5);
    }
}
