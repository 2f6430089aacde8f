//! Tests of the `cuda` feature. The fused attention op runs on CPU through the kernels' Rust twin,
//! so its graph and gradients are checked here against the composed paths on any machine; the
//! CUDA comparisons (f32 within 1e-4, bf16 within 2e-2 of the CPU reference) print a reason and
//! return when no CUDA device is present.
use candle::{DType, Device, Tensor, Var};

use crate::{fused_attention, soft_moe_combine, soft_moe_dispatch, window_attention};

/// f32 tolerance of a CUDA result against the CPU reference.
const TOL_F32: f32 = 1e-4;
/// bf16 tolerance of a CUDA result against the CPU reference.
const TOL_BF16: f32 = 2e-2;

/// The first CUDA device, or `None` after printing why the test is skipped.
fn cuda_device(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let reason = e.to_string();
            let reason = reason.lines().next().unwrap_or("unknown error");
            println!("{test}: skipped, no CUDA device ({reason})");
            None
        }
    }
}

use medseg_testkit::random_values as values;

fn rand(shape: &[usize], seed: u64, dev: &Device) -> candle::Result<Tensor> {
    Tensor::from_vec(values(shape.iter().product(), seed), shape, dev)
}

/// A shifted-window style mask (0 / −100) `[nw, n, n]`.
fn mask(nw: usize, n: usize, dev: &Device) -> candle::Result<Tensor> {
    let v: Vec<f32> = (0..nw * n * n)
        .map(|t| if (t / n + 2 * (t % n) + t / (n * n)) % 5 == 0 { -100.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (nw, n, n), dev)
}

fn max_diff(a: &Tensor, b: &Tensor) -> candle::Result<f32> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Forward output and the gradients of `Σ w ⊙ out` w.r.t. `q, k, v, bias` of one attention path.
type Attn =
    fn(&Tensor, &Tensor, &Tensor, f64, Option<&Tensor>, Option<&Tensor>) -> candle::Result<Tensor>;

fn run_attention(
    f: Attn,
    inputs: &[Tensor; 4],
    mask: &Tensor,
    w: &Tensor,
    dev: &Device,
    dtype: DType,
) -> candle::Result<Vec<Tensor>> {
    let vars = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?.to_dtype(dtype)?))
        .collect::<candle::Result<Vec<_>>>()?;
    let mask = mask.to_device(dev)?.to_dtype(dtype)?;
    let scale = (inputs[0].dim(3)? as f64).powf(-0.5);
    let out = f(&vars[0], &vars[1], &vars[2], scale, Some(vars[3].as_tensor()), Some(&mask))?;
    let l = out.to_dtype(DType::F32)?.broadcast_mul(&w.to_device(dev)?)?.sum_all()?;
    let g = l.backward()?;
    let mut res = vec![out];
    for v in &vars {
        match g.get(v.as_tensor()) {
            Some(t) => res.push(t.clone()),
            None => candle::bail!("missing gradient"),
        }
    }
    Ok(res)
}

fn window_inputs(bw: usize, h: usize, n: usize, hd: usize) -> candle::Result<[Tensor; 4]> {
    let cpu = Device::Cpu;
    Ok([
        rand(&[bw, h, n, hd], 1, &cpu)?,
        rand(&[bw, h, n, hd], 2, &cpu)?,
        rand(&[bw, h, n, hd], 3, &cpu)?,
        rand(&[h, n, n], 4, &cpu)?,
    ])
}

