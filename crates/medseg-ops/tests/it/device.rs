//! Every op on every device present against its reference on the CPU, forward and gradients
//! (`medseg_testkit::test_device!`: one body per test, a `_cpu` instance always and a `_cuda`
//! instance in `cuda` builds, which prints a skip line without a device). On the CPU the bodies
//! check the fast CPU kernels (and the im2col path) against the composed references; on CUDA the
//! kernels of `kernels/*.cu` and the composed CUDA paths, in f32 and bf16.
use candle::{DType, Device, Result, Tensor, Var};
use medseg_ops::{
    Conv3dConfig, ConvTranspose3dConfig, InterpolationMode, Resize, conv_transpose3d,
    conv_transpose3d_col2im, conv_transpose3d_reference, conv3d, conv3d_im2col, conv3d_reference,
    fused_attention, soft_moe_combine, soft_moe_dispatch, window_attention, window_attention_qkv,
    window_attention_qkv_reference,
};
use medseg_testkit::{
    assert_close_on_device, device_tolerance, random_tensor, random_values, test_device,
};

/// The dtypes an op is checked in on `dev`: f32, and bf16 where the device has bf16 kernels.
fn dtypes(dev: &Device) -> Vec<DType> {
    if dev.is_cuda() { vec![DType::F32, DType::BF16] } else { vec![DType::F32] }
}

/// A shifted-window style mask (0 / −100) `[nw, n, n]` on the CPU.
fn mask(nw: usize, n: usize) -> Result<Tensor> {
    let v: Vec<f32> = (0..nw * n * n)
        .map(|t| if (t / n + 2 * (t % n) + t / (n * n)).is_multiple_of(5) { -100.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (nw, n, n), &Device::Cpu)
}

/// `f(inputs)` on `dev` in `dtype`, and the gradients of `Σ r ⊙ f` w.r.t. every input (`r` fixed
/// random); the inputs are CPU f32 tensors.
fn run(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    dev: &Device,
    dtype: DType,
) -> Result<Vec<Tensor>> {
    let vars = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?.to_dtype(dtype)?))
        .collect::<Result<Vec<_>>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let r = random_tensor(y.dims(), 99, dev)?;
    let grads = y.to_dtype(DType::F32)?.mul(&r)?.sum_all()?.backward()?;
    let mut res = vec![y];
    for v in &vars {
        match grads.get(v.as_tensor()) {
            Some(g) => res.push(g.clone()),
            None => candle::bail!("an input got no gradient"),
        }
    }
    Ok(res)
}

/// `fast` on `dev` (every dtype of [`dtypes`]) against `reference` on the CPU in f32.
fn check(
    what: &str,
    fast: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    reference: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    dev: &Device,
) -> Result<()> {
    let want = run(reference, inputs, &Device::Cpu, DType::F32)?;
    for dtype in dtypes(dev) {
        let got = run(fast, inputs, dev, dtype)?;
        let tol = device_tolerance(dev, dtype);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let name = if i == 0 { "output".to_string() } else { format!("grad of input {i}") };
            assert_close_on_device(&format!("{what} {dtype:?} {name}"), g, w, tol);
        }
    }
    Ok(())
}

fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
    random_tensor(shape, seed, &Device::Cpu)
}

/// The fused op on split `q, k, v` against the composed `window_attention`, with bias and mask;
/// the larger shape is a 7×7×7 window (343 tokens), head dim 32: Swin UNETR stage 0.
fn fused_window_attention_matches_composed(dev: &Device) -> Result<()> {
    for (bw, h, n, hd, nw) in [(4, 3, 27, 8, 2), (2, 1, 343, 32, 2)] {
        let m = mask(nw, n)?;
        let scale = (hd as f64).powf(-0.5);
        let inputs = [
            rand(&[bw, h, n, hd], 1)?,
            rand(&[bw, h, n, hd], 2)?,
            rand(&[bw, h, n, hd], 3)?,
            rand(&[h, n, n], 4)?,
        ];
        let fast = |t: &[Tensor]| {
            let m = m.to_device(t[0].device())?.to_dtype(t[0].dtype())?;
            fused_attention(&t[0], &t[1], &t[2], scale, Some(&t[3]), Some(&m), None)
        };
        let reference =
            |t: &[Tensor]| window_attention(&t[0], &t[1], &t[2], scale, Some(&t[3]), Some(&m));
        check(&format!("fused attention N {n}"), &fast, &reference, &inputs, dev)?;
        if dev.is_cuda() {
            // The composed path on the device (candle's kernels) agrees as well.
            let composed = |t: &[Tensor]| {
                let m = m.to_device(t[0].device())?.to_dtype(t[0].dtype())?;
                window_attention(&t[0], &t[1], &t[2], scale, Some(&t[3]), Some(&m))
            };
            check(&format!("composed attention N {n}"), &composed, &reference, &inputs, dev)?;
        }
    }
    Ok(())
}
test_device!(
    fused_window_attention_matches_composed,
    fused_window_attention_matches_composed_cpu,
    fused_window_attention_matches_composed_cuda
);

