//! Scoring one case: a single counting pass (voxel counts, overlaps and bounding boxes of every
//! class), then every evaluated class in parallel inside its own bounding box.
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::surface::{
    Scratch, SurfaceDistances, SurfaceScores, label_edges, mask_edges, surface_distances,
    surface_scores,
};

/// Integer label types accepted as label maps.
pub trait Label: Copy + Send + Sync + 'static {
    /// The class index this label denotes.
    fn index(self) -> usize;
}

impl Label for u8 {
    fn index(self) -> usize {
        usize::from(self)
    }
}

impl Label for u16 {
    fn index(self) -> usize {
        usize::from(self)
    }
}

/// Scores of one class in one case.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassScores {
    /// Class index in the label map (channel index for channel input).
    pub class: usize,
    /// Dice, MONAI `DiceMetric` (NaN on empty ground truth unless `ignore_empty == false`).
    pub dice: f64,
    /// Intersection over union, MONAI `MeanIoU` (same empty-ground-truth rule as Dice).
    pub iou: f64,
    /// Ground-truth voxels of this class.
    pub gt_voxels: u64,
    /// Predicted voxels of this class.
    pub pred_voxels: u64,
    /// Surface scores; `None` when the metric was configured without distances.
    pub surface: Option<SurfaceScores>,
}

/// Per-class voxel counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClassStats {
    pub pred: u64,
    pub gt: u64,
    pub inter: u64,
}

/// Fails with [`Error::LabelOutOfRange`] on the first label `>= num_classes`.
pub(crate) fn check_labels<L: Label>(
    data: &[L],
    num_classes: usize,
    what: &'static str,
) -> Result<()> {
    let max = data.par_iter().map(|l| l.index()).max().unwrap_or(0);
    if max < num_classes {
        return Ok(());
    }
    let index = data.iter().position(|l| l.index() >= num_classes).unwrap_or(0);
    let label = data.get(index).map_or(0, |l| l.index() as u32);
    Err(Error::LabelOutOfRange { what, label, index, num_classes })
}

/// One pass over two label maps: voxel counts and overlaps of all classes.
pub(crate) fn label_stats<L: Label>(pred: &[L], gt: &[L], num_classes: usize) -> Vec<ClassStats> {
    const CHUNK: usize = 1 << 16;
    pred.par_chunks(CHUNK)
        .zip(gt.par_chunks(CHUNK))
        .fold(
            || vec![ClassStats::default(); num_classes],
            |mut st, (pc, gc)| {
                for (p, g) in pc.iter().zip(gc) {
                    let (p, g) = (p.index(), g.index());
                    st[p].pred += 1;
                    st[g].gt += 1;
                    if p == g {
                        st[p].inter += 1;
                    }
                }
                st
            },
        )
        .reduce(
            || vec![ClassStats::default(); num_classes],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    x.pred += y.pred;
                    x.gt += y.gt;
                    x.inter += y.inter;
                }
                a
            },
        )
}

/// Counts for channel-first binary maps (`1` = inside), one channel per class.
pub(crate) fn channel_stats(pred: &[u8], gt: &[u8], n: usize, channels: usize) -> Vec<ClassStats> {
    (0..channels)
        .into_par_iter()
        .map(|c| {
            let (pc, gc) = (&pred[c * n..(c + 1) * n], &gt[c * n..(c + 1) * n]);
            let mut s = ClassStats::default();
            for (&p, &g) in pc.iter().zip(gc) {
                s.pred += u64::from(p);
                s.gt += u64::from(g);
                s.inter += u64::from(p & g);
            }
            s
        })
        .collect()
}

/// Surface voxels of the wanted classes in prediction and ground truth.
pub(crate) trait EdgeSource: Sync {
    /// `(pred, gt)` surface lists indexed by class (empty for classes not wanted).
    fn edges(&self, wanted: &[bool]) -> (Vec<Vec<usize>>, Vec<Vec<usize>>);
}

