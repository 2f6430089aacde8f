//! Surface (edge) voxels and edge-to-edge distances of one class, as MONAI `get_mask_edges` +
//! `get_surface_distance` + the HD / ASSD / NSD reductions of MONAI 1.6.1.
//!
//! Surface = mask AND NOT erode(mask), erosion with SciPy's 6-connected cross and `border_value=0`,
//! so voxels on the image border are surface voxels. MONAI crops to the bounding box of
//! `pred ∪ gt` with a one-voxel margin first; cropping does not change the surface, so here the
//! surfaces of all classes are found in one pass over the label map ([`label_edges`]).
//!
//! Distances are exact Euclidean distances in spacing units, stored as `f32` like MONAI's tensors.
//! They come from an exact EDT ([`crate::edt`]) over a box around the surfaces of the class: the
//! bounding box of both surfaces with isolated outlier voxels trimmed (a stray false positive far
//! away would otherwise blow the box up to the whole image). Sites outside the box are added by a
//! direct minimum over those few voxels, queries outside it are answered directly, and when that
//! would be expensive the untrimmed bounding box is used instead. The result is exact either way.
use rayon::prelude::*;

use crate::edt::squared_edt_into;

/// Surface voxels (linear C-order indices, ascending) of every class `c` with `wanted[c]`.
pub(crate) fn label_edges<L: crate::case::Label>(
    v: &[L],
    dims: [usize; 3],
    wanted: &[bool],
) -> Vec<Vec<usize>> {
    let [n0, n1, n2] = dims;
    let s0 = n1 * n2;
    let chunk = n0.div_ceil(4 * rayon::current_num_threads()).max(1);
    let parts: Vec<Vec<Vec<usize>>> = (0..n0)
        .step_by(chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| {
            let mut lists: Vec<Vec<usize>> = vec![Vec::new(); wanted.len()];
            for i0 in start..(start + chunk).min(n0) {
                let face0 = i0 == 0 || i0 == n0 - 1;
                for i1 in 0..n1 {
                    let face = face0 || i1 == 0 || i1 == n1 - 1;
                    let row = i0 * s0 + i1 * n2;
                    for i2 in 0..n2 {
                        let idx = row + i2;
                        let l = v[idx].index();
                        if !wanted[l] {
                            continue;
                        }
                        let edge = face
                            || i2 == 0
                            || i2 == n2 - 1
                            || v[idx - 1].index() != l
                            || v[idx + 1].index() != l
                            || v[idx - n2].index() != l
                            || v[idx + n2].index() != l
                            || v[idx - s0].index() != l
                            || v[idx + s0].index() != l;
                        if edge {
                            lists[l].push(idx);
                        }
                    }
                }
            }
            lists
        })
        .collect();
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); wanted.len()];
    for part in parts {
        for (o, p) in out.iter_mut().zip(part) {
            if o.is_empty() {
                *o = p;
            } else {
                o.extend_from_slice(&p);
            }
        }
    }
    out
}

/// Surface voxels of a binary mask (`!= 0` inside).
pub(crate) fn mask_edges(m: &[u8], dims: [usize; 3]) -> Vec<usize> {
    label_edges(m, dims, &[false, true]).pop().unwrap_or_default()
}

/// Edge-to-edge distances of one class in both directions (MONAI `distances` tuple).
#[derive(Debug, Clone, Default)]
pub(crate) struct SurfaceDistances {
    /// From every predicted surface voxel to the nearest ground-truth surface voxel.
    pub pred_to_gt: Vec<f32>,
    /// From every ground-truth surface voxel to the nearest predicted surface voxel.
    pub gt_to_pred: Vec<f32>,
}

/// Reusable buffers of one worker.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    grid: Vec<u8>,
    edt: Vec<f64>,
}

/// Above this many direct distance evaluations the untrimmed box is used.
const DIRECT_LIMIT: usize = 20_000_000;
/// A gap of more than this many empty planes separates an outlier from the main body.
const OUTLIER_GAP: usize = 8;

