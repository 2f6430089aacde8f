//! Helpers shared by the integration tests.
use std::io::Read;
use std::path::PathBuf;

use serde_json::Value;

/// `crates/medseg-metrics/tests/golden`.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden")
}

/// The golden JSON document.
pub fn golden_json() -> Value {
    let text = std::fs::read_to_string(golden_dir().join("metrics_golden.json"))
        .expect("tests/golden/metrics_golden.json is committed");
    serde_json::from_str(&text).expect("golden json parses")
}

/// `(pred, gt)` of a golden case: gzip of prediction bytes then ground-truth bytes.
pub fn golden_volumes(name: &str, n: usize) -> (Vec<u8>, Vec<u8>) {
    let path = golden_dir().join(format!("metrics_{name}.bin.gz"));
    let file = std::fs::File::open(&path).expect("golden volume is committed");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(file).read_to_end(&mut raw).expect("golden volume decompresses");
    assert_eq!(raw.len(), 2 * n, "{} has the wrong size", path.display());
    let gt = raw.split_off(n);
    (raw, gt)
}

/// A JSON number or one of the strings `nan`, `inf`, `-inf`.
pub fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "nan" => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        other => other.as_f64().expect("golden value is a number"),
    }
}

/// `[usize; 3]` from a JSON array.
pub fn dims3(v: &Value) -> [usize; 3] {
    let a: Vec<usize> =
        v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as usize).collect();
    [a[0], a[1], a[2]]
}

/// `[f64; 3]` from a JSON array.
pub fn spacing3(v: &Value) -> [f64; 3] {
    let a: Vec<f64> = v.as_array().expect("array").iter().map(num).collect();
    [a[0], a[1], a[2]]
}

/// Equal within `tol`, with NaN == NaN and inf == inf of the same sign.
pub fn close(a: f64, b: f64, tol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= tol
}

/// Asserts element-wise [`close`], naming the case and the quantity.
pub fn assert_all_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*a, *b, tol),
            "{what}[{i}]: got {a}, MONAI {b} (tol {tol})\n got  {got:?}\n want {want:?}"
        );
    }
}
