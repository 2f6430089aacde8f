//! The gradient-coverage helper catches candle ops that cut the graph, and passes for ours.
use candle::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_ops::{Conv3dConfig, conv3d, gelu, instance_norm3d, layer_norm, softmax_last_dim};
use medseg_testkit::{assert_all_vars_have_grad, vars_without_grad};

use crate::rand;

const RANDN: candle_nn::Init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.5 };

/// conv → gelu → instance norm (affine) → channels-last layer norm → softmax.
fn tiny_net(vb: &VarBuilder, x: &Tensor, use_candle_layer_norm: bool) -> candle::Result<Tensor> {
    let w = vb.get_with_hints((4, 2, 3, 3, 3), "conv.weight", RANDN)?;
    let b = vb.get_with_hints(4, "conv.bias", RANDN)?;
    let gamma = vb.get_with_hints(4, "in.weight", RANDN)?;
    let beta = vb.get_with_hints(4, "in.bias", RANDN)?;
    let y = conv3d(x, &w, Some(&b), &Conv3dConfig::uniform(1, 1))?;
    // The bias must come before a non-linearity: instance norm alone would cancel it exactly.
    let y = instance_norm3d(&gelu(&y)?, Some(&gamma), Some(&beta), 1e-5)?;
    let y = y.permute((0, 2, 3, 4, 1))?; // [N, C, D, H, W] -> [N, D, H, W, C]
    let y = if use_candle_layer_norm {
        let ln = candle_nn::layer_norm(4, 1e-5, vb.pp("ln"))?;
        ln.forward(&y.contiguous()?)?
    } else {
        let lw = vb.get_with_hints(4, "ln.weight", candle_nn::Init::Const(1.0))?;
        let lb = vb.get_with_hints(4, "ln.bias", candle_nn::Init::Const(0.0))?;
        layer_norm(&y, Some(&lw), Some(&lb), 1e-5)?
    };
    softmax_last_dim(&y)
}

fn grads(use_candle_layer_norm: bool) -> (VarMap, candle::backprop::GradStore) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let x = rand(&[1, 2, 4, 4, 4], 1);
    let y = tiny_net(&vb, &x, use_candle_layer_norm).unwrap();
    let r = rand(y.dims(), 2);
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (varmap, g)
}

#[test]
fn every_parameter_gets_a_gradient() {
    let (varmap, g) = grads(false);
    assert_all_vars_have_grad(&varmap, &g);
}

#[test]
fn candle_fast_layer_norm_is_caught() {
    let (varmap, g) = grads(true);
    let missing = vars_without_grad(&varmap, &g);
    // candle's LayerNorm fast path cuts the graph: its own parameters and everything upstream of
    // it (conv, instance norm) lose their gradients, and the helper must say so.
    for name in ["conv.weight", "in.weight", "ln.weight", "ln.bias"] {
        assert!(missing.iter().any(|m| m.starts_with(name)), "{name} not reported: {missing:?}");
    }
}