/// Distances between two surfaces given as sorted linear indices.
///
/// Empty cases follow MONAI `get_surface_distance`: with one surface empty, *both* directions hold
/// `+inf` once per voxel of the non-empty surface; with both empty, both are empty.
pub(crate) fn surface_distances(
    pred: &[usize],
    gt: &[usize],
    dims: [usize; 3],
    spacing: [f64; 3],
    scratch: &mut Scratch,
) -> SurfaceDistances {
    if pred.is_empty() || gt.is_empty() {
        let n = pred.len().max(gt.len());
        return SurfaceDistances {
            pred_to_gt: vec![f32::INFINITY; n],
            gt_to_pred: vec![f32::INFINITY; n],
        };
    }
    let [_, n1, n2] = dims;
    let coord = |i: usize| [i / (n1 * n2), (i / n2) % n1, i % n2];
    let (mut lo, mut hi) = trimmed_box(pred, gt, dims, &coord);
    let inside = |c: [usize; 3], lo: [usize; 3], hi: [usize; 3]| {
        (0..3).all(|k| c[k] >= lo[k] && c[k] <= hi[k])
    };
    let count_out = |v: &[usize], lo, hi| v.iter().filter(|&&i| !inside(coord(i), lo, hi)).count();
    let (po, go) = (count_out(pred, lo, hi), count_out(gt, lo, hi));
    let direct = po * gt.len() + go * pred.len() + pred.len() * go + gt.len() * po;
    if direct > DIRECT_LIMIT {
        (lo, hi) = bbox(pred.iter().chain(gt).map(|&i| coord(i)));
    }
    let bdims = [0, 1, 2].map(|k| hi[k] - lo[k] + 1);
    let local =
        |c: [usize; 3]| ((c[0] - lo[0]) * bdims[1] + (c[1] - lo[1])) * bdims[2] + (c[2] - lo[2]);
    let sq = |a: [usize; 3], b: [usize; 3]| -> f64 {
        (0..3)
            .map(|k| {
                let d = (a[k] as f64 - b[k] as f64) * spacing[k];
                d * d
            })
            .sum()
    };
    let mut one_way = |sites: &[usize], queries: &[usize]| -> Vec<f32> {
        let (s_in, s_out): (Vec<[usize; 3]>, Vec<[usize; 3]>) =
            sites.iter().map(|&i| coord(i)).partition(|&c| inside(c, lo, hi));
        let len = bdims.iter().product::<usize>();
        scratch.grid.clear();
        scratch.grid.resize(len, 0);
        for &c in &s_in {
            scratch.grid[local(c)] = 1;
        }
        scratch.edt.resize(len, 0.0);
        if s_in.is_empty() {
            scratch.edt.fill(f64::INFINITY);
        } else {
            squared_edt_into(&scratch.grid, bdims, spacing, |v| v != 0, &mut scratch.edt);
        }
        queries
            .iter()
            .map(|&i| {
                let q = coord(i);
                let d2 = if inside(q, lo, hi) {
                    s_out.iter().fold(scratch.edt[local(q)], |m, &s| m.min(sq(q, s)))
                } else {
                    s_in.iter().chain(&s_out).fold(f64::INFINITY, |m, &s| m.min(sq(q, s)))
                };
                d2.sqrt() as f32
            })
            .collect()
    };
    let pred_to_gt = one_way(gt, pred);
    let gt_to_pred = one_way(pred, gt);
    SurfaceDistances { pred_to_gt, gt_to_pred }
}

fn bbox(it: impl Iterator<Item = [usize; 3]>) -> ([usize; 3], [usize; 3]) {
    it.fold(([usize::MAX; 3], [0; 3]), |(mut lo, mut hi), c| {
        for k in 0..3 {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
        }
        (lo, hi)
    })
}

/// Per axis, the run of occupied planes (gaps ≤ [`OUTLIER_GAP`]) holding the most surface voxels.
fn trimmed_box(
    pred: &[usize],
    gt: &[usize],
    dims: [usize; 3],
    coord: &dyn Fn(usize) -> [usize; 3],
) -> ([usize; 3], [usize; 3]) {
    let mut hist: [Vec<usize>; 3] = dims.map(|n| vec![0usize; n]);
    for &i in pred.iter().chain(gt) {
        let c = coord(i);
        for k in 0..3 {
            hist[k][c[k]] += 1;
        }
    }
    let mut lo = [0; 3];
    let mut hi = [0; 3];
    for k in 0..3 {
        let (mut best, mut best_n) = ((0, 0), 0usize);
        let mut run: Option<(usize, usize, usize)> = None; // (start, last occupied, count)
        for (x, &h) in hist[k].iter().enumerate() {
            if h == 0 {
                continue;
            }
            run = match run {
                Some((s, last, n)) if x - last <= OUTLIER_GAP => Some((s, x, n + h)),
                Some((s, last, n)) => {
                    if n > best_n {
                        (best, best_n) = ((s, last), n);
                    }
                    Some((x, x, h))
                }
                None => Some((x, x, h)),
            };
        }
        if let Some((s, last, n)) = run
            && n > best_n
        {
            best = (s, last);
        }
        (lo[k], hi[k]) = best;
    }
    (lo, hi)
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
        let dims = [7, 7, 7];
        let mut mask = vec![0u8; 343];
        for i0 in 1..6 {
            for i1 in 1..6 {
                for i2 in 1..6 {
                    mask[(i0 * 7 + i1) * 7 + i2] = 1;
                }
            }
        }
        assert_eq!(mask_edges(&mask, dims).len(), 125 - 27);
        // Touching the image border: the whole 7³ block is inside, only its border is surface.
        assert_eq!(mask_edges(&[1u8; 343], dims).len(), 343 - 125);
    }

    #[test]
    fn trimmed_box_with_outliers_is_exact() {
        let dims = [30, 30, 30];
        let at = |a: usize, b: usize, c: usize| (a * 30 + b) * 30 + c;
        let mut gt: Vec<usize> = (5..9).flat_map(|a| (5..9).map(move |b| at(a, b, 6))).collect();
        let mut pred: Vec<usize> = (5..9).flat_map(|a| (5..9).map(move |b| at(a, b, 7))).collect();
        pred.push(at(29, 0, 29)); // far stray voxel
        gt.push(at(0, 29, 0));
        gt.sort_unstable();
        pred.sort_unstable();
        let spacing = [1.0, 2.0, 0.5];
        let d = surface_distances(&pred, &gt, dims, spacing, &mut Scratch::default());
        let c = |i: usize| [i / 900, (i / 30) % 30, i % 30];
        let brute = |q: usize, s: &[usize]| {
            s.iter()
                .map(|&x| {
                    (0..3)
                        .map(|k| ((c(q)[k] as f64 - c(x)[k] as f64) * spacing[k]).powi(2))
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min)
                .sqrt() as f32
        };
        let want: Vec<f32> = pred.iter().map(|&q| brute(q, &gt)).collect();
        assert_eq!(d.pred_to_gt, want);
        let want: Vec<f32> = gt.iter().map(|&q| brute(q, &pred)).collect();
        assert_eq!(d.gt_to_pred, want);
    }
}
