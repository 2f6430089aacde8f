//! PyTorch / MONAI goldens (`tools/golden/ops_golden.py` → `tests/golden/ops.safetensors`):
//! every op's output and the gradients of `Σ out ⊙ r`, case arguments in the file metadata.
use std::collections::HashMap;

use candle::{Device, Tensor};
use medseg_ops::{
    Conv3dConfig, ConvTranspose3dConfig, InterpolationMode, Resize, conv_transpose3d, conv3d, gelu,
    instance_norm3d, interpolate3d, layer_norm, leaky_relu, relative_position_index,
    shifted_window_mask, softmax_last_dim, window_partition,
};
use medseg_testkit::assert_close;
use serde_json::Value;

struct Golden {
    tensors: HashMap<String, Tensor>,
    cases: Vec<(String, Value)>,
}

fn load() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/ops.safetensors");
    let bytes = std::fs::read(path).expect("golden file");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("golden header");
    let mut cases: Vec<(String, Value)> = meta
        .metadata()
        .as_ref()
        .expect("case metadata")
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::from_str(v).expect("case json")))
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors = candle::safetensors::load(path, &Device::Cpu).expect("golden tensors");
    Golden { tensors, cases }
}

fn arr3(v: &Value, key: &str) -> [usize; 3] {
    let a: Vec<usize> =
        v[key].as_array().expect(key).iter().map(|x| x.as_u64().unwrap() as usize).collect();
    [a[0], a[1], a[2]]
}

#[test]
fn ops_match_pytorch_goldens() {
    let g = load();
    let t = |case: &str, name: &str| g.tensors.get(&format!("{case}.{name}")).cloned();
    let mut checked = 0;
    for (case, a) in &g.cases {
        let op = a["op"].as_str().unwrap();
        let out = t(case, "out").expect("out");
        if matches!(op, "shifted_window_mask" | "window_partition" | "relative_position_index") {
            let got = match op {
                "shifted_window_mask" => shifted_window_mask(
                    arr3(a, "dims"),
                    arr3(a, "window"),
                    arr3(a, "shift"),
                    &Device::Cpu,
                )
                .unwrap(),
                "window_partition" => {
                    window_partition(&t(case, "x").unwrap(), arr3(a, "window")).unwrap()
                }
                _ => {
                    let w = arr3(a, "window");
                    let n: usize = w.iter().product();
                    let rows = a["rows"].as_u64().unwrap() as usize;
                    let idx: Vec<i64> =
                        relative_position_index(w)[..rows * n].iter().map(|&v| v as i64).collect();
                    Tensor::from_vec(idx, (rows, n), &Device::Cpu).unwrap()
                }
            };
            assert_eq!(got.dims(), out.dims(), "{case}");
            assert_close(
                case,
                &got.to_dtype(candle::DType::F64).unwrap(),
                &out.to_dtype(candle::DType::F64).unwrap(),
                0.0,
                0.0,
            );
            checked += 1;
            continue;
        }
        let names: Vec<&str> =
            ["x", "w", "b"].into_iter().filter(|n| t(case, n).is_some()).collect();
        let inputs: Vec<Tensor> = names.iter().map(|n| t(case, n).unwrap()).collect();
        let run = |ts: &[Tensor]| -> candle::Result<Tensor> {
            let (x, w, b) = (&ts[0], ts.get(1), ts.get(2));
            let eps = a["eps"].as_f64().unwrap_or(1e-5);
            match op {
                "conv3d" => conv3d(
                    x,
                    w.unwrap(),
                    b,
                    &Conv3dConfig {
                        stride: arr3(a, "stride"),
                        padding: arr3(a, "padding"),
                        dilation: arr3(a, "dilation"),
                        groups: a["groups"].as_u64().unwrap() as usize,
                    },
                ),
                "conv_transpose3d" => conv_transpose3d(
                    x,
                    w.unwrap(),
                    b,
                    &ConvTranspose3dConfig {
                        stride: arr3(a, "stride"),
                        padding: arr3(a, "padding"),
                        output_padding: arr3(a, "output_padding"),
                        dilation: arr3(a, "dilation"),
                        groups: a["groups"].as_u64().unwrap() as usize,
                    },
                ),
                "instance_norm3d" => instance_norm3d(x, w, b, eps),
                "layer_norm" => layer_norm(x, w, b, eps),
                "softmax_last_dim" => softmax_last_dim(x),
                "gelu" => gelu(x),
                "leaky_relu" => leaky_relu(x, a["negative_slope"].as_f64().unwrap()),
                "interpolate3d" => {
                    let mode = if a["mode"] == "nearest" {
                        InterpolationMode::Nearest
                    } else {
                        InterpolationMode::Trilinear
                    };
                    let resize = if a["size"].is_null() {
                        let s: Vec<f64> = a["scale"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_f64().unwrap())
                            .collect();
                        Resize::Scale([s[0], s[1], s[2]])
                    } else {
                        Resize::Size(arr3(a, "size"))
                    };
                    interpolate3d(x, resize, mode)
                }
                other => panic!("unknown golden op {other}"),
            }
        };
        // Use the stored r, not a fresh one: recompute the gradient with it.
        let r = t(case, "r").unwrap();
        let vars: Vec<candle::Var> =
            inputs.iter().map(|x| candle::Var::from_tensor(x).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = run(&ts).unwrap();
        assert_close(&format!("{case} forward"), &y, &out, 1e-5, 1e-5);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (n, v) in names.iter().zip(&vars) {
            let expected = t(case, &format!("grad_{n}")).unwrap();
            let got = grads.get(v.as_tensor()).expect("gradient");
            assert_close(&format!("{case} grad_{n}"), got, &expected, 1e-4, 1e-4);
        }
        checked += 1;
    }
    assert_eq!(checked, 24, "every golden case must be checked");
}
