//! Connected components, largest-component / small-component clean-up and class statistics
//! against scipy.ndimage / numpy goldens (`tools/golden/postprocess_golden.py`).
use medseg_infer::components::{Connectivity, keep_largest, label, remove_small};
use medseg_infer::statistics::class_statistics;
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/postprocess.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("JSON")
}

fn u8s(v: &Value) -> Vec<u8> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as u8).collect()
}

fn dims(g: &Value) -> [usize; 3] {
    let d: Vec<usize> = g["dims"]
        .as_array()
        .expect("dims")
        .iter()
        .map(|x| x.as_u64().expect("dim") as usize)
        .collect();
    [d[0], d[1], d[2]]
}

fn spacing(g: &Value) -> [f64; 3] {
    let s: Vec<f64> =
        g["spacing"].as_array().expect("spacing").iter().map(|x| x.as_f64().expect("mm")).collect();
    [s[0], s[1], s[2]]
}

const CONNS: [(&str, Connectivity); 2] =
    [("faces", Connectivity::Faces), ("corners", Connectivity::Corners)];

#[test]
fn components_equal_scipy_label() {
    let g = golden();
    let labels = u8s(&g["labels"]);
    for (key, conn) in CONNS {
        for c in 1u8..=3 {
            let want = &g["components"][key][c.to_string()];
            let inside: Vec<bool> = labels.iter().map(|&l| l == c).collect();
            let (map, counts) = label(&inside, dims(&g), conn);
            let want_map: Vec<u32> = want["map"]
                .as_array()
                .expect("map")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect();
            let want_counts: Vec<u64> = want["counts"]
                .as_array()
                .expect("counts")
                .iter()
                .map(|x| x.as_u64().expect("n"))
                .collect();
            assert_eq!(counts, want_counts, "class {c}, {key}");
            assert_eq!(map, want_map, "class {c}, {key}");
        }
    }
}

#[test]
fn largest_and_small_component_clean_up_equal_the_python_reference() {
    let g = golden();
    for (key, conn) in CONNS {
        let mut labels = u8s(&g["labels"]);
        keep_largest(&mut labels, dims(&g), &[1, 2, 3], conn);
        assert_eq!(labels, u8s(&g["largest"][key]), "{key}");
        let mut labels = u8s(&g["labels"]);
        let min_ml = g["small"][key]["min_ml"].as_f64().expect("min_ml");
        remove_small(&mut labels, dims(&g), spacing(&g), &[1, 2, 3], min_ml, conn);
        assert_eq!(labels, u8s(&g["small"][key]["labels"]), "{key}");
    }
}

#[test]
fn statistics_equal_numpy() {
    let g = golden();
    let labels = u8s(&g["labels"]);
    let image: Vec<f32> = g["image"]
        .as_array()
        .expect("image")
        .iter()
        .map(|x| x.as_f64().expect("value") as f32)
        .collect();
    let names: Vec<String> = (0..4).map(|i| format!("class{i}")).collect();
    let stats = class_statistics(&labels, &image, spacing(&g), &names);
    for s in &stats {
        let want = &g["statistics"][s.label.to_string()];
        let i = s.intensity.as_ref().expect("non-empty class");
        assert_eq!(s.voxels, want["voxels"].as_u64().expect("voxels"));
        let close = |a: f64, key: &str| {
            let b = want[key].as_f64().expect("value");
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "class {} {key}: {a} vs {b}",
                s.label
            );
        };
        close(s.volume_ml, "volume_ml");
        close(i.mean, "mean");
        close(i.std, "std");
        close(i.min, "min");
        close(i.max, "max");
        close(i.median, "median");
    }
}
