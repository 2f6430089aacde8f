//! Per-run outputs: `metrics.csv`, PNG loss / Dice curves, PNG overlays of mid-slices and the
//! final Markdown report. Images are drawn into RGB buffers by hand and encoded with `png`; every
//! file is written atomically.
use std::fmt::Write as _;
use std::path::Path;

use crate::checkpoint::{LogRow, write_atomic};
use crate::{Error, Result};

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

/// An RGB image.
#[derive(Debug, Clone)]
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `bg`.
    pub fn new(w: usize, h: usize, bg: [u8; 3]) -> Self {
        let mut px = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            px.extend_from_slice(&bg);
        }
        Canvas { w, h, px }
    }

    /// Sets one pixel (ignored outside).
    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line (Bresenham), 2 px wide.
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Encodes as PNG and writes atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let perr = |e: png::EncodingError| Error::Png {
                path: path.to_path_buf(),
                reason: e.to_string(),
            };
            let mut wr = enc.write_header().map_err(perr)?;
            wr.write_image_data(&self.px).map_err(perr)?;
        }
        write_atomic(path, &buf)
    }
}

/// Distinct colours for series and classes (class `i` uses `PALETTE[i % len]`).
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
    [227, 119, 194],
    [188, 189, 34],
];

/// A line plot of `series` (x, y) on a white 640×400 canvas with axes and a light grid of 10 %
/// steps; `log_y` plots log10(y). Returns the (x, y) ranges drawn, for captions.
pub fn plot(path: &Path, series: &[Vec<(f64, f64)>], log_y: bool) -> Result<[(f64, f64); 2]> {
    let (w, h, m) = (640usize, 400usize, 40i64);
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    let tf = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
    let pts: Vec<(f64, f64)> =
        series.iter().flatten().map(|&(x, y)| (x, tf(y))).filter(|p| p.1.is_finite()).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = ((w as i64 - 2 * m) as f64, (h as i64 - 2 * m) as f64);
    let px = |x: f64| m + ((x - x0) / (x1 - x0) * pw).round() as i64;
    let py = |y: f64| h as i64 - m - ((y - y0) / (y1 - y0) * ph).round() as i64;
    for k in 0..=10 {
        let gx = m + (pw * f64::from(k) / 10.0) as i64;
        let gy = m + (ph * f64::from(k) / 10.0) as i64;
        c.line((gx, m), (gx, h as i64 - m), [235, 235, 235]);
        c.line((m, gy), (w as i64 - m, gy), [235, 235, 235]);
    }
    c.line((m, h as i64 - m), (w as i64 - m, h as i64 - m), [0, 0, 0]);
    c.line((m, m), (m, h as i64 - m), [0, 0, 0]);
    for (i, s) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let p: Vec<(i64, i64)> =
            s.iter().filter(|q| tf(q.1).is_finite()).map(|&(x, y)| (px(x), py(tf(y)))).collect();
        for win in p.windows(2) {
            c.line(win[0], win[1], col);
        }
        if p.len() == 1 {
            c.line(p[0], (p[0].0 + 1, p[0].1), col);
        }
    }
    c.save(path)?;
    Ok([(x0, x1), (y0, y1)])
}

/// One overlay panel: width, height and the volume index of pixel `(x, y)`.
type Panel<'a> = (usize, usize, Box<dyn Fn(usize, usize) -> usize + 'a>);

/// Mid-slice overlays of one case: three panels (axial, coronal, sagittal planes of the
/// `(D, H, W)` grid) per row, ground truth on top, prediction below, classes coloured with
/// [`PALETTE`] at 50 % over the image (`image` scaled to `[0, 1]`).
pub fn overlay(path: &Path, image: &[f32], pred: &[u8], gt: &[u8], dims: [usize; 3]) -> Result<()> {
    let [d, h, w] = dims;
    let at = move |i: usize, j: usize, k: usize| (i * h + j) * w + k;
    // (width, height, index fn) per panel: fixing D (axial), H (coronal), W (sagittal)
    let panels: [Panel<'_>; 3] = [
        (w, h, Box::new(move |x, y| at(d / 2, y, x))),
        (w, d, Box::new(move |x, y| at(y, h / 2, x))),
        (h, d, Box::new(move |x, y| at(y, x, w / 2))),
    ];
    let scale = 3usize;
    let total_w: usize = panels.iter().map(|p| p.0 * scale + 4).sum();
    let row_h = panels.iter().map(|p| p.1).max().unwrap_or(1) * scale + 4;
    let mut c = Canvas::new(total_w, 2 * row_h, [0, 0, 0]);
    for (row, lab) in [gt, pred].iter().enumerate() {
        let mut ox = 0usize;
        for (pw, ph, idx) in &panels {
            for y in 0..*ph {
                for x in 0..*pw {
                    let i = idx(x, y);
                    let g = (image.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0) * 255.0) as u8;
                    let l = lab.get(i).copied().unwrap_or(0);
                    let col = if l == 0 {
                        [g, g, g]
                    } else {
                        let p = PALETTE[usize::from(l - 1) % PALETTE.len()];
                        std::array::from_fn(|k| ((u16::from(g) + u16::from(p[k])) / 2) as u8)
                    };
                    for sy in 0..scale {
                        for sx in 0..scale {
                            // image rows top-down with the last axis to the right
                            let yy = row * row_h + (ph - 1 - y) * scale + sy;
                            c.set((ox + x * scale + sx) as i64, yy as i64, col);
                        }
                    }
                }
            }
            ox += pw * scale + 4;
        }
    }
    c.save(path)
}
