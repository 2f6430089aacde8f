//! Run outputs: `metrics.csv`, `loss.png` (total and the three terms, log10) and the
//! reconstruction panels `recon/step_NNNNNN.png` (mid-slices of the rotated input, the augmented
//! input the network saw and its reconstruction). Drawn with medseg-train's canvas; atomic writes.
use std::fmt::Write as _;
use std::path::Path;

use medseg_train::output::{Canvas, plot};

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

/// `loss.png`: total (blue), rotation (red), contrastive (green), reconstruction (orange),
/// validation reconstruction (purple), log10 scale.
pub fn loss_plot(path: &Path, rows: &[LogRow]) -> Result<()> {
    let s = |f: &dyn Fn(&LogRow) -> f64| rows.iter().map(|r| (r.step as f64, f(r))).collect();
    let val: Vec<(f64, f64)> =
        rows.iter().filter_map(|r| Some((r.step as f64, r.val_recon?))).collect();
    plot(path, &[s(&|r| r.loss), s(&|r| r.rot), s(&|r| r.contrast), s(&|r| r.recon), val], true)?;
    Ok(())
}

/// Three rows (rotated input, augmented input, reconstruction) of two mid-slices (fixing the
/// first and the last spatial axis) of one sample `[X, Y, Z]`; values clamped to `[0, 1]`.
pub fn recon_png(
    path: &Path,
    target: &[f32],
    input: &[f32],
    rec: &[f32],
    dims: [usize; 3],
) -> Result<()> {
    let [nx, ny, nz] = dims;
    let at = |i: usize, j: usize, k: usize| (i * ny + j) * nz + k;
    let scale = 3usize;
    // panel 1: x = nx/2, (Y down, Z right); panel 2: z = nz/2, (X down, Y right)
    let panels: [(usize, usize); 2] = [(nz, ny), (ny, nx)];
    let total_w: usize = panels.iter().map(|p| p.0 * scale + 4).sum();
    let row_h = panels.iter().map(|p| p.1).max().unwrap_or(1) * scale + 4;
    let mut c = Canvas::new(total_w, 3 * row_h, [0, 0, 0]);
    for (row, vol) in [target, input, rec].iter().enumerate() {
        let mut ox = 0usize;
        for (pi, (pw, ph)) in panels.iter().enumerate() {
            for y in 0..*ph {
                for x in 0..*pw {
                    let i = if pi == 0 { at(nx / 2, y, x) } else { at(y, x, nz / 2) };
                    let g = (vol.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0) * 255.0) as u8;
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let yy = row * row_h + y * scale + sy;
                            c.set((ox + x * scale + sx) as i64, yy as i64, [g, g, g]);
                        }
                    }
                }
            }
            ox += pw * scale + 4;
        }
    }
    c.save(path)?;
    Ok(())
}
