//! Tests against `tests/golden/train.safetensors` (made by `tools/golden/train_golden.py`).
use std::collections::HashMap;

use candle::{DType, Device, Tensor, Var};
use medseg_ops::{Conv3dConfig, conv3d};
use medseg_testkit::assert_close;
use medseg_train::{
    AdamW, AdamWConfig, BlendMode, DiceCeConfig, Grads, SlidingWindowConfig, cross_entropy,
    dice_ce_loss, dice_loss, schedule::warmup_cosine, sliding_window_inference,
};
use serde_json::Value;

struct Golden {
    t: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/train.safetensors");
    let bytes = std::fs::read(path).expect("golden file");
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
    let meta = md.metadata().clone().unwrap_or_default();
    let t = candle::safetensors::load(path, &Device::Cpu).expect("golden tensors");
    Golden { t, meta }
}

impl Golden {
    fn get(&self, k: &str) -> Tensor {
        self.t.get(k).unwrap_or_else(|| panic!("golden tensor {k} missing")).clone()
    }
    fn args(&self, case: &str) -> Value {
        serde_json::from_str(&self.meta[case]).expect("json")
    }
}

fn loss_cfg(a: &Value) -> DiceCeConfig {
    let mut c = DiceCeConfig::monai();
    if let Some(v) = a.get("include_background") {
        c.include_background = v.as_bool().expect("bool");
    }
    if let Some(v) = a.get("batch") {
        c.batch = v.as_bool().expect("bool");
    }
    if let Some(v) = a.get("squared_pred") {
        c.squared_pred = v.as_bool().expect("bool");
    }
    for (k, slot) in [
        ("smooth_nr", &mut c.smooth_nr),
        ("smooth_dr", &mut c.smooth_dr),
        ("lambda_dice", &mut c.lambda_dice),
        ("lambda_ce", &mut c.lambda_ce),
    ] {
        if let Some(v) = a.get(k) {
            *slot = v.as_f64().expect("f64");
        }
    }
    c
}

#[test]
fn losses_match_monai_value_and_gradient() {
    let g = golden();
    for case in [
        "dicece_default",
        "dicece_no_bg",
        "dicece_lambdas",
        "dicece_batch",
        "dicece_squared",
        "dice_only",
        "ce_only",
    ] {
        let a = g.args(case);
        let cfg = loss_cfg(&a);
        let logits = Var::from_tensor(&g.get(&format!("{case}.logits"))).expect("var");
        let labels = g.get(&format!("{case}.labels")).to_dtype(DType::U32).expect("u32");
        let loss = match a["kind"].as_str().expect("kind") {
            "dicece" => dice_ce_loss(logits.as_tensor(), &labels, &cfg),
            "dice" => dice_loss(logits.as_tensor(), &labels, &cfg),
            _ => cross_entropy(logits.as_tensor(), &labels),
        }
        .expect("loss");
        let grads = loss.backward().expect("backward");
        let grad = grads.get(logits.as_tensor()).expect("grad");
        assert_close(
            case,
            &loss.reshape(1).expect("r"),
            &g.get(&format!("{case}.loss")),
            1e-5,
            1e-5,
        );
        assert_close(case, grad, &g.get(&format!("{case}.grad")), 1e-7, 1e-4);
    }
}

#[test]
fn sliding_window_matches_monai() {
    let g = golden();
    for case in [
        "sw_gauss_025",
        "sw_gauss_050",
        "sw_const_050",
        "sw_small_volume",
        "sw_batch2",
        "sw_overlap_07",
    ] {
        let a = g.args(case);
        let roi: Vec<usize> = a["roi"]
            .as_array()
            .expect("roi")
            .iter()
            .map(|v| v.as_u64().expect("u") as usize)
            .collect();
        let cfg = SlidingWindowConfig {
            roi: [roi[0], roi[1], roi[2]],
            sw_batch_size: a["sw_batch"].as_u64().expect("sw") as usize,
            overlap: a["overlap"].as_f64().expect("overlap"),
            mode: if a["mode"] == "gaussian" { BlendMode::Gaussian } else { BlendMode::Constant },
            sigma_scale: 0.125,
        };
        let x = g.get(&format!("{case}.x"));
        let w = g.get(&format!("{case}.w"));
        let b = g.get(&format!("{case}.b"));
        let mut calls = 0;
        let y = sliding_window_inference(&x, &cfg, |t| {
            calls += 1;
            assert!(t.dim(0).expect("n") <= cfg.sw_batch_size);
            let conv = conv3d(t, &w, Some(&b), &Conv3dConfig::uniform(1, 1))?;
            // + the per-window channel-summed mean, broadcast
            let m = t.mean_keepdim(4)?.mean_keepdim(3)?.mean_keepdim(2)?.sum_keepdim(1)?;
            Ok(conv.broadcast_add(&m)?)
        })
        .expect("sliding window");
        assert!(calls > 0);
        assert_close(case, &y, &g.get(&format!("{case}.y")), 1e-5, 1e-5);
    }
}

