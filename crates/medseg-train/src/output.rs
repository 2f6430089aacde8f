//! Per-run outputs: `metrics.csv`, the loss and Dice plots and the validation overlays, drawn
//! with medseg-run's `picture` module; every file is written atomically.
use std::fmt::Write as _;
use std::path::Path;

use medseg_run::picture::{Figure, PlotSpec, Row, Series, line_plot, slice_figure};

use crate::Result;
use crate::checkpoint::LogRow;

/// `metrics.csv`: `step,epoch,loss,lr,grad_norm,elapsed_s,val_mean_dice,dice_<class>...`
/// (validation columns empty on steps without validation).
pub fn metrics_csv(rows: &[LogRow], class_names: &[String]) -> String {
    let mut s = String::from("step,epoch,loss,lr,grad_norm,elapsed_s,val_mean_dice");
    for n in class_names {
        let _ = write!(s, ",dice_{n}");
    }
    s.push('\n');
    for r in rows {
        let _ = write!(
            s,
            "{},{},{:.6},{:.6e},{:.4},{:.1},",
            r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.elapsed_s
        );
        if let Some(m) = r.val_mean_dice {
            let _ = write!(s, "{m:.4}");
        }
        for j in 0..class_names.len() {
            s.push(',');
            if let Some(d) = r.val_dice.as_ref().and_then(|v| v.get(j)) {
                let _ = write!(s, "{d:.4}");
            }
        }
        s.push('\n');
    }
    s
}

/// `loss.png`: the training loss per optimiser step on a log axis.
pub fn loss_plot(path: &Path, rows: &[LogRow]) -> Result<()> {
    let series = [Series {
        label: "training loss (mean of the step's micro-batches)".into(),
        points: rows.iter().map(|r| (r.step as f64, r.loss)).collect(),
    }];
    let spec = PlotSpec {
        title: "Training loss",
        x_label: "optimiser step",
        y_label: "loss (log scale)",
        log_y: true,
        y_range: None,
        series: &series,
    };
    Ok(line_plot(path, &spec)?)
}

/// `dice.png`: validation Dice per step, the mean first, then one line per foreground class.
pub fn dice_plot(path: &Path, rows: &[LogRow], class_names: &[String]) -> Result<()> {
    let val: Vec<&LogRow> = rows.iter().filter(|r| r.val_dice.is_some()).collect();
    let mut series = vec![Series {
        label: "mean Dice".into(),
        points: val.iter().filter_map(|r| Some((r.step as f64, r.val_mean_dice?))).collect(),
    }];
    for (j, name) in class_names.iter().enumerate() {
        series.push(Series {
            label: name.clone(),
            points: val
                .iter()
                .filter_map(|r| Some((r.step as f64, *r.val_dice.as_ref()?.get(j)?)))
                .collect(),
        });
    }
    let spec = PlotSpec {
        title: "Validation Dice",
        x_label: "optimiser step",
        y_label: "Dice",
        log_y: false,
        y_range: Some((0.0, 1.0)),
        series: &series,
    };
    Ok(line_plot(path, &spec)?)
}

/// Mid-slice overlays of one validation case (`(D, H, W)` grid in RAS orientation, as the
/// validation transforms leave it; `image` scaled to `[0, 1]`): a ground-truth row above a
/// prediction row, each with axial, coronal and sagittal panels in radiological display
/// convention and a legend naming the classes (`class_names` by label value).
pub fn overlay(
    path: &Path,
    image: &[f32],
    pred: &[u8],
    gt: &[u8],
    dims: [usize; 3],
    class_names: &[String],
) -> Result<()> {
    let stem = path.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
    let fig = Figure {
        title: format!("Validation case 1, {stem}"),
        dims,
        axcodes: Some("RAS"),
        rows: vec![
            Row { title: "ground truth".into(), image, labels: Some(gt) },
            Row { title: "prediction".into(), image, labels: Some(pred) },
        ],
        class_names,
    };
    Ok(slice_figure(path, &fig)?)
}
