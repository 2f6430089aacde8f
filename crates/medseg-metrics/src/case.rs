//! Scoring one case: a single counting pass (voxel counts, overlaps and bounding boxes of every
//! class), then every evaluated class in parallel inside its own bounding box.
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::surface::{
    SurfaceDistances, SurfaceScores, mark_edges, surface_distances, surface_scores,
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

/// Per-class voxel counts and the bounding box of `pred ∪ gt` (`lo > hi` when empty).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassStats {
    pub pred: u64,
    pub gt: u64,
    pub inter: u64,
    pub lo: [usize; 3],
    pub hi: [usize; 3],
}

impl ClassStats {
    const EMPTY: Self = Self { pred: 0, gt: 0, inter: 0, lo: [usize::MAX; 3], hi: [0; 3] };

    fn is_empty(&self) -> bool {
        self.pred == 0 && self.gt == 0
    }

    fn merge(&mut self, o: &Self) {
        self.pred += o.pred;
        self.gt += o.gt;
        self.inter += o.inter;
        for k in 0..3 {
            self.lo[k] = self.lo[k].min(o.lo[k]);
            self.hi[k] = self.hi[k].max(o.hi[k]);
        }
    }

    fn include_row(&mut self, i0: usize, i1: usize) {
        self.lo[0] = self.lo[0].min(i0);
        self.hi[0] = self.hi[0].max(i0);
        self.lo[1] = self.lo[1].min(i1);
        self.hi[1] = self.hi[1].max(i1);
    }

    /// Box dims with the one-voxel margin on every side.
    fn padded_dims(&self) -> [usize; 3] {
        [0, 1, 2].map(|k| self.hi[k] - self.lo[k] + 3)
    }
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

/// One pass over two label maps: counts, overlaps and union bounding boxes of all classes.
pub(crate) fn label_stats<L: Label>(
    pred: &[L],
    gt: &[L],
    dims: [usize; 3],
    num_classes: usize,
) -> Vec<ClassStats> {
    let [n0, n1, n2] = dims;
    let slab = n1 * n2;
    let identity = || (vec![ClassStats::EMPTY; num_classes], vec![usize::MAX; num_classes]);
    (0..n0)
        .into_par_iter()
        .fold(identity, |(mut st, mut mark), i0| {
            for i1 in 0..n1 {
                let row = i0 * slab + i1 * n2;
                let row_id = i0 * n1 + i1;
                let (pr, gr) = (&pred[row..row + n2], &gt[row..row + n2]);
                for (i2, (p, g)) in pr.iter().zip(gr).enumerate() {
                    let (p, g) = (p.index(), g.index());
                    for (c, is_pred) in [(p, true), (g, false)] {
                        if !is_pred && c == p {
                            continue; // already placed in the box via the prediction
                        }
                        let s = &mut st[c];
                        if mark[c] != row_id {
                            mark[c] = row_id;
                            s.include_row(i0, i1);
                        }
                        s.lo[2] = s.lo[2].min(i2);
                        s.hi[2] = s.hi[2].max(i2);
                    }
                    st[p].pred += 1;
                    st[g].gt += 1;
                    if p == g {
                        st[p].inter += 1;
                    }
                }
            }
            (st, mark)
        })
        .map(|(st, _)| st)
        .reduce(
            || vec![ClassStats::EMPTY; num_classes],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| x.merge(y));
                a
            },
        )
}

/// Counts and boxes for channel-first binary maps (`1` = inside), one channel per class.
pub(crate) fn channel_stats(
    pred: &[u8],
    gt: &[u8],
    dims: [usize; 3],
    channels: usize,
) -> Vec<ClassStats> {
    let [_, n1, n2] = dims;
    let n = dims.iter().product::<usize>();
    (0..channels)
        .into_par_iter()
        .map(|c| {
            let (pc, gc) = (&pred[c * n..(c + 1) * n], &gt[c * n..(c + 1) * n]);
            let mut s = ClassStats::EMPTY;
            for (idx, (&p, &g)) in pc.iter().zip(gc).enumerate() {
                if p == 0 && g == 0 {
                    continue;
                }
                s.pred += u64::from(p);
                s.gt += u64::from(g);
                s.inter += u64::from(p & g);
                let c3 = [idx / (n1 * n2), (idx / n2) % n1, idx % n2];
                for ((lo, hi), x) in s.lo.iter_mut().zip(s.hi.iter_mut()).zip(c3) {
                    *lo = (*lo).min(x);
                    *hi = (*hi).max(x);
                }
            }
            s
        })
        .collect()
}