/// `window_attention_qkv` (MONAI's raw qkv layout: read in place on CPU, split for the CUDA
/// kernels) against its composed reference, gradients of `qkv` and `bias`.
fn qkv_window_attention_matches_reference(dev: &Device) -> Result<()> {
    let (bw, n, heads, hd, nw) = (4, 27, 2, 8, 2);
    let m = mask(nw, n)?;
    let scale = (hd as f64).powf(-0.5);
    let inputs = [rand(&[bw, n, 3 * heads * hd], 81)?, rand(&[heads, n, n], 82)?];
    let fast = |t: &[Tensor]| {
        let m = m.to_device(t[0].device())?.to_dtype(t[0].dtype())?;
        window_attention_qkv(&t[0], heads, scale, Some(&t[1]), Some(&m))
    };
    let reference =
        |t: &[Tensor]| window_attention_qkv_reference(&t[0], heads, scale, Some(&t[1]), Some(&m));
    check("window_attention_qkv", &fast, &reference, &inputs, dev)
}
test_device!(
    qkv_window_attention_matches_reference,
    qkv_window_attention_matches_reference_cpu,
    qkv_window_attention_matches_reference_cuda
);

/// The composed Soft MoE of medseg-models (`dispatch_combine` + two matmuls) on
/// `[x, slots, y]` with `n_valid` real tokens: `[slot inputs ‖ combined output]` flat.
fn moe_composed(t: &[Tensor], n_valid: usize) -> Result<Tensor> {
    let (x, slots, y) = (&t[0], &t[1], &t[2]);
    let n = x.dim(1)?;
    let pad: Vec<f32> = (0..n).map(|i| if i < n_valid { 0.0 } else { -f32::MAX }).collect();
    let pad = Tensor::from_vec(pad, (1, n, 1), x.device())?;
    let logits = x.matmul(&slots.t()?)?.broadcast_add(&pad)?;
    let dispatch_t = medseg_ops::softmax_last_dim(&logits.transpose(1, 2)?.contiguous()?)?;
    let combine = medseg_ops::softmax_last_dim(&logits)?;
    Tensor::cat(&[dispatch_t.matmul(x)?.flatten_all()?, combine.matmul(y)?.flatten_all()?], 0)
}

/// `soft_moe_dispatch` / `soft_moe_combine` (padding excluded by `n_valid`) against the composed
/// Soft MoE; the larger case has `d = 96`, more than one 32-column chunk of the CUDA kernels.
fn soft_moe_matches_composed(dev: &Device) -> Result<()> {
    for (b, n, n_valid, m, d) in [(2, 20, 17, 8, 6), (2, 300, 297, 64, 96)] {
        let mut xv = random_values(b * n * d, 31);
        for bi in 0..b {
            xv[(bi * n + n_valid) * d..(bi + 1) * n * d].iter_mut().for_each(|x| *x = 0.0);
        }
        let inputs = [
            Tensor::from_vec(xv, (b, n, d), &Device::Cpu)?,
            rand(&[b, m, d], 32)?,
            rand(&[b, m, d], 33)?,
        ];
        let fast = |t: &[Tensor]| {
            let si = soft_moe_dispatch(&t[0], &t[1], n_valid)?;
            let out = soft_moe_combine(&t[0], &t[1], &t[2])?;
            Tensor::cat(&[si.flatten_all()?, out.flatten_all()?], 0)
        };
        let reference = |t: &[Tensor]| moe_composed(t, n_valid);
        check(&format!("soft MoE n {n}"), &fast, &reference, &inputs, dev)?;
    }
    Ok(())
}
test_device!(
    soft_moe_matches_composed,
    soft_moe_matches_composed_cpu,
    soft_moe_matches_composed_cuda
);

