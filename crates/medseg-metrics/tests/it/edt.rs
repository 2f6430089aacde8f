//! The separable EDT against brute force on random shapes, spacings and densities.
use medseg_metrics::edt::{squared_edt, squared_edt_brute};

#[test]
fn random_volumes_match_brute_force() {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..25 {
        let dims =
            [1 + (next() % 9) as usize, 1 + (next() % 11) as usize, 1 + (next() % 40) as usize];
        let spacing = [
            0.3 + (next() % 30) as f64 / 10.0,
            0.5 + (next() % 7) as f64 / 3.0,
            1.0 + (next() % 5) as f64,
        ];
        let density = 1 + next() % 60;
        let n: usize = dims.iter().product();
        let sites: Vec<u8> = (0..n).map(|_| u8::from(next().is_multiple_of(density))).collect();
        let a = squared_edt(&sites, dims, spacing, |v| v != 0);
        let b = squared_edt_brute(&sites, dims, spacing, |v| v != 0);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                x == y || (x - y).abs() <= 1e-9 * y.max(1.0),
                "{x} vs {y}, dims {dims:?} spacing {spacing:?}"
            );
        }
    }
}
