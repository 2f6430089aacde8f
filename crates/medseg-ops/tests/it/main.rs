//! Integration tests of medseg-ops: fast path vs reference (forward and gradients), gradients vs
//! finite differences, PyTorch/MONAI goldens, argument validation, and every op on every device
//! present against its CPU reference (`device`).

mod activation;
mod attention;
mod conv;
mod device;
mod golden;
mod grad_coverage;
mod interpolate;
mod linear;
mod norm;
mod window;

use candle::{DType, Device, Result, Tensor, Var};
use medseg_testkit::{assert_close, finite_difference_grad, random_tensor};

/// An op under test: inputs in, output out.
pub type OpFn<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Output and gradients of `Σ f(inputs) ⊙ r` for a fixed random `r`, w.r.t. every input.
pub fn output_and_grads(f: OpFn, inputs: &[Tensor], seed: u64) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let r = random_tensor(y.dims(), seed, y.device()).unwrap().to_dtype(y.dtype()).unwrap();
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).expect("input without gradient").clone())
        .collect();
    (y, g)
}

/// Fast path against reference: outputs and all input gradients, within `atol`/`rtol`.
pub fn check_fast_vs_reference(
    what: &str,
    fast: OpFn,
    reference: OpFn,
    inputs: &[Tensor],
    tol: f64,
) {
    let (yf, gf) = output_and_grads(fast, inputs, 7);
    let (yr, gr) = output_and_grads(reference, inputs, 7);
    assert_close(&format!("{what} forward"), &yf, &yr, tol, tol);
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        assert_close(&format!("{what} grad of input {i}"), a, b, tol, tol);
    }
}

/// Autograd gradients of `f` against central finite differences of `Σ f ⊙ r`, input by input.
/// `f` runs in `dtype` (f64 for references, f32 for fast paths).
pub fn check_finite_differences(
    what: &str,
    f: OpFn,
    inputs: &[Tensor],
    dtype: DType,
    eps: f64,
    tol: f64,
) {
    let inputs: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
    let (y, grads) = output_and_grads(f, &inputs, 11);
    let r = random_tensor(y.dims(), 11, y.device()).unwrap().to_dtype(DType::F64).unwrap();
    for (i, g) in grads.iter().enumerate() {
        let loss_of = |xi: &Tensor| -> Result<Tensor> {
            let mut args = inputs.clone();
            args[i] = xi.to_dtype(dtype)?;
            f(&args)?.to_dtype(DType::F64)?.mul(&r)?.sum_all()
        };
        let fd = finite_difference_grad(loss_of, &inputs[i], eps).unwrap();
        assert_close(&format!("{what} finite differences of input {i}"), g, &fd, tol, tol);
    }
}

pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    random_tensor(shape, seed, &Device::Cpu).unwrap()
}
