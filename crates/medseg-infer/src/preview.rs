//! The `medseg predict --preview` picture: axial, coronal and sagittal slices through the centre
//! of the label map's foreground bounding box, the label map at 50 % over the image and a legend
//! of the class names, drawn with medseg-run's picture module (the training overlays' canvas,
//! font and colours). Panels are sampled along world directions from the volume's affine, so the
//! radiological convention holds for any stored orientation: axial with anterior up and the
//! patient's right on the image's left, coronal and sagittal with the head up.
use std::path::Path;

use medseg_data::Volume;
use medseg_run::picture::{Figure, Row, WorldView, slice_figure_world};

use crate::Result;

/// Longest panel side of the preview in pixels.
pub const PANEL_PX: usize = 320;

/// The display window of `image`: a CT (any voxel ≤ −500, i.e. air in HU) gets the soft-tissue
/// window W 400 / L 40 (−160…240 HU); other images their 0.5–99.5 % percentiles.
pub fn display_window(image: &[f32]) -> (f32, f32, &'static str) {
    if image.iter().any(|&v| v <= -500.0) {
        return (-160.0, 240.0, "CT window -160..240 HU");
    }
    let mut v: Vec<f32> = image.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0, "no finite values");
    }
    let at = |q: f64, v: &mut Vec<f32>| {
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        *v.select_nth_unstable_by(i, f32::total_cmp).1
    };
    let (lo, hi) = (at(0.005, &mut v), at(0.995, &mut v));
    (lo, if hi > lo { hi } else { lo + 1.0 }, "window 0.5-99.5 %")
}

/// The voxel-index centre of the bounding box of the labels ≠ 0 (`None` without foreground).
pub fn foreground_centre(labels: &Volume<u8>) -> Option<[f64; 3]> {
    let [_, n1, n2] = labels.shape();
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for (v, &l) in labels.data().iter().enumerate() {
        if l == 0 {
            continue;
        }
        let p = [v / (n1 * n2), v / n2 % n1, v % n2];
        for d in 0..3 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    (lo[0] != usize::MAX).then(|| std::array::from_fn(|d| (lo[d] + hi[d]) as f64 / 2.0))
}

/// Draws the preview of `labels` over `image` (same grid) to `path` (PNG, written atomically).
pub fn write_preview(
    path: &Path,
    image: &Volume<f32>,
    labels: &Volume<u8>,
    names: &[String],
    title: &str,
) -> Result<()> {
    let dims = image.shape();
    let centre_ijk = foreground_centre(labels)
        .unwrap_or_else(|| std::array::from_fn(|d| (dims[d].saturating_sub(1)) as f64 / 2.0));
    let centre = image.affine.apply(centre_ijk);
    let (lo, hi, window) = display_window(image.data());
    let shown: Vec<f32> = image.data().iter().map(|&v| (v - lo) / (hi - lo)).collect();
    let fig = Figure {
        title: title.to_string(),
        dims,
        axcodes: None,
        rows: vec![Row {
            title: format!("prediction ({window})"),
            image: &shown,
            labels: Some(labels.data()),
        }],
        class_names: names,
    };
    let view = WorldView { affine: image.affine, centre, panel_px: PANEL_PX };
    Ok(slice_figure_world(path, &fig, &view)?)
}
