//! The fused up-sampling + concatenation of `UnetrUpBlock` (`up_cat`) against its composed
//! reference (forward and gradients) and finite differences.
use candle::{DType, Device, Tensor, Var};
use medseg_models::unetr_blocks::{up_cat, up_cat_reference};
use medseg_ops::ConvTranspose3dConfig;
use medseg_testkit::{assert_close, finite_difference_grad, random_tensor};

/// `Σ out · weights` and the gradients of x, w, skip, for `f` = fused or reference.
fn grads(
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> candle::Result<Tensor>,
    inputs: &[Tensor; 3],
    weights: &Tensor,
) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<candle::Result<_>>()?;
    let out = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor())?;
    let g = (&out * weights)?.sum_all()?.backward()?;
    let gs = vars
        .iter()
        .map(|v| g.get(v.as_tensor()).cloned().ok_or_else(|| anyhow::anyhow!("no gradient")))
        .collect::<anyhow::Result<_>>()?;
    Ok((out, gs))
}

#[test]
fn up_cat_matches_reference_forward_and_gradients() -> anyhow::Result<()> {
    let cpu = &Device::Cpu;
    let cfg = ConvTranspose3dConfig::uniform(2);
    // batch 2 and unequal channel counts, odd spatial sizes
    let inputs = [
        random_tensor(&[2, 5, 3, 4, 5], 1, cpu)?,
        random_tensor(&[5, 3, 2, 2, 2], 2, cpu)?,
        random_tensor(&[2, 4, 6, 8, 10], 3, cpu)?,
    ];
    let weights = random_tensor(&[2, 7, 6, 8, 10], 4, cpu)?;
    let (fo, fg) = grads(|x, w, s| up_cat(x, w, s, &cfg), &inputs, &weights)?;
    let (ro, rg) = grads(|x, w, s| up_cat_reference(x, w, s, &cfg), &inputs, &weights)?;
    assert_close("up_cat forward", &fo, &ro, 1e-5, 1e-5);
    for (name, (f, r)) in ["dx", "dw", "dskip"].iter().zip(fg.iter().zip(&rg)) {
        assert_close(name, f, r, 1e-4, 1e-4);
    }
    Ok(())
}

#[test]
fn up_cat_gradients_match_finite_differences() -> anyhow::Result<()> {
    let cpu = &Device::Cpu;
    let cfg = ConvTranspose3dConfig::uniform(2);
    let inputs = [
        random_tensor(&[1, 2, 2, 1, 2], 5, cpu)?,
        random_tensor(&[2, 2, 2, 2, 2], 6, cpu)?,
        random_tensor(&[1, 1, 4, 2, 4], 7, cpu)?,
    ];
    let weights = random_tensor(&[1, 3, 4, 2, 4], 8, cpu)?;
    let (_, fused) = grads(|x, w, s| up_cat(x, w, s, &cfg), &inputs, &weights)?;
    let w64 = weights.to_dtype(DType::F64)?;
    for i in 0..3 {
        // f64 inputs take the composed path; the gradient under test is the fused op's.
        let f = |t: &Tensor| {
            let mut a: Vec<Tensor> =
                inputs.iter().map(|x| x.to_dtype(DType::F64)).collect::<candle::Result<_>>()?;
            a[i] = t.clone();
            (up_cat(&a[0], &a[1], &a[2], &cfg)? * &w64)?.sum_all()
        };
        // up_cat is linear in each input, so a unit step is exact; the transposed convolution
        // computes in f32 even for f64 tensors, and a small step would amplify its rounding.
        let fd = finite_difference_grad(f, &inputs[i], 1.0)?;
        assert_close(&format!("input {i}"), &fused[i].to_dtype(DType::F64)?, &fd, 1e-5, 1e-5);
    }
    Ok(())
}