/// `conv3d` / `conv_transpose3d` (the CPU kernels on CPU, im2col + GEMM elsewhere) and the
/// im2col path itself against the composed references: strides, padding, dilation, groups,
/// output padding; gradients of `x`, `w` and `bias`.
fn convolutions_match_reference(dev: &Device) -> Result<()> {
    let cfg =
        Conv3dConfig { stride: [2, 1, 1], padding: [1, 1, 0], dilation: [1, 2, 1], groups: 2 };
    let inputs = [rand(&[2, 4, 6, 5, 7], 61)?, rand(&[6, 2, 3, 3, 2], 62)?, rand(&[6], 63)?];
    let reference = |t: &[Tensor]| conv3d_reference(&t[0], &t[1], Some(&t[2]), &cfg);
    let fast = |t: &[Tensor]| conv3d(&t[0], &t[1], Some(&t[2]), &cfg);
    check("conv3d", &fast, &reference, &inputs, dev)?;
    let im2col = |t: &[Tensor]| conv3d_im2col(&t[0], &t[1], Some(&t[2]), &cfg);
    check("conv3d_im2col", &im2col, &reference, &inputs, dev)?;

    let cfg = ConvTranspose3dConfig {
        stride: [2, 1, 2],
        padding: [0, 1, 0],
        output_padding: [1, 0, 0],
        dilation: [1; 3],
        groups: 2,
    };
    let inputs = [rand(&[2, 4, 3, 4, 3], 64)?, rand(&[4, 3, 2, 3, 2], 65)?, rand(&[6], 66)?];
    let reference = |t: &[Tensor]| conv_transpose3d_reference(&t[0], &t[1], Some(&t[2]), &cfg);
    let fast = |t: &[Tensor]| conv_transpose3d(&t[0], &t[1], Some(&t[2]), &cfg);
    check("conv_transpose3d", &fast, &reference, &inputs, dev)?;
    let col2im = |t: &[Tensor]| conv_transpose3d_col2im(&t[0], &t[1], Some(&t[2]), &cfg);
    check("conv_transpose3d_col2im", &col2im, &reference, &inputs, dev)
}
test_device!(
    convolutions_match_reference,
    convolutions_match_reference_cpu,
    convolutions_match_reference_cuda
);

/// Norms, softmax, GELU, leaky ReLU and resize against their references (the CPU kernels on
/// CPU, the composed paths in f32 elsewhere).
fn pointwise_ops_match_reference(dev: &Device) -> Result<()> {
    type Op = fn(&Tensor) -> Result<Tensor>;
    let ops: [(&str, Op, Op); 6] = [
        ("softmax_last_dim", medseg_ops::softmax_last_dim, medseg_ops::softmax_last_dim_reference),
        ("gelu", medseg_ops::gelu, medseg_ops::gelu_reference),
        (
            "leaky_relu",
            |x| medseg_ops::leaky_relu(x, 0.01),
            |x| medseg_ops::leaky_relu_reference(x, 0.01),
        ),
        (
            "instance_norm3d",
            |x| medseg_ops::instance_norm3d(x, None, None, 1e-5),
            |x| medseg_ops::instance_norm3d_reference(x, None, None, 1e-5),
        ),
        (
            "layer_norm",
            |x| medseg_ops::layer_norm(x, None, None, 1e-5),
            |x| medseg_ops::layer_norm_reference(x, None, None, 1e-5),
        ),
        (
            "interpolate3d",
            |x| medseg_ops::interpolate3d(x, Resize::Size([7, 5, 9]), InterpolationMode::Trilinear),
            |x| {
                medseg_ops::interpolate3d_reference(
                    x,
                    Resize::Size([7, 5, 9]),
                    InterpolationMode::Trilinear,
                )
            },
        ),
    ];
    let x = [rand(&[2, 3, 4, 5, 6], 71)?];
    for (name, fast, reference) in ops {
        check(name, &|t: &[Tensor]| fast(&t[0]), &|t: &[Tensor]| reference(&t[0]), &x, dev)?;
    }
    Ok(())
}
test_device!(
    pointwise_ops_match_reference,
    pointwise_ops_match_reference_cpu,
    pointwise_ops_match_reference_cuda
);
