//! Run outputs: `metrics.csv`, `loss.png` (total and the three terms, log scale) and the
//! reconstruction panels `recon/step_NNNNNN.png` (mid-slices of the rotated input, the augmented
//! input the network saw and its reconstruction). Drawn with medseg-run's `picture` module;
//! atomic writes.
use std::fmt::Write as _;
use std::path::Path;

use medseg_run::picture::{Figure, PlotSpec, Row, Series, line_plot, slice_figure};

use crate::Result;

/// One logged step (a row of `metrics.csv`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRow {
    /// Optimiser step (1-based).
    pub step: u64,
    /// Epoch of the step's batch.
    pub epoch: u64,
    /// Total loss.
    pub loss: f64,
    /// Weighted rotation cross-entropy.
    pub rot: f64,
    /// Weighted contrastive loss.
    pub contrast: f64,
    /// Weighted L1 reconstruction loss.
    pub recon: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds since the start of the run (cumulative over resumes).
    pub elapsed_s: f64,
    /// Mean validation total loss, when this step validated.
    pub val_loss: Option<f64>,
    /// Mean validation reconstruction loss (the research model-selection criterion).
    pub val_recon: Option<f64>,
    /// Participation ratio of the encoder's normalised hidden states, stages 0–4, on the clean
    /// validation volumes ([`crate::participation_ratio`]); near 1 = collapsed features.
    #[serde(default)]
    pub val_feature_pr: Option<[f64; 5]>,
}

/// `metrics.csv`.
pub fn metrics_csv(rows: &[LogRow]) -> String {
    let mut s = String::from(
        "step,epoch,loss,rot,contrast,recon,lr,grad_norm,elapsed_s,val_loss,val_recon,\
         val_pr0,val_pr1,val_pr2,val_pr3,val_pr4\n",
    );
    for r in rows {
        let _ = write!(
            s,
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.6e},{:.4},{:.1},",
            r.step, r.epoch, r.loss, r.rot, r.contrast, r.recon, r.lr, r.grad_norm, r.elapsed_s
        );
        if let Some(v) = r.val_loss {
            let _ = write!(s, "{v:.6}");
        }
        s.push(',');
        if let Some(v) = r.val_recon {
            let _ = write!(s, "{v:.6}");
        }
        match r.val_feature_pr {
            Some(pr) => pr.iter().for_each(|p| {
                let _ = write!(s, ",{p:.3}");
            }),
            None => s.push_str(",,,,,"),
        }
        s.push('\n');
    }
    s
}

/// `loss.png`: total, rotation, contrastive and reconstruction losses and the validation
/// reconstruction loss per step, log scale, with a legend.
pub fn loss_plot(path: &Path, rows: &[LogRow]) -> Result<()> {
    let s = |label: &str, f: &dyn Fn(&LogRow) -> f64| Series {
        label: label.into(),
        points: rows.iter().map(|r| (r.step as f64, f(r))).collect(),
    };
    let val = Series {
        label: "validation reconstruction".into(),
        points: rows.iter().filter_map(|r| Some((r.step as f64, r.val_recon?))).collect(),
    };
    let series = [
        s("total", &|r| r.loss),
        s("rotation (weighted)", &|r| r.rot),
        s("contrastive (weighted)", &|r| r.contrast),
        s("reconstruction (weighted)", &|r| r.recon),
        val,
    ];
    let spec = PlotSpec {
        title: "Pretraining losses",
        x_label: "optimiser step",
        y_label: "loss (log scale)",
        log_y: true,
        y_range: None,
        series: &series,
    };
    Ok(line_plot(path, &spec)?)
}

/// Three rows (the rotated input, the augmented input the network saw, its reconstruction) of
/// three mid-slices of one sample `[X, Y, Z]`; values clamped to `[0, 1]`. The views are
/// rotated by the pretext task, so the panels carry no orientation letters.
pub fn recon_png(
    path: &Path,
    target: &[f32],
    input: &[f32],
    rec: &[f32],
    dims: [usize; 3],
) -> Result<()> {
    let stem = path.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
    let fig = Figure {
        title: format!("Reconstruction of validation crop 1, {stem}"),
        dims,
        axcodes: None,
        rows: vec![
            Row { title: "target: rotated crop".into(), image: target, labels: None },
            Row { title: "network input: after cutout".into(), image: input, labels: None },
            Row { title: "reconstruction".into(), image: rec, labels: None },
        ],
        class_names: &[],
    };
    Ok(slice_figure(path, &fig)?)
}
