//! Surface (edge) voxels and edge-to-edge distances of one class, as MONAI `get_mask_edges` +
//! `get_surface_distance` + the HD / ASSD / NSD reductions of MONAI 1.6.1.
//!
//! A class is processed inside the bounding box of `pred ∪ gt` grown by one voxel on every side
//! (MONAI crops with `margin=1`); voxels of that box outside the image are background, so voxels on
//! the image border are surface voxels (SciPy `binary_erosion`, `border_value=0`). Surface =
//! mask AND NOT erode(mask) with the 6-connected cross. Distances are exact Euclidean distances in
//! spacing units from an EDT of the other mask's surface, stored as `f32` like MONAI's tensors.
use crate::edt::squared_edt_into;

/// Marks the 6-connected surface of a zero-padded mask in place: `1` (inside) becomes `2` (surface)
/// when any face neighbour is `0`. Returns the number of surface voxels.
///
/// # Shapes
/// `mask`: C-order `[m0, m1, m2]` whose outermost layer is all zero (the one-voxel margin).
pub(crate) fn mark_edges(mask: &mut [u8], m: [usize; 3]) -> usize {
    let [m0, m1, m2] = m;
    let (s1, s0) = (m2, m1 * m2);
    let mut count = 0;
    for i0 in 1..m0.saturating_sub(1) {
        for i1 in 1..m1.saturating_sub(1) {
            let row = i0 * s0 + i1 * s1;
            for idx in row + 1..row + m2 - 1 {
                if mask[idx] == 0 {
                    continue;
                }
                // Neighbours may already be marked 2; only 0 (outside) matters.
                let outside = mask[idx - 1] == 0
                    || mask[idx + 1] == 0
                    || mask[idx - s1] == 0
                    || mask[idx + s1] == 0
                    || mask[idx - s0] == 0
                    || mask[idx + s0] == 0;
                if outside {
                    mask[idx] = 2;
                    count += 1;
                }
            }
        }
    }
    count
}

/// Edge-to-edge distances of one class in both directions (MONAI `distances` tuple).
#[derive(Debug, Clone, Default)]
pub(crate) struct SurfaceDistances {
    /// From every predicted surface voxel to the nearest ground-truth surface voxel.
    pub pred_to_gt: Vec<f32>,
    /// From every ground-truth surface voxel to the nearest predicted surface voxel.
    pub gt_to_pred: Vec<f32>,
}

/// Distances between the surfaces of two padded masks already marked by [`mark_edges`].
///
/// Empty-mask cases follow MONAI `get_surface_distance`: with one surface empty, *both* directions
/// hold `+inf` once per voxel of the non-empty surface; with both empty, both are empty.
pub(crate) fn surface_distances(
    pred: &[u8],
    gt: &[u8],
    n_pred: usize,
    n_gt: usize,
    m: [usize; 3],
    spacing: [f64; 3],
    scratch: &mut Vec<f64>,
) -> SurfaceDistances {
    if n_pred == 0 || n_gt == 0 {
        let n = n_pred.max(n_gt);
        return SurfaceDistances {
            pred_to_gt: vec![f32::INFINITY; n],
            gt_to_pred: vec![f32::INFINITY; n],
        };
    }
    scratch.resize(pred.len(), 0.0);
    let gather = |queries: &[u8], edt: &[f64], n: usize| -> Vec<f32> {
        let mut d = Vec::with_capacity(n);
        d.extend(queries.iter().zip(edt).filter(|(q, _)| **q == 2).map(|(_, e)| e.sqrt() as f32));
        d
    };
    squared_edt_into(gt, m, spacing, |v| v == 2, scratch);
    let pred_to_gt = gather(pred, scratch, n_pred);
    squared_edt_into(pred, m, spacing, |v| v == 2, scratch);
    let gt_to_pred = gather(gt, scratch, n_gt);
    SurfaceDistances { pred_to_gt, gt_to_pred }
}

/// `torch.quantile(d, q)` with linear interpolation, in `f32` as MONAI computes it: the rank
/// `q·(n−1)` and `torch.lerp` are evaluated in single precision, so an all-`inf` input gives NaN
/// (`inf − inf`), as in MONAI's HD95 for an empty mask. Empty input gives NaN.
pub(crate) fn torch_quantile(d: &mut [f32], q: f64) -> f32 {
    let n = d.len();
    if n == 0 {
        return f32::NAN;
    }
    let rank = (q as f32) * ((n - 1) as f32);
    let below = (rank as usize).min(n - 1);
    let above = (rank.ceil() as usize).min(n - 1);
    let weight = rank - below as f32;
    let (_, &mut lo, rest) = d.select_nth_unstable_by(below, f32::total_cmp);
    let hi = if above == below { lo } else { rest.iter().copied().fold(f32::INFINITY, f32::min) };
    torch_lerp(lo, hi, weight)
}

