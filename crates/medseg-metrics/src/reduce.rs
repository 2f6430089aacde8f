//! MONAI `do_metric_reduction`: NaN entries are dropped, `inf` propagates.

/// A reduced value and how many entries contributed (MONAI `not_nans`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reduced {
    /// The reduced value; `0.0` when nothing contributed, exactly as MONAI returns it.
    pub value: f64,
    /// Contributing entries: non-NaN cases (for `mean`) or non-NaN values (for `mean_batch`).
    pub not_nans: usize,
}

/// MONAI reduction `"mean"` of a `[cases][classes]` table: per case the mean over its non-NaN
/// classes, then the mean over the cases that have at least one non-NaN class; `0.0` if none.
pub fn monai_mean(rows: &[Vec<f64>]) -> Reduced {
    let mut sum = 0.0;
    let mut cases = 0;
    for row in rows {
        let (s, n) =
            row.iter().filter(|x| !x.is_nan()).fold((0.0, 0usize), |(s, n), &x| (s + x, n + 1));
        if n > 0 {
            sum += s / n as f64;
            cases += 1;
        }
    }
    Reduced { value: if cases > 0 { sum / cases as f64 } else { 0.0 }, not_nans: cases }
}

/// MONAI reduction `"mean_batch"` of one class column: mean over non-NaN entries, `0.0` if none.
pub fn monai_mean_batch(column: impl IntoIterator<Item = f64>) -> Reduced {
    let (s, n) =
        column.into_iter().filter(|x| !x.is_nan()).fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    Reduced { value: if n > 0 { s / n as f64 } else { 0.0 }, not_nans: n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_drops_nan_and_keeps_inf() {
        let nan = f64::NAN;
        let r = monai_mean(&[vec![1.0, nan], vec![nan, nan], vec![0.0, 0.5]]);
        assert_eq!(r, Reduced { value: (1.0 + 0.25) / 2.0, not_nans: 2 });
        let r = monai_mean(&[vec![f64::INFINITY, 1.0]]);
        assert!(r.value.is_infinite());
        assert_eq!(monai_mean(&[vec![nan]]), Reduced { value: 0.0, not_nans: 0 });
        assert_eq!(monai_mean_batch([nan, 2.0, 4.0]), Reduced { value: 3.0, not_nans: 2 });
    }
}
