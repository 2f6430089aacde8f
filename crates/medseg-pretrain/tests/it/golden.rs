//! Exact comparison with the research code: the Python reference records every random number it
//! draws and [`Replay`] feeds the same numbers to the Rust ops.
use std::collections::HashMap;
use std::path::PathBuf;

use candle::{DType, Device, Tensor, Var};
use medseg_pretrain::{
    CutoutConfig, LossWeights, Replay, aug_rand, patch_rand_drop, rot_rand, ssl_loss,
};

fn golden() -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ssl.safetensors");
    candle::safetensors::load(&p, &Device::Cpu)
        .expect("golden file (run tools/golden/ssl_golden.py)")
}

fn f32s(g: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    g[k].flatten_all().and_then(|t| t.to_vec1::<f32>()).expect(k)
}

fn replay(g: &HashMap<String, Tensor>, prefix: &str) -> Replay {
    let u = g[&format!("{prefix}.uniforms")].to_vec1::<f64>().expect("uniforms");
    let i = g[&format!("{prefix}.ints")].to_vec1::<i64>().expect("ints");
    let n = f32s(g, &format!("{prefix}.normals"));
    Replay {
        uniforms: u.into(),
        ints: i.into_iter().map(|v| v as usize).collect(),
        normals: n.into(),
    }
}

fn assert_consumed(r: &Replay) {
    assert!(
        r.uniforms.is_empty() && r.ints.is_empty() && r.normals.is_empty(),
        "draws left over: {} uniforms, {} ints, {} normals",
        r.uniforms.len(),
        r.ints.len(),
        r.normals.len()
    );
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn rot_rand_equals_torch_rot90_over_dims_2_3() {
    let g = golden();
    let mut r = replay(&g, "rot");
    let x = f32s(&g, "rot.input");
    let (out, labels) = rot_rand(&x, 5, 2, [3, 6, 6], &mut r).expect("rot_rand");
    assert_consumed(&r);
    assert_eq!(out, f32s(&g, "rot.output"));
    let want: Vec<u32> =
        g["rot.labels"].to_vec1::<i64>().expect("labels").into_iter().map(|v| v as u32).collect();
    assert_eq!(labels, want);
    assert!(
        want.iter().collect::<std::collections::BTreeSet<_>>().len() > 1,
        "golden covers several k"
    );
}

#[test]
fn aug_rand_equals_the_research_code() {
    let g = golden();
    let mut r = replay(&g, "aug");
    let x = f32s(&g, "aug.input");
    let out =
        aug_rand(&x, 3, 1, [24, 20, 28], &CutoutConfig::research(), &mut r).expect("aug_rand");
    assert_consumed(&r);
    let want = f32s(&g, "aug.output");
    assert!(max_diff(&out, &want) <= 1e-6, "max diff {}", max_diff(&out, &want));
    assert_ne!(out, x, "the golden changes the input");
}

#[test]
fn patch_rand_drop_with_a_partner_equals_the_research_code() {
    let g = golden();
    let mut r = replay(&g, "drop");
    let mut x = f32s(&g, "drop.input");
    let p = f32s(&g, "drop.partner");
    patch_rand_drop(&mut x, 2, [24, 20, 28], Some(&p), &CutoutConfig::research(), &mut r)
        .expect("drop");
    assert_consumed(&r);
    assert_eq!(x, f32s(&g, "drop.output"));
}

#[test]
fn ssl_losses_and_gradients_equal_the_research_code() {
    let g = golden();
    for tag in ["loss", "loss_w"] {
        let k = |s: &str| g[&format!("{tag}.{s}")].clone();
        let params = k("params").to_vec1::<f64>().expect("params");
        let w = LossWeights { rot: params[1], contrast: params[2], recon: params[3] };
        let var = |s: &str| Var::from_tensor(&k(s)).expect("var");
        let (rot_p, c1, c2, rec) = (var("rot_p"), var("c1"), var("c2"), var("rec"));
        let labels: Vec<u32> =
            k("rots").to_vec1::<i64>().expect("rots").into_iter().map(|v| v as u32).collect();
        let l =
            ssl_loss(&rot_p, &labels, &c1, &c2, &rec, &k("target"), params[0], &w).expect("loss");
        let got: Vec<f64> = [&l.total, &l.rot, &l.contrast, &l.recon]
            .iter()
            .map(|t| t.to_dtype(DType::F64).and_then(|t| t.to_scalar::<f64>()).expect("scalar"))
            .collect();
        let want = k("values").to_vec1::<f64>().expect("values");
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{tag}: {got:?} vs {want:?}");
        }
        let grads = l.total.backward().expect("backward");
        for (name, v) in [("rot_p", &rot_p), ("c1", &c1), ("c2", &c2), ("rec", &rec)] {
            let gv = grads.get(v.as_tensor()).expect("grad");
            let d = (gv - k(&format!("grad_{name}")))
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f64>())
                .expect("diff");
            assert!(d < 1e-12, "{tag}: gradient of {name} differs by {d}");
        }
    }
}