/// Where the binary masks of a class come from.
pub(crate) trait MaskSource: Sync {
    /// Writes `1` where class `c` is present into the padded box `[lo-1, hi+1]` (dims `m`).
    fn fill(
        &self,
        c: usize,
        lo: [usize; 3],
        hi: [usize; 3],
        m: [usize; 3],
        pred: &mut [u8],
        gt: &mut [u8],
    );
}

/// Two label maps.
pub(crate) struct LabelPair<'a, L> {
    pub pred: &'a [L],
    pub gt: &'a [L],
    pub dims: [usize; 3],
}

impl<L: Label> MaskSource for LabelPair<'_, L> {
    fn fill(
        &self,
        c: usize,
        lo: [usize; 3],
        hi: [usize; 3],
        m: [usize; 3],
        pred: &mut [u8],
        gt: &mut [u8],
    ) {
        let [_, n1, n2] = self.dims;
        let w = hi[2] - lo[2] + 1;
        for i0 in lo[0]..=hi[0] {
            for i1 in lo[1]..=hi[1] {
                let src = (i0 * n1 + i1) * n2 + lo[2];
                let dst = ((i0 - lo[0] + 1) * m[1] + (i1 - lo[1] + 1)) * m[2] + 1;
                let (ps, gs) = (&self.pred[src..src + w], &self.gt[src..src + w]);
                for ((d, s), (dg, sg)) in
                    pred[dst..dst + w].iter_mut().zip(ps).zip(gt[dst..dst + w].iter_mut().zip(gs))
                {
                    *d = u8::from(s.index() == c);
                    *dg = u8::from(sg.index() == c);
                }
            }
        }
    }
}

/// Channel-first binary maps (`[C, n0, n1, n2]`, values 0/1).
pub(crate) struct ChannelPair<'a> {
    pub pred: &'a [u8],
    pub gt: &'a [u8],
    pub dims: [usize; 3],
}

impl MaskSource for ChannelPair<'_> {
    fn fill(
        &self,
        c: usize,
        lo: [usize; 3],
        hi: [usize; 3],
        m: [usize; 3],
        pred: &mut [u8],
        gt: &mut [u8],
    ) {
        let [n0, n1, n2] = self.dims;
        let off = c * n0 * n1 * n2;
        let w = hi[2] - lo[2] + 1;
        for i0 in lo[0]..=hi[0] {
            for i1 in lo[1]..=hi[1] {
                let src = off + (i0 * n1 + i1) * n2 + lo[2];
                let dst = ((i0 - lo[0] + 1) * m[1] + (i1 - lo[1] + 1)) * m[2] + 1;
                pred[dst..dst + w].copy_from_slice(&self.pred[src..src + w]);
                gt[dst..dst + w].copy_from_slice(&self.gt[src..src + w]);
            }
        }
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
pub(crate) fn score_classes<S: MaskSource>(
    src: &S,
    stats: &[ClassStats],
    classes: &[usize],
    spacing: [f64; 3],
    set: &CaseSettings<'_>,
) -> Vec<ClassScores> {
    // Largest boxes first, one class per rayon task, so two cores stay busy to the end.
    let mut order: Vec<usize> = (0..classes.len()).collect();
    let volume = |j: usize| {
        let s = &stats[classes[j]];
        if s.is_empty() { 0 } else { s.padded_dims().iter().product::<usize>() }
    };
    order.sort_by_key(|&j| std::cmp::Reverse(volume(j)));
    let mut scored: Vec<(usize, ClassScores)> = order
        .into_par_iter()
        .with_max_len(1)
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(pm, gm, scratch): &mut (Vec<u8>, Vec<u8>, Vec<f64>), j| {
                let c = classes[j];
                let s = &stats[c];
                let (dice, iou) = overlap_scores(s, set.ignore_empty);
                let surface = set.distances.then(|| {
                    let mut d = if s.is_empty() {
                        SurfaceDistances::default()
                    } else {
                        let m = s.padded_dims();
                        let len = m.iter().product::<usize>();
                        pm.clear();
                        pm.resize(len, 0);
                        gm.clear();
                        gm.resize(len, 0);
                        src.fill(c, s.lo, s.hi, m, pm, gm);
                        let n_pred = mark_edges(pm, m);
                        let n_gt = mark_edges(gm, m);
                        surface_distances(pm, gm, n_pred, n_gt, m, spacing, scratch)
                    };
                    surface_scores(&mut d, set.percentile, set.directed, set.tolerances[j])
                });
                let scores = ClassScores {
                    class: c,
                    dice,
                    iou,
                    gt_voxels: s.gt,
                    pred_voxels: s.pred,
                    surface,
                };
                (j, scores)
            },
        )
        .collect();
    scored.sort_by_key(|(j, _)| *j);
    scored.into_iter().map(|(_, s)| s).collect()
}
