//! The accumulating metric: `update` once per case, `compute` a [`Report`], `reset`.
//! Mirrors MONAI `CumulativeIterationMetric` (and burn's `Metric`) on plain label buffers.
use crate::case::{
    CaseSettings, ChannelPair, ClassScores, Label, LabelPair, channel_stats, check_labels,
    label_stats, score_classes,
};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::report::Report;

/// What to compute; field names follow the MONAI arguments they mirror.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Number of classes including background `0`; every label must be below it.
    pub num_classes: usize,
    /// Also score class `0`. MONAI's `DiceMetric` defaults to `true`, its distance metrics to
    /// `false`; here one flag serves all metrics and [`MetricsConfig::new`] sets `false`.
    pub include_background: bool,
    /// MONAI `ignore_empty`: Dice/IoU are NaN when the ground truth of a class is empty (`true`), or
    /// 1 / 0 depending on whether the prediction is empty too (`false`).
    pub ignore_empty: bool,
    /// Compute the surface metrics (HD, HD95, ASSD, NSD); Dice/IoU alone need one counting pass.
    pub distances: bool,
    /// Percentile of the `hd95` field, MONAI `percentile` (0 means max, as in MONAI).
    pub percentile: f64,
    /// MONAI `directed`: HD/HD95 from prediction to ground truth only.
    pub directed: bool,
    /// NSD tolerance τ in spacing units (mm for NIfTI): one value for all classes, or one per
    /// evaluated class (MONAI `class_thresholds`).
    pub nsd_tolerance: Vec<f64>,
}

impl MetricsConfig {
    /// MONAI defaults (background excluded, `ignore_empty`, HD95, symmetric) with all metrics on
    /// and one NSD tolerance for every class.
    pub fn new(num_classes: usize, nsd_tolerance: f64) -> Self {
        Self {
            num_classes,
            include_background: false,
            ignore_empty: true,
            distances: true,
            percentile: 95.0,
            directed: false,
            nsd_tolerance: vec![nsd_tolerance],
        }
    }

    /// The class indices that are scored, in order.
    pub fn classes(&self) -> Vec<usize> {
        let first = usize::from(!self.include_background);
        (first..self.num_classes).collect()
    }

    /// Checks the cross-field rules; called by [`SegmentationMetric::new`].
    pub fn validate(&self) -> Result<()> {
        if self.num_classes == 0 || self.num_classes > 65536 {
            return Err(Error::InvalidNumClasses { num_classes: self.num_classes });
        }
        if !(0.0..=100.0).contains(&self.percentile) {
            return Err(Error::InvalidPercentile(self.percentile));
        }
        let n = self.classes().len();
        let t = &self.nsd_tolerance;
        if t.len() != 1 && t.len() != n {
            return Err(Error::InvalidTolerance(format!(
                "{} values given for {n} evaluated classes (give 1 or {n})",
                t.len()
            )));
        }
        if let Some((i, v)) = t.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0) {
            return Err(Error::InvalidTolerance(format!(
                "entry {i} is {v}; tolerances must be finite and >= 0"
            )));
        }
        Ok(())
    }

    fn tolerances(&self) -> Vec<f64> {
        let n = self.classes().len();
        if self.nsd_tolerance.len() == 1 {
            vec![self.nsd_tolerance[0]; n]
        } else {
            self.nsd_tolerance.clone()
        }
    }
}

/// How channel-first probability / one-hot maps become masks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Binarize {
    /// Channel `c` is class `c` where its value is `> t` (MONAI `threshold=True` uses 0.5); channels
    /// may overlap, as MONAI's one-hot inputs may.
    Threshold(f32),
    /// Class = arg-max over channels (first maximum on ties, as `torch.argmax`).
    Argmax,
}

/// Scores of every evaluated class in one case.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaseScores {
    /// Case name (file stem in `eval`, `case_<i>` when not given).
    pub name: String,
    /// Volume dims `[n0, n1, n2]`.
    pub dims: [usize; 3],
    /// Voxel spacing aligned with `dims`.
    pub spacing: [f64; 3],
    /// One entry per evaluated class, in class order.
    pub classes: Vec<ClassScores>,
}

/// Accumulating segmentation metric: Dice, IoU, HD, HD95, ASSD and NSD per case and class.
///
/// # Layout
/// Every volume is a C-order buffer of dims `[n0, n1, n2]` (last axis contiguous) with `spacing[k]`
/// the voxel size along axis `k`. A NIfTI array read as stored (x fastest) is `[nz, ny, nx]` with
/// spacing `[dz, dy, dx]`.
#[derive(Debug, Clone)]
pub struct SegmentationMetric {
    cfg: MetricsConfig,
    classes: Vec<usize>,
    tolerances: Vec<f64>,
    cases: Vec<CaseScores>,
}