#[test]
fn schedule_matches_research_lr_scheduler() {
    let g = golden();
    for case in ["sched_btcv_like", "sched_start_eta"] {
        let a = g.args(case);
        let lrs: Vec<f64> =
            g.get(&format!("{case}.lr")).to_dtype(DType::F64).expect("f64").to_vec1().expect("v");
        let (base, w, max) = (
            a["base"].as_f64().expect("b"),
            a["warmup"].as_u64().expect("w"),
            a["max"].as_u64().expect("m"),
        );
        let (start, eta) = (a["start"].as_f64().expect("s"), a["eta_min"].as_f64().expect("e"));
        for (t, want) in lrs.iter().enumerate() {
            let got = warmup_cosine(base, t as u64, w, max, start, eta);
            assert!(
                (got - want).abs() <= 1e-12 + 1e-9 * want.abs(),
                "{case} t={t}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn adamw_param_groups_match_torch() {
    let g = golden();
    let a = Var::from_tensor(&g.get("adamw.a0")).expect("a");
    // a rank-1 tensor named like a bias: no-decay group
    let b = Var::from_tensor(&g.get("adamw.b0")).expect("b");
    let cfg = AdamWConfig::new(1e-2, 0.05, [0.9, 0.999], 1e-8);
    let mut opt =
        AdamW::new(vec![("layer.weight".into(), a.clone()), ("layer.bias".into(), b.clone())], cfg)
            .expect("opt");
    let (decay, no_decay) = opt.groups();
    assert_eq!((decay, no_decay), (vec!["layer.weight"], vec!["layer.bias"]));
    for i in 0..3 {
        let mut grads = Grads::new();
        grads.insert(&a, g.get(&format!("adamw.ga{i}")));
        grads.insert(&b, g.get(&format!("adamw.gb{i}")));
        opt.step(&grads).expect("step");
        assert_close("adamw a", a.as_tensor(), &g.get(&format!("adamw.a{}", i + 1)), 1e-6, 1e-5);
        assert_close("adamw b", b.as_tensor(), &g.get(&format!("adamw.b{}", i + 1)), 1e-6, 1e-5);
    }
}

#[test]
fn clip_grad_norm_matches_torch() {
    let g = golden();
    let v1 = Var::zeros((5, 3), DType::F32, &Device::Cpu).expect("v");
    let v2 = Var::zeros(7, DType::F32, &Device::Cpu).expect("v");
    let mut grads = Grads::new();
    grads.insert(&v1, g.get("clip.g1"));
    grads.insert(&v2, g.get("clip.g2"));
    let norm = grads.clip_norm(1.5).expect("clip");
    let want: Vec<f32> = g.get("clip.norm").to_vec1().expect("n");
    assert!((norm - f64::from(want[0])).abs() < 1e-5, "{norm} vs {}", want[0]);
    assert_close("clip 1", grads.get(&v1).expect("g"), &g.get("clip.c1"), 1e-6, 1e-5);
    assert_close("clip 2", grads.get(&v2).expect("g"), &g.get("clip.c2"), 1e-6, 1e-5);
}

#[test]
fn encoder_lr_scale_scales_only_the_swin_encoder() {
    let g = golden();
    let run = |scale: f64, lr: f64| {
        let enc = Var::from_tensor(&g.get("adamw.a0")).expect("enc");
        let dec = Var::from_tensor(&g.get("adamw.a0")).expect("dec");
        let cfg = AdamWConfig {
            encoder_lr_scale: scale,
            ..AdamWConfig::new(lr, 0.05, [0.9, 0.999], 1e-8)
        };
        let mut opt = AdamW::new(
            vec![("swinViT.layers1.0.w".into(), enc.clone()), ("decoder1.w".into(), dec.clone())],
            cfg,
        )
        .expect("opt");
        for i in 0..3 {
            let mut grads = Grads::new();
            grads.insert(&enc, g.get(&format!("adamw.ga{i}")));
            grads.insert(&dec, g.get(&format!("adamw.ga{i}")));
            opt.step(&grads).expect("step");
        }
        (enc.as_tensor().clone(), dec.as_tensor().clone())
    };
    let (enc, dec) = run(0.25, 1e-2);
    // the decoder follows torch at the full lr; the encoder follows AdamW at a quarter of it
    assert_close("decoder", &dec, &g.get("adamw.a3"), 1e-6, 1e-5);
    let (quarter, _) = run(1.0, 2.5e-3);
    assert_close("encoder", &enc, &quarter, 1e-7, 0.0);
    assert!(
        (&enc - &dec).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>()).expect("diff") > 1e-4,
        "the encoder must move less than the decoder"
    );
    // 0 freezes the encoder, weight decay included
    let (frozen, _) = run(0.0, 1e-2);
    assert_close("frozen", &frozen, &g.get("adamw.a0"), 0.0, 0.0);
}
