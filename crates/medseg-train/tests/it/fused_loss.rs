//! The one-node DiceCE loss against its composed reference (value and gradient) for every
//! option, with out-of-range labels, and against finite differences.
use candle::{DType, Device, Tensor, Var};
use medseg_testkit::{assert_close, finite_difference_grad, random_tensor};
use medseg_train::DiceCeConfig;
use medseg_train::loss::{dice_ce_loss, dice_ce_loss_reference};

/// Labels `[B, 1, spatial…]` in 0..c, plus one voxel outside (it has no one-hot class).
fn labels(b: usize, spatial: &[usize], c: usize) -> anyhow::Result<Tensor> {
    let n: usize = spatial.iter().product();
    let mut v: Vec<f32> = (0..b * n).map(|i| ((i * 7 + i / 3) % c) as f32).collect();
    v[1] = c as f32;
    let mut shape = vec![b, 1];
    shape.extend_from_slice(spatial);
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn value_and_grad(
    f: impl Fn(&Tensor) -> candle::Result<Tensor>,
    logits: &Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    let v = Var::from_tensor(logits)?;
    let loss = f(v.as_tensor())?;
    let g = loss.backward()?;
    let grad = g.get(v.as_tensor()).cloned().ok_or_else(|| anyhow::anyhow!("no gradient"))?;
    Ok((loss.reshape(1)?, grad))
}

#[test]
fn fused_dice_ce_matches_reference_for_every_option() -> anyhow::Result<()> {
    let logits = (random_tensor(&[2, 4, 5, 3, 6], 1, &Device::Cpu)? * 3.0)?;
    let y = labels(2, &[5, 3, 6], 4)?;
    let base = DiceCeConfig::monai();
    let cases = [
        ("default", base.clone()),
        ("no background", DiceCeConfig { include_background: false, ..base.clone() }),
        ("batch", DiceCeConfig { batch: true, ..base.clone() }),
        ("squared", DiceCeConfig { squared_pred: true, ..base.clone() }),
        ("lambdas", DiceCeConfig { lambda_dice: 0.3, lambda_ce: 1.7, ..base.clone() }),
        (
            "smooth, batch, no background",
            DiceCeConfig {
                smooth_nr: 0.5,
                smooth_dr: 2.0,
                batch: true,
                include_background: false,
                ..base.clone()
            },
        ),
    ];
    for (name, cfg) in cases {
        let (fv, fg) = value_and_grad(|z| dice_ce_loss(z, &y, &cfg).map_err(err), &logits)?;
        let (rv, rg) =
            value_and_grad(|z| dice_ce_loss_reference(z, &y, &cfg).map_err(err), &logits)?;
        assert_close(&format!("{name}: loss"), &fv, &rv, 1e-6, 1e-5);
        assert_close(&format!("{name}: gradient"), &fg, &rg, 1e-7, 1e-4);
    }
    Ok(())
}

fn err(e: medseg_train::Error) -> candle::Error {
    candle::Error::Msg(e.to_string())
}

#[test]
fn fused_dice_ce_gradient_matches_finite_differences() -> anyhow::Result<()> {
    let logits = random_tensor(&[1, 3, 2, 2, 3], 2, &Device::Cpu)?;
    let y = labels(1, &[2, 2, 3], 3)?;
    let cfg = DiceCeConfig { squared_pred: true, ..DiceCeConfig::monai() };
    let (_, fused) = value_and_grad(|z| dice_ce_loss(z, &y, &cfg).map_err(err), &logits)?;
    // f64 logits take the composed path: the gradient under test is the fused op's.
    let fd = finite_difference_grad(|z| dice_ce_loss(z, &y, &cfg).map_err(err), &logits, 1e-5)?;
    assert_close(
        "fused dice ce vs finite differences",
        &fused.to_dtype(DType::F64)?,
        &fd,
        1e-6,
        1e-4,
    );
    Ok(())
}