impl SegmentationMetric {
    /// Validates `cfg` and starts with no cases.
    pub fn new(cfg: MetricsConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { classes: cfg.classes(), tolerances: cfg.tolerances(), cfg, cases: Vec::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &MetricsConfig {
        &self.cfg
    }

    /// Cases scored so far.
    pub fn cases(&self) -> &[CaseScores] {
        &self.cases
    }

    /// Scores one case of label maps and stores it (named `case_<i>`).
    pub fn update<L: Label>(
        &mut self,
        pred: &[L],
        gt: &[L],
        dims: [usize; 3],
        spacing: [f64; 3],
    ) -> Result<&CaseScores> {
        let name = format!("case_{}", self.cases.len());
        self.update_named(&name, pred, gt, dims, spacing)
    }

    /// As [`SegmentationMetric::update`], with a case name for the report.
    pub fn update_named<L: Label>(
        &mut self,
        name: &str,
        pred: &[L],
        gt: &[L],
        dims: [usize; 3],
        spacing: [f64; 3],
    ) -> Result<&CaseScores> {
        let scores = self.score_labels(name, pred, gt, dims, spacing)?;
        self.cases.push(scores);
        Ok(&self.cases[self.cases.len() - 1])
    }

    /// Scores a case without storing it.
    pub fn score_labels<L: Label>(
        &self,
        name: &str,
        pred: &[L],
        gt: &[L],
        dims: [usize; 3],
        spacing: [f64; 3],
    ) -> Result<CaseScores> {
        check_geometry(pred.len(), "prediction", dims, spacing)?;
        check_geometry(gt.len(), "ground truth", dims, spacing)?;
        check_labels(pred, self.cfg.num_classes, "prediction")?;
        check_labels(gt, self.cfg.num_classes, "ground truth")?;
        let stats = label_stats(pred, gt, self.cfg.num_classes);
        let src = LabelPair { pred, gt, dims };
        let classes = score_classes(&src, &stats, &self.classes, dims, spacing, &self.settings());
        Ok(CaseScores { name: name.to_string(), dims, spacing, classes })
    }

    /// Scores one case of channel-first maps `[C, n0, n1, n2]` with `C == num_classes` (one-hot or
    /// probabilities), binarised by `binarize`; NaN anywhere is an error.
    pub fn update_channels(
        &mut self,
        name: &str,
        pred: &[f32],
        gt: &[f32],
        dims: [usize; 3],
        spacing: [f64; 3],
        binarize: Binarize,
    ) -> Result<&CaseScores> {
        let c = self.cfg.num_classes;
        let n: usize = dims.iter().product();
        check_geometry(n, "volume", dims, spacing)?;
        for (what, buf) in [("prediction", pred), ("ground truth", gt)] {
            if buf.len() != c * n {
                return Err(Error::ChannelLen { what, len: buf.len(), channels: c, voxels: n });
            }
            if let Some(i) = buf.iter().position(|v| v.is_nan()) {
                return Err(Error::NanProbability { what, channel: i / n, index: i % n });
            }
        }
        let scores = match binarize {
            Binarize::Argmax => {
                let (p, g) = (argmax_channels(pred, c), argmax_channels(gt, c));
                self.score_labels(name, &p, &g, dims, spacing)?
            }
            Binarize::Threshold(t) => {
                if !t.is_finite() {
                    return Err(Error::InvalidThreshold(t));
                }
                let p: Vec<u8> = pred.iter().map(|&v| u8::from(v > t)).collect();
                let g: Vec<u8> = gt.iter().map(|&v| u8::from(v > t)).collect();
                let stats = channel_stats(&p, &g, n, c);
                let src = ChannelPair { pred: &p, gt: &g, dims };
                let classes =
                    score_classes(&src, &stats, &self.classes, dims, spacing, &self.settings());
                CaseScores { name: name.to_string(), dims, spacing, classes }
            }
        };
        self.cases.push(scores);
        Ok(&self.cases[self.cases.len() - 1])
    }

    /// Adds an already scored case (for example from [`SegmentationMetric::score_labels`] run in
    /// parallel elsewhere).
    pub fn push(&mut self, case: CaseScores) {
        self.cases.push(case);
    }

    /// Per-case tables, per-class means and the overall mean, reduced as MONAI does.
    pub fn compute(&self) -> Report {
        Report::new(self.cfg.clone(), self.cases.clone())
    }

    /// Forgets all cases.
    pub fn reset(&mut self) {
        self.cases.clear();
    }

    fn settings(&self) -> CaseSettings<'_> {
        CaseSettings {
            ignore_empty: self.cfg.ignore_empty,
            distances: self.cfg.distances,
            percentile: self.cfg.percentile,
            directed: self.cfg.directed,
            tolerances: &self.tolerances,
        }
    }
}

fn check_geometry(
    len: usize,
    what: &'static str,
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Result<()> {
    if dims.contains(&0) {
        return Err(Error::EmptyVolume { dims });
    }
    let expected = dims.iter().product();
    if len != expected {
        return Err(Error::BufferLen { what, len, dims, expected });
    }
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(Error::InvalidSpacing { spacing });
    }
    Ok(())
}

/// Per voxel, the first channel holding the maximum (`torch.argmax`) of a channel-major
/// `[channels · n]` buffer: the one argmax of the workspace (the training validation, `medseg
/// predict` and the channel input of [`SegmentationMetric`] all use it). Runs in parallel over
/// blocks of voxels. Empty when `channels` is 0.
pub fn argmax_channels(buf: &[f32], channels: usize) -> Vec<u16> {
    if channels == 0 {
        return Vec::new();
    }
    let n = buf.len() / channels;
    let mut best = vec![0u16; n];
    const BLOCK: usize = 1 << 14;
    best.par_chunks_mut(BLOCK).enumerate().for_each(|(bi, out)| {
        let at = bi * BLOCK;
        let mut val: Vec<f32> = buf[at..at + out.len()].to_vec();
        for c in 1..channels {
            let row = &buf[c * n + at..][..out.len()];
            for ((b, v), &x) in out.iter_mut().zip(val.iter_mut()).zip(row) {
                if x > *v {
                    *v = x;
                    *b = c as u16;
                }
            }
        }
    });
    best
}
