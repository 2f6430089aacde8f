//! Finite-difference checks of every SSL loss, and gradient coverage of the whole `SslHead`.
use candle::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use medseg_models::{MergeOrder, SslHead, SslHeadConfig};
use medseg_pretrain::{PretrainConfig, contrastive_loss, cross_entropy, l1_loss, ssl_step};
use medseg_testkit::{
    assert_all_vars_have_grad, assert_close, finite_difference_grad, random_tensor,
};
use rand::SeedableRng;

fn fd_check(name: &str, f: impl Fn(&Tensor) -> candle::Result<Tensor>, x: &Tensor) {
    let v = Var::from_tensor(x).expect("var");
    let l = f(v.as_tensor()).expect("forward");
    let g = l.backward().expect("backward");
    let got = g.get(v.as_tensor()).expect("gradient").clone();
    let fd = finite_difference_grad(&f, x, 1e-6).expect("fd");
    assert_close(name, &got, &fd, 1e-7, 1e-6);
}

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    random_tensor(shape, seed, &Device::Cpu).and_then(|t| t.to_dtype(DType::F64)).expect("tensor")
}

fn m(e: medseg_pretrain::Error) -> candle::Error {
    candle::Error::Msg(e.to_string())
}

#[test]
fn l1_gradient_matches_finite_differences() {
    let t = rnd(&[2, 1, 3, 3, 3], 2);
    fd_check("l1", |x| l1_loss(x, &t).map_err(m), &rnd(&[2, 1, 3, 3, 3], 1));
}

#[test]
fn rotation_ce_gradient_matches_finite_differences() {
    fd_check("ce", |x| cross_entropy(x, &[0, 3, 1, 2, 2, 0]).map_err(m), &rnd(&[6, 4], 3));
}

#[test]
fn contrastive_gradients_match_finite_differences() {
    let z2 = rnd(&[3, 5], 5);
    fd_check("contrast z1", |x| contrastive_loss(x, &z2, 0.5).map_err(m), &rnd(&[3, 5], 4));
    let z1 = rnd(&[3, 5], 4);
    fd_check("contrast z2", |x| contrastive_loss(&z1, x, 0.5).map_err(m), &z2);
}

#[test]
fn contrastive_loss_of_identical_views_is_lowest() {
    let z = rnd(&[4, 8], 9);
    let same = contrastive_loss(&z, &z, 0.5).and_then(|t| Ok(t.to_scalar::<f64>()?)).expect("loss");
    let other = contrastive_loss(&z, &rnd(&[4, 8], 10), 0.5)
        .and_then(|t| Ok(t.to_scalar::<f64>()?))
        .expect("loss");
    assert!(same < other, "{same} vs {other}");
    // two crops: the denominator holds the positive and 2 negatives, so the loss is ≥ 0 and ≤ ln 3 + 4
    assert!(same > 0.0 && other < 3f64.ln() + 4.0);
}

#[test]
fn every_ssl_head_variable_gets_a_gradient_from_the_ssl_step() {
    let varmap = VarMap::new();
    let cfg = SslHeadConfig {
        in_channels: 1,
        feature_size: 12,
        dropout_path_rate: 0.0,
        merge_order: MergeOrder::Legacy,
    };
    let vb = medseg_run::SeededVarMap::var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let model = SslHead::new(&cfg, vb).expect("model");
    let mut pcfg = PretrainConfig::preset("phantom").expect("preset");
    pcfg.model = cfg;
    // two crops of 64×32×32 (N = 2, so the contrastive term has negatives)
    let x = random_tensor(&[2, 1, 64, 32, 32], 1, &Device::Cpu)
        .and_then(|t| t.affine(0.2, 0.5))
        .expect("x");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let v = ssl_step(&model, &x, &pcfg, &mut rng, true, &Device::Cpu).expect("step");
    let total = v.loss.total.to_scalar::<f32>().expect("loss");
    assert!(total.is_finite() && total > 0.0);
    let g = v.loss.total.backward().expect("backward");
    assert_all_vars_have_grad(&varmap, &g);
}