fn fused_window(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> candle::Result<Tensor> {
    fused_attention(q, k, v, scale, bias, mask, None)
}

#[test]
fn fused_window_attention_on_cpu_matches_composed() -> candle::Result<()> {
    let cpu = Device::Cpu;
    let inputs = window_inputs(4, 3, 27, 8)?;
    let m = mask(2, 27, &cpu)?;
    let w = rand(&[4, 3, 27, 8], 5, &cpu)?;
    let want = run_attention(window_attention, &inputs, &m, &w, &cpu, DType::F32)?;
    let got = run_attention(fused_window, &inputs, &m, &w, &cpu, DType::F32)?;
    for (name, (a, b)) in ["out", "dq", "dk", "dv", "dbias"].iter().zip(want.iter().zip(&got)) {
        let d = max_diff(a, b)?;
        assert!(d < 1e-5, "{name}: {d}");
    }
    Ok(())
}

/// The composed Soft MoE of medseg-models (`dispatch_combine` + two matmuls) on `x`, `slots`,
/// `y`, with `n_valid` real tokens; returns `(slot inputs, combined output)`.
fn moe_composed(
    x: &Tensor,
    slots: &Tensor,
    y: &Tensor,
    n_valid: usize,
) -> candle::Result<(Tensor, Tensor)> {
    let n = x.dim(1)?;
    let pad: Vec<f32> = (0..n).map(|t| if t < n_valid { 0.0 } else { -f32::MAX }).collect();
    let pad = Tensor::from_vec(pad, (1, n, 1), x.device())?;
    let logits = x.matmul(&slots.t()?)?.broadcast_add(&pad)?;
    let dispatch_t = crate::softmax_last_dim(&logits.transpose(1, 2)?.contiguous()?)?;
    let combine = crate::softmax_last_dim(&logits)?;
    Ok((dispatch_t.matmul(x)?, combine.matmul(y)?))
}

fn moe_fused(
    x: &Tensor,
    slots: &Tensor,
    y: &Tensor,
    n_valid: usize,
) -> candle::Result<(Tensor, Tensor)> {
    Ok((soft_moe_dispatch(x, slots, n_valid)?, soft_moe_combine(x, slots, y)?))
}

type Moe = fn(&Tensor, &Tensor, &Tensor, usize) -> candle::Result<(Tensor, Tensor)>;

fn run_moe(
    f: Moe,
    dev: &Device,
    dtype: DType,
    sizes: (usize, usize, usize, usize, usize),
) -> candle::Result<Vec<Tensor>> {
    let (b, n, n_valid, m, d) = sizes;
    let cpu = Device::Cpu;
    let mut xv = values(b * n * d, 31);
    for bi in 0..b {
        xv[(bi * n + n_valid) * d..(bi + 1) * n * d].iter_mut().for_each(|x| *x = 0.0);
    }
    let x =
        Var::from_tensor(&Tensor::from_vec(xv, (b, n, d), &cpu)?.to_device(dev)?.to_dtype(dtype)?)?;
    let slots = Var::from_tensor(&rand(&[b, m, d], 32, &cpu)?.to_device(dev)?.to_dtype(dtype)?)?;
    let y = Var::from_tensor(&rand(&[b, m, d], 33, &cpu)?.to_device(dev)?.to_dtype(dtype)?)?;
    let (si, out) = f(&x, &slots, &y, n_valid)?;
    let w1 = rand(&[b, m, d], 34, &cpu)?.to_device(dev)?;
    let w2 = rand(&[b, n, d], 35, &cpu)?.to_device(dev)?;
    let l = (si.to_dtype(DType::F32)?.mul(&w1)?.sum_all()?
        + out.to_dtype(DType::F32)?.mul(&w2)?.sum_all()?)?;
    let g = l.backward()?;
    let mut res = vec![si, out];
    for v in [&x, &slots, &y] {
        match g.get(v.as_tensor()) {
            Some(t) => res.push(t.clone()),
            None => candle::bail!("missing gradient"),
        }
    }
    Ok(res)
}

#[test]
fn fused_soft_moe_on_cpu_matches_composed() -> candle::Result<()> {
    let sizes = (2, 20, 17, 8, 6);
    let want = run_moe(moe_composed, &Device::Cpu, DType::F32, sizes)?;
    let got = run_moe(moe_fused, &Device::Cpu, DType::F32, sizes)?;
    for (name, (a, b)) in
        ["slots_in", "out", "dx", "dslots", "dy"].iter().zip(want.iter().zip(&got))
    {
        let d = max_diff(a, b)?;
        assert!(d < 1e-5, "{name}: {d}");
    }
    Ok(())
}

#[test]
fn fused_attention_rejects_bad_shapes() -> candle::Result<()> {
    let cpu = Device::Cpu;
    let q = rand(&[2, 1, 4, 3], 1, &cpu)?;
    let k = rand(&[2, 1, 5, 2], 2, &cpu)?;
    let err = fused_attention(&q, &k, &k, 1.0, None, None, None).expect_err("d mismatch");
    assert!(err.to_string().contains("fused_attention"), "{err}");
    let k = rand(&[2, 1, 5, 3], 2, &cpu)?;
    let err = fused_attention(&q, &k, &k, 1.0, None, None, Some(6)).expect_err("n_valid");
    assert!(err.to_string().contains("n_valid"), "{err}");
    Ok(())
}

fn compare_on_cuda(
    test: &str,
    want: &[Tensor],
    got: &[Tensor],
    names: &[&str],
    tol: f32,
) -> candle::Result<()> {
    for (name, (a, b)) in names.iter().zip(want.iter().zip(got)) {
        let d = max_diff(a, b)?;
        // Relative to the reference's magnitude for gradients that can be large.
        let scale =
            a.to_dtype(DType::F32)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
        assert!(d / scale < tol, "{test} {name}: max diff {d} (scale {scale}) above {tol}");
    }
    Ok(())
}

#[test]
fn cuda_window_attention_matches_cpu_reference() -> candle::Result<()> {
    let test = "cuda_window_attention_matches_cpu_reference";
    let Some(dev) = cuda_device(test) else { return Ok(()) };
    // A 7×7×7 window (343 tokens), head dim 32, two masks: the Swin UNETR stage-0 shape.
    let inputs = window_inputs(4, 3, 343, 32)?;
    let m = mask(2, 343, &Device::Cpu)?;
    let w = rand(&[4, 3, 343, 32], 5, &Device::Cpu)?;
    let want = run_attention(window_attention, &inputs, &m, &w, &Device::Cpu, DType::F32)?;
    let names = ["out", "dq", "dk", "dv", "dbias"];
    let got = run_attention(fused_window, &inputs, &m, &w, &dev, DType::F32)?;
    compare_on_cuda(test, &want, &got, &names, TOL_F32)?;
    let got = run_attention(fused_window, &inputs, &m, &w, &dev, DType::BF16)?;
    compare_on_cuda(test, &want, &got, &names, TOL_BF16)?;
    // The composed path on CUDA (candle's kernels) agrees as well.
    let got = run_attention(window_attention, &inputs, &m, &w, &dev, DType::F32)?;
    compare_on_cuda(test, &want, &got, &names, TOL_F32)
}

#[test]
fn cuda_soft_moe_matches_cpu_reference() -> candle::Result<()> {
    let test = "cuda_soft_moe_matches_cpu_reference";
    let Some(dev) = cuda_device(test) else { return Ok(()) };
    // Dimension 96 > one 32-column chunk; 300 tokens of which 297 real; 64 slots.
    let sizes = (2, 300, 297, 64, 96);
    let want = run_moe(moe_composed, &Device::Cpu, DType::F32, sizes)?;
    let names = ["slots_in", "out", "dx", "dslots", "dy"];
    let got = run_moe(moe_fused, &dev, DType::F32, sizes)?;
    compare_on_cuda(test, &want, &got, &names, TOL_F32)?;
    let got = run_moe(moe_fused, &dev, DType::BF16, sizes)?;
    compare_on_cuda(test, &want, &got, &names, TOL_BF16)
}

/// `conv3d` and `conv_transpose3d` outputs and their gradients w.r.t. `x`, `w`, `bias`.
fn run_conv(
    transposed: bool,
    im2col: bool,
    dev: &Device,
    dtype: DType,
) -> candle::Result<Vec<Tensor>> {
    let cpu = Device::Cpu;
    let (x_shape, w_shape): (&[usize], &[usize]) = if transposed {
        (&[2, 4, 3, 4, 3], &[4, 3, 2, 3, 2])
    } else {
        (&[2, 4, 6, 5, 7], &[6, 2, 3, 3, 2])
    };
    let var = |shape: &[usize], seed| -> candle::Result<Var> {
        Var::from_tensor(&rand(shape, seed, &cpu)?.to_device(dev)?.to_dtype(dtype)?)
    };
    let (x, w) = (var(x_shape, 61)?, var(w_shape, 62)?);
    let bias = var(&[6], 63)?;
    let y = if transposed {
        let cfg = crate::ConvTranspose3dConfig {
            stride: [2, 1, 2],
            padding: [0, 1, 0],
            output_padding: [1, 0, 0],
            dilation: [1; 3],
            groups: 2,
        };
        if im2col {
            crate::conv_transpose3d_col2im(&x, &w, Some(bias.as_tensor()), &cfg)?
        } else {
            crate::conv_transpose3d(&x, &w, Some(bias.as_tensor()), &cfg)?
        }
    } else {
        let cfg = crate::Conv3dConfig {
            stride: [2, 1, 1],
            padding: [1, 1, 0],
            dilation: [1, 2, 1],
            groups: 2,
        };
        if im2col {
            crate::conv3d_im2col(&x, &w, Some(bias.as_tensor()), &cfg)?
        } else {
            crate::conv3d(&x, &w, Some(bias.as_tensor()), &cfg)?
        }
    };
    let wt = Tensor::from_vec(values(y.elem_count(), 64), y.dims(), &cpu)?.to_device(dev)?;
    let l = y.to_dtype(DType::F32)?.mul(&wt)?.sum_all()?;
    let g = l.backward()?;
    let mut res = vec![y];
    for v in [&x, &w, &bias] {
        match g.get(v.as_tensor()) {
            Some(t) => res.push(t.clone()),
            None => candle::bail!("missing gradient"),
        }
    }
    Ok(res)
}

#[test]
fn im2col_conv_on_cpu_matches_conv_kernels() -> candle::Result<()> {
    for transposed in [false, true] {
        let want = run_conv(transposed, false, &Device::Cpu, DType::F32)?;
        let got = run_conv(transposed, true, &Device::Cpu, DType::F32)?;
        for (name, (a, b)) in ["y", "dx", "dw", "dbias"].iter().zip(want.iter().zip(&got)) {
            assert_eq!(a.dims(), b.dims(), "{name}");
            let d = max_diff(a, b)?;
            assert!(d < 1e-4, "transposed={transposed} {name}: {d}");
        }
    }
    Ok(())
}

#[test]
fn cuda_convolutions_match_cpu_reference() -> candle::Result<()> {
    let test = "cuda_convolutions_match_cpu_reference";
    let Some(dev) = cuda_device(test) else { return Ok(()) };
    let names = ["y", "dx", "dw", "dbias"];
    for transposed in [false, true] {
        let want = run_conv(transposed, false, &Device::Cpu, DType::F32)?;
        let got = run_conv(transposed, false, &dev, DType::F32)?;
        compare_on_cuda(test, &want, &got, &names, TOL_F32)?;
        let got = run_conv(transposed, false, &dev, DType::BF16)?;
        compare_on_cuda(test, &want, &got, &names, TOL_BF16)?;
    }
    Ok(())
}

#[test]
fn cuda_pointwise_ops_match_cpu_reference() -> candle::Result<()> {
    let test = "cuda_pointwise_ops_match_cpu_reference";
    let Some(dev) = cuda_device(test) else { return Ok(()) };
    type Op = fn(&Tensor) -> candle::Result<Tensor>;
    let ops: [(&str, Op); 6] = [
        ("softmax_last_dim", |x| crate::softmax_last_dim(x)),
        ("gelu", |x| crate::gelu(x)),
        ("leaky_relu", |x| crate::leaky_relu(x, 0.01)),
        ("instance_norm3d", |x| crate::instance_norm3d(x, None, None, 1e-5)),
        ("layer_norm", |x| crate::layer_norm(x, None, None, 1e-5)),
        ("interpolate3d", |x| {
            crate::interpolate3d(
                x,
                crate::Resize::Size([7, 5, 9]),
                crate::InterpolationMode::Trilinear,
            )
        }),
    ];
    let cpu = Device::Cpu;
    let x0 = rand(&[2, 3, 4, 5, 6], 71, &cpu)?;
    for (name, op) in ops {
        for (dtype, tol) in [(DType::F32, TOL_F32), (DType::BF16, TOL_BF16)] {
            let run = |dev: &Device, dtype: DType| -> candle::Result<Vec<Tensor>> {
                let x = Var::from_tensor(&x0.to_device(dev)?.to_dtype(dtype)?)?;
                let y = op(&x)?;
                let w =
                    Tensor::from_vec(values(y.elem_count(), 72), y.dims(), &cpu)?.to_device(dev)?;
                let g = y.to_dtype(DType::F32)?.mul(&w)?.sum_all()?.backward()?;
                match g.get(x.as_tensor()) {
                    Some(dx) => Ok(vec![y, dx.clone()]),
                    None => candle::bail!("{name}: missing gradient"),
                }
            };
            let want = run(&cpu, DType::F32)?;
            let got = run(&dev, dtype)?;
            compare_on_cuda(&format!("{test} {name}"), &want, &got, &["y", "dx"], tol)?;
        }
    }
    Ok(())
}

/// `window_attention_qkv` (MONAI's raw qkv layout) and the gradients of `qkv` and `bias`.
fn run_qkv(fused: bool, dev: &Device, dtype: DType) -> candle::Result<Vec<Tensor>> {
    let cpu = Device::Cpu;
    let (bw, n, heads, hd, nw) = (4, 27, 2, 8, 2);
    let qkv = Var::from_tensor(
        &rand(&[bw, n, 3 * heads * hd], 81, &cpu)?.to_device(dev)?.to_dtype(dtype)?,
    )?;
    let bias = Var::from_tensor(&rand(&[heads, n, n], 82, &cpu)?.to_device(dev)?.to_dtype(dtype)?)?;
    let m = mask(nw, n, &cpu)?.to_device(dev)?.to_dtype(dtype)?;
    let scale = (hd as f64).powf(-0.5);
    let y = if fused {
        crate::window_attention_qkv_fused(&qkv, heads, scale, Some(bias.as_tensor()), Some(&m))?
    } else {
        crate::window_attention_qkv(&qkv, heads, scale, Some(bias.as_tensor()), Some(&m))?
    };
    let w = Tensor::from_vec(values(y.elem_count(), 83), y.dims(), &cpu)?.to_device(dev)?;
    let g = y.to_dtype(DType::F32)?.mul(&w)?.sum_all()?.backward()?;
    let mut res = vec![y];
    for v in [&qkv, &bias] {
        match g.get(v.as_tensor()) {
            Some(t) => res.push(t.clone()),
            None => candle::bail!("missing gradient"),
        }
    }
    Ok(res)
}

#[test]
fn fused_qkv_window_attention_on_cpu_matches_cpu_kernel() -> candle::Result<()> {
    let want = run_qkv(false, &Device::Cpu, DType::F32)?;
    let got = run_qkv(true, &Device::Cpu, DType::F32)?;
    for (name, (a, b)) in ["y", "dqkv", "dbias"].iter().zip(want.iter().zip(&got)) {
        let d = max_diff(a, b)?;
        assert!(d < 1e-5, "{name}: {d}");
    }
    Ok(())
}

#[test]
fn cuda_qkv_window_attention_matches_cpu_reference() -> candle::Result<()> {
    let test = "cuda_qkv_window_attention_matches_cpu_reference";
    let Some(dev) = cuda_device(test) else { return Ok(()) };
    let want = run_qkv(false, &Device::Cpu, DType::F32)?;
    // `window_attention_qkv` dispatches to the fused kernels on CUDA.
    let got = run_qkv(false, &dev, DType::F32)?;
    compare_on_cuda(test, &want, &got, &["y", "dqkv", "dbias"], TOL_F32)?;
    let got = run_qkv(false, &dev, DType::BF16)?;
    compare_on_cuda(test, &want, &got, &["y", "dqkv", "dbias"], TOL_BF16)
}
