//! Shared helpers: golden files, the shared CT cases, tolerance checks.
use std::path::PathBuf;

use medseg_data::Affine;

/// `tests/golden` of this crate.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Parses a golden JSON file.
pub fn golden(name: &str) -> serde_json::Value {
    let p = golden_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The shared real CT cases, or `None` (with a printed reason) when they are absent.
pub fn shared_data() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if p.join("ts-abdomen-3mm-small/ct.nii.gz").exists() {
        Some(p)
    } else {
        println!("SKIP: shared CT cases not found at {}", p.display());
        None
    }
}

/// JSON array → Vec<f64>.
pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// JSON array → [usize; 3].
pub fn shape3(v: &serde_json::Value) -> [usize; 3] {
    let s: Vec<usize> =
        v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as usize).collect();
    [s[0], s[1], s[2]]
}

/// JSON 4×4 → Affine.
pub fn affine(v: &serde_json::Value) -> Affine {
    let rows = v.as_array().expect("rows");
    let mut m = [[0.0; 4]; 4];
    for (r, row) in rows.iter().enumerate() {
        for (c, x) in f64s(row).into_iter().enumerate() {
            m[r][c] = x;
        }
    }
    Affine(m)
}

/// Asserts that two slices agree within `atol + rtol·|b|`, reporting the worst element.
pub fn assert_close(what: &str, a: &[f64], b: &[f64], atol: f64, rtol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: length {} vs {}", a.len(), b.len());
    let mut worst = (0usize, 0.0f64);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let err = (x - y).abs() - rtol * y.abs();
        if err > worst.1 {
            worst = (i, err);
        }
    }
    assert!(
        worst.1 <= atol,
        "{what}: element {} is {} vs {} (excess {})",
        worst.0,
        a[worst.0],
        b[worst.0],
        worst.1
    );
}