/// Two label maps.
pub(crate) struct LabelPair<'a, L> {
    pub pred: &'a [L],
    pub gt: &'a [L],
    pub dims: [usize; 3],
}

impl<L: Label> EdgeSource for LabelPair<'_, L> {
    fn edges(&self, wanted: &[bool]) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
        (label_edges(self.pred, self.dims, wanted), label_edges(self.gt, self.dims, wanted))
    }
}

/// Channel-first binary maps (`[C, n0, n1, n2]`, values 0/1).
pub(crate) struct ChannelPair<'a> {
    pub pred: &'a [u8],
    pub gt: &'a [u8],
    pub dims: [usize; 3],
}

impl EdgeSource for ChannelPair<'_> {
    fn edges(&self, wanted: &[bool]) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
        let n: usize = self.dims.iter().product();
        let one =
            |buf: &[u8]| -> Vec<Vec<usize>> {
                wanted
                    .iter()
                    .enumerate()
                    .map(|(c, &w)| {
                        if w { mask_edges(&buf[c * n..(c + 1) * n], self.dims) } else { Vec::new() }
                    })
                    .collect()
            };
        (one(self.pred), one(self.gt))
    }
}

/// What to compute for each class of a case.
#[derive(Debug, Clone)]
pub(crate) struct CaseSettings<'a> {
    pub ignore_empty: bool,
    pub distances: bool,
    pub percentile: f64,
    pub directed: bool,
    /// NSD tolerance per entry of `classes`.
    pub tolerances: &'a [f64],
}

/// MONAI `DiceHelper.compute_channel` and `compute_iou` from counts.
pub(crate) fn overlap_scores(s: &ClassStats, ignore_empty: bool) -> (f64, f64) {
    let (p, g, i) = (s.pred as f64, s.gt as f64, s.inter as f64);
    if s.gt > 0 {
        return (2.0 * i / (g + p), i / (g + p - i));
    }
    if ignore_empty {
        return (f64::NAN, f64::NAN);
    }
    if s.pred == 0 { (1.0, 1.0) } else { (0.0, 0.0) }
}

/// Scores the given classes of one case; results are in the order of `classes`.
pub(crate) fn score_classes<S: EdgeSource>(
    src: &S,
    stats: &[ClassStats],
    classes: &[usize],
    dims: [usize; 3],
    spacing: [f64; 3],
    set: &CaseSettings<'_>,
) -> Vec<ClassScores> {
    let (pred_edges, gt_edges) = if set.distances {
        let mut wanted = vec![false; stats.len()];
        classes.iter().for_each(|&c| wanted[c] = true);
        src.edges(&wanted)
    } else {
        (Vec::new(), Vec::new())
    };
    // Largest surfaces first, one class per rayon task, so all cores stay busy to the end.
    let mut order: Vec<usize> = (0..classes.len()).collect();
    if set.distances {
        order.sort_by_key(|&j| {
            std::cmp::Reverse(pred_edges[classes[j]].len() + gt_edges[classes[j]].len())
        });
    }
    let mut scored: Vec<(usize, ClassScores)> = order
        .into_par_iter()
        .with_max_len(1)
        .map_init(Scratch::default, |scratch, j| {
            let c = classes[j];
            let s = &stats[c];
            let (dice, iou) = overlap_scores(s, set.ignore_empty);
            let surface = set.distances.then(|| {
                let (pe, ge) = (&pred_edges[c], &gt_edges[c]);
                let mut d = if pe.is_empty() && ge.is_empty() {
                    SurfaceDistances::default()
                } else {
                    surface_distances(pe, ge, dims, spacing, scratch)
                };
                surface_scores(&mut d, set.percentile, set.directed, set.tolerances[j])
            });
            (j, ClassScores { class: c, dice, iou, gt_voxels: s.gt, pred_voxels: s.pred, surface })
        })
        .collect();
    scored.sort_by_key(|(j, _)| *j);
    scored.into_iter().map(|(_, s)| s).collect()
}