/// `torch.lerp` (ATen `lerp` in `Lerp.h`): two formulas split at `|w| < 0.5`.
fn torch_lerp(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 { a + w * (b - a) } else { b - (b - a) * (1.0 - w) }
}

/// MONAI `_compute_percentile_hausdorff_distance`: max when `percentile` is `None` or `0`
/// (`if not percentile`), else the quantile; NaN for an empty direction.
pub(crate) fn directed_hd(d: &mut [f32], percentile: Option<f64>) -> f32 {
    if d.is_empty() {
        return f32::NAN;
    }
    match percentile {
        Some(p) if p != 0.0 => torch_quantile(d, p / 100.0),
        _ => d.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    }
}

/// `torch.max(torch.stack([a, b]))`: NaN propagates.
pub(crate) fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) }
}

/// Surface scores of one class, each as MONAI computes it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SurfaceScores {
    /// Hausdorff distance (max), MONAI `HausdorffDistanceMetric()`.
    pub hd: f64,
    /// Percentile Hausdorff distance, MONAI `HausdorffDistanceMetric(percentile=p)` (p = 95 by default).
    pub hd95: f64,
    /// Average symmetric surface distance, MONAI `SurfaceDistanceMetric(symmetric=True)`: the mean of
    /// the concatenated distances of both directions.
    pub assd: f64,
    /// Normalised surface Dice at the class tolerance, MONAI `SurfaceDiceMetric` (edge-voxel counting).
    pub nsd: f64,
}

/// Reduces both distance directions to [`SurfaceScores`].
pub(crate) fn surface_scores(
    d: &mut SurfaceDistances,
    percentile: f64,
    directed: bool,
    tolerance: f64,
) -> SurfaceScores {
    let nan = f64::NAN;
    let total = d.pred_to_gt.len() + d.gt_to_pred.len();
    if total == 0 {
        return SurfaceScores { hd: nan, hd95: nan, assd: nan, nsd: nan };
    }
    // NSD: `distances <= class_thresholds[c]` compares f32 distances with the threshold as f32.
    let tau = tolerance as f32;
    let within = d.pred_to_gt.iter().chain(&d.gt_to_pred).filter(|&&x| x <= tau).count();
    let nsd = within as f64 / total as f64;
    let sum: f64 = d.pred_to_gt.iter().chain(&d.gt_to_pred).map(|&x| f64::from(x)).sum();
    let assd = sum / total as f64;
    let hd_dir = |v: &mut Vec<f32>, p: Option<f64>| directed_hd(v, p);
    let (hd, hd95) = if directed {
        (hd_dir(&mut d.pred_to_gt, None), hd_dir(&mut d.pred_to_gt, Some(percentile)))
    } else {
        let hd = nan_max(hd_dir(&mut d.pred_to_gt, None), hd_dir(&mut d.gt_to_pred, None));
        let p = Some(percentile);
        let hdp = nan_max(hd_dir(&mut d.pred_to_gt, p), hd_dir(&mut d.gt_to_pred, p));
        (hd, hdp)
    };
    SurfaceScores { hd: f64::from(hd), hd95: f64::from(hd95), assd, nsd }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_torch_linear() {
        // torch.quantile(torch.tensor([1., 2., 3., 4.]), 0.95) == 3.85
        let mut d = vec![4.0, 1.0, 3.0, 2.0];
        assert!((torch_quantile(&mut d, 0.95) - 3.85).abs() < 1e-6);
        let mut d = vec![f32::INFINITY; 5];
        assert!(torch_quantile(&mut d, 0.95).is_nan());
        let mut d = vec![2.0];
        assert_eq!(torch_quantile(&mut d, 0.95), 2.0);
    }

    #[test]
    fn edges_of_a_cube_are_its_shell() {
        let m = [7, 7, 7];
        let mut mask = vec![0u8; 343];
        for i0 in 1..6 {
            for i1 in 1..6 {
                for i2 in 1..6 {
                    mask[(i0 * 7 + i1) * 7 + i2] = 1;
                }
            }
        }
        assert_eq!(mark_edges(&mut mask, m), 125 - 27);
    }
}
