//! Line plots a person can read: a title, axis labels, numbered ticks on both axes (powers of
//! ten and their 2·/5· multiples on a log axis), a light grid and a legend in the emptiest
//! corner of the plot area.
use std::path::Path;

use super::canvas::{Canvas, GLYPH, PALETTE};
use crate::Result;

/// One line of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its name in the legend.
    pub label: String,
    /// `(x, y)` points in order; non-finite values (and values ≤ 0 on a log axis) are skipped.
    pub points: Vec<(f64, f64)>,
}

/// What [`line_plot`] draws.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSpec<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Label under the x axis.
    pub x_label: &'a str,
    /// Label along the y axis.
    pub y_label: &'a str,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// A fixed y range (for example `(0, 1)` for Dice); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// The lines, coloured with [`PALETTE`] in order.
    pub series: &'a [Series],
}

const W: i64 = 800;
const H: i64 = 500;
const INK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];
/// Legend entries shown before `+N more`.
const LEGEND_MAX: usize = 12;

/// Round tick values covering `[lo, hi]` with about `target` steps of 1, 2 or 5 × 10^k; returns
/// the ticks inside the range and the step.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let span = (hi - lo).abs().max(f64::MIN_POSITIVE);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks = (first..=last).map(|k| k as f64 * step).collect();
    (ticks, step)
}

/// Decimal places that show values `step` apart.
fn decimals(step: f64) -> usize {
    (-step.log10().floor()).clamp(0.0, 8.0) as usize
}

fn label(v: f64, dec: usize) -> String {
    let s = format!("{v:.dec$}");
    if s.starts_with("-0") && s.trim_start_matches(['-', '0', '.']).is_empty() {
        s[1..].to_string()
    } else {
        s
    }
}

/// Ticks of a log axis over log10-range `[lo, hi]`: `(log10 position, label)`.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    if hi - lo < 0.7 {
        // Less than a decade: round values of the data itself.
        let (vals, step) = nice_ticks(10f64.powf(lo), 10f64.powf(hi), 8);
        return vals
            .into_iter()
            .filter(|v| *v > 0.0)
            .map(|v| (v.log10(), label(v, decimals(step))))
            .collect();
    }
    let decades = (hi - lo).ceil() as i64;
    let mults: &[f64] = if decades <= 3 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let every = (decades / 8 + 1).max(1);
    let mut out = Vec::new();
    for e in lo.floor() as i64..=hi.ceil() as i64 {
        if e.rem_euclid(every) != 0 {
            continue;
        }
        for m in mults {
            let v = m * 10f64.powi(e as i32);
            let p = v.log10();
            if p >= lo - 1e-9 && p <= hi + 1e-9 {
                out.push((p, label(v, decimals(10f64.powi(e as i32)))));
            }
        }
    }
    out
}

/// Draws the plot of `spec` (800×500, taller when the legend goes below) and writes it as a PNG.
pub fn line_plot(path: &Path, spec: &PlotSpec<'_>) -> Result<()> {
    draw(spec).save(path)
}

/// The plot with its legend in the emptiest corner, or, when every corner would cover a line,
/// under the plot.
fn draw(spec: &PlotSpec<'_>) -> Canvas {
    draw_with(spec, false).unwrap_or_else(|| {
        draw_with(spec, true).unwrap_or_else(|| Canvas::new(W as usize, H as usize, [255; 3]))
    })
}

/// One legend entry: the series index (`None` for "+N more") and its text.
type Entry = (Option<usize>, String);

fn legend_entries(spec: &PlotSpec<'_>) -> Vec<Entry> {
    let n = spec.series.len();
    let shown = n.min(LEGEND_MAX);
    let mut lines: Vec<Entry> =
        (0..shown).map(|i| (Some(i), spec.series[i].label.clone())).collect();
    if n > shown {
        lines.push((None, format!("+{} more", n - shown)));
    }
    lines
}

/// Width of a legend entry laid out in a row under the plot.
fn entry_w(s: &str) -> i64 {
    24 + 6 + Canvas::text_width(s, 1) as i64 + 18
}

/// Rows of entries under the plot, flowed over the canvas width.
fn strip_rows(entries: &[Entry]) -> Vec<Vec<&Entry>> {
    let mut rows: Vec<Vec<&Entry>> = Vec::new();
    let mut x = W;
    for e in entries {
        if x + entry_w(&e.1) > W - 24 {
            rows.push(Vec::new());
            x = 24;
        }
        if let Some(r) = rows.last_mut() {
            r.push(e);
        }
        x += entry_w(&e.1);
    }
    rows
}

/// Draws the plot; `None` when `below` is false and the legend would cover a line.
fn draw_with(spec: &PlotSpec<'_>, below: bool) -> Option<Canvas> {
    let entries = legend_entries(spec);
    let rows = if below { strip_rows(&entries) } else { Vec::new() };
    let strip_h = if rows.is_empty() { 0 } else { 8 + 16 * rows.len() as i64 };
    let mut c = Canvas::new(W as usize, (H + strip_h) as usize, [255, 255, 255]);
    let ty = |y: f64| if spec.log_y { y.log10() } else { y };
    let series: Vec<Vec<(f64, f64)>> = spec
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|&(x, y)| (x, ty(y)))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();
    let all = series.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if let Some((a, b)) = spec.y_range {
        (y0, y1) = (ty(a), ty(b));
    } else {
        let pad = ((y1 - y0) * 0.05).max(if spec.log_y { 0.05 } else { 1e-6 });
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    let y_ticks: Vec<(f64, String)> = if spec.log_y {
        log_ticks(y0, y1)
    } else {
        let (t, step) = nice_ticks(y0, y1, 6);
        t.into_iter().map(|v| (v, label(v, decimals(step)))).collect()
    };
    let (xt, xstep) = nice_ticks(x0, x1, 8);
    let x_ticks: Vec<(f64, String)> =
        xt.into_iter().map(|v| (v, label(v, decimals(xstep)))).collect();
    // Layout: title on top, y label and tick labels on the left, x tick labels and label below.
    let tick_w = y_ticks.iter().map(|(_, s)| Canvas::text_width(s, 1)).max().unwrap_or(8) as i64;
    let (left, right, top, bottom) = (12 + 16 + 8 + tick_w + 6, W - 24, 44, H - 52);
    let (pw, ph) = ((right - left) as f64, (bottom - top) as f64);
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * pw).round() as i64;
    let py = |y: f64| bottom - ((y - y0) / (y1 - y0) * ph).round() as i64;
    for (v, s) in &y_ticks {
        let y = py(*v);
        c.line((left, y), (right, y), GRID, 1);
        c.line((left - 5, y), (left, y), INK, 1);
        let tw = Canvas::text_width(s, 1) as i64;
        c.text(left - 8 - tw, y - 4, s, INK, 1);
    }
    for (v, s) in &x_ticks {
        let x = px(*v);
        c.line((x, top), (x, bottom), GRID, 1);
        c.line((x, bottom), (x, bottom + 5), INK, 1);
        let tw = Canvas::text_width(s, 1) as i64;
        c.text(x - tw / 2, bottom + 9, s, INK, 1);
    }
    c.line((left, bottom), (right, bottom), INK, 1);
    c.line((left, top), (left, bottom), INK, 1);
    c.line((left, top), (right, top), INK, 1);
    c.line((right, top), (right, bottom), INK, 1);
    for (i, s) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let p: Vec<(i64, i64)> = s.iter().map(|&(x, y)| (px(x), py(y))).collect();
        for win in p.windows(2) {
            c.line(win[0], win[1], col, 2);
        }
        if p.len() == 1 {
            c.rect(p[0].0 - 2, p[0].1 - 2, 5, 5, col);
        }
    }
    let tw = Canvas::text_width(spec.title, 2) as i64;
    c.text((W - tw) / 2, 12, spec.title, INK, 2);
    let xw = Canvas::text_width(spec.x_label, 2) as i64;
    c.text(left + (right - left - xw) / 2, H - 26, spec.x_label, INK, 2);
    let yh = Canvas::text_width(spec.y_label, 2) as i64;
    c.text_up(12, top + (bottom - top - yh) / 2, spec.y_label, INK, 2);
    if below {
        for (k, row) in rows.iter().enumerate() {
            let y = H + 4 + 16 * k as i64;
            let mut x = 24;
            for (i, s) in row.iter().map(|e| (e.0, &e.1)) {
                if let Some(i) = i {
                    c.rect(x, y + 3, 24, 3, PALETTE[i % PALETTE.len()]);
                }
                c.text(x + 30, y, s, INK, 1);
                x += entry_w(s);
            }
        }
        return Some(c);
    }
    legend(&mut c, &entries, &series, (left, top, right, bottom), (px, py)).then_some(c)
}

/// The legend box, in a corner of the plot area that covers no line; false (nothing drawn)
/// when every corner would.
fn legend(
    c: &mut Canvas,
    lines: &[Entry],
    series: &[Vec<(f64, f64)>],
    (left, top, right, bottom): (i64, i64, i64, i64),
    (px, py): (impl Fn(f64) -> i64, impl Fn(f64) -> i64),
) -> bool {
    if lines.is_empty() {
        return true;
    }
    let row = (GLYPH + 6) as i64;
    let text_w = lines.iter().map(|(_, s)| Canvas::text_width(s, 1)).max().unwrap_or(0) as i64;
    let (bw, bh) = (8 + 24 + 6 + text_w + 8, 6 + row * lines.len() as i64 + 2);
    let corners = [
        (right - bw - 8, top + 8),
        (left + 8, top + 8),
        (right - bw - 8, bottom - bh - 8),
        (left + 8, bottom - bh - 8),
    ];
    // Pixels of every drawn line, sampled along each segment.
    let mut drawn: Vec<(i64, i64)> = Vec::new();
    for s in series {
        let p: Vec<(i64, i64)> = s.iter().map(|&(x, y)| (px(x), py(y))).collect();
        drawn.extend(p.first());
        for w in p.windows(2) {
            let n = ((w[1].0 - w[0].0).abs().max((w[1].1 - w[0].1).abs()) / 4).max(1);
            for k in 1..=n {
                let t = k as f64 / n as f64;
                let lerp = |a: i64, b: i64| a + ((b - a) as f64 * t).round() as i64;
                drawn.push((lerp(w[0].0, w[1].0), lerp(w[0].1, w[1].1)));
            }
        }
    }
    let inside = |&(x, y): &(i64, i64)| {
        drawn.iter().filter(|&&(qx, qy)| qx >= x && qx < x + bw && qy >= y && qy < y + bh).count()
    };
    let (bx, by) = corners.iter().copied().min_by_key(|p| inside(p)).unwrap_or(corners[0]);
    if inside(&(bx, by)) > 0 {
        return false;
    }
    c.rect(bx, by, bw, bh, [255, 255, 255]);
    for (a, b) in [((bx, by), (bx + bw, by)), ((bx, by + bh), (bx + bw, by + bh))] {
        c.line(a, b, [150; 3], 1);
    }
    c.line((bx, by), (bx, by + bh), [150; 3], 1);
    c.line((bx + bw, by), (bx + bw, by + bh), [150; 3], 1);
    for (k, (i, s)) in lines.iter().enumerate() {
        let y = by + 6 + row * k as i64;
        if let Some(i) = i {
            let col = PALETTE[i % PALETTE.len()];
            c.rect(bx + 8, y + 3, 24, 3, col);
        }
        c.text(bx + 8 + 24 + 6, y, s, INK, 1);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (t, s) = nice_ticks(0.0, 250.0, 8);
        assert_eq!(s, 50.0);
        assert_eq!(t, vec![0.0, 50.0, 100.0, 150.0, 200.0, 250.0]);
        let (t, s) = nice_ticks(0.13, 0.91, 6);
        assert_eq!(s, 0.2);
        assert_eq!(t.len(), 4);
        assert_eq!(label(0.2 * 2.0, decimals(s)), "0.4");
        let lt = log_ticks(-2.3, 0.4);
        let names: Vec<&str> = lt.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(names, ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"]);
        // A loss falling from 2.9 to 1.8: enough numbered ticks to read values off.
        let narrow = log_ticks(1.8f64.log10(), 2.9f64.log10());
        let names: Vec<&str> = narrow.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(names, ["1.8", "2.0", "2.2", "2.4", "2.6", "2.8"]);
        let few = log_ticks(0.1, 0.5);
        assert!(few.len() >= 2 && few.iter().all(|(p, _)| (0.1..=0.5).contains(p)), "{few:?}");
    }

    #[test]
    fn the_legend_never_covers_a_line() {
        let spec = |series| PlotSpec {
            title: "t",
            x_label: "x",
            y_label: "y",
            log_y: false,
            y_range: None,
            series,
        };
        let falling = [Series { label: "a".into(), points: vec![(0.0, 1.0), (1.0, 0.0)] }];
        assert_eq!(draw(&spec(&falling)).height(), H as usize, "a free corner: legend inside");
        // Two diagonals through all four corners: the legend goes under the plot.
        let cross = [
            Series { label: "up".into(), points: vec![(0.0, 0.0), (1.0, 1.0)] },
            Series { label: "down".into(), points: vec![(0.0, 1.0), (1.0, 0.0)] },
        ];
        assert!(draw(&spec(&cross)).height() > H as usize);
    }

    #[test]
    fn a_plot_draws_every_series_colour_and_text() {
        let series = vec![
            Series { label: "train".into(), points: vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)] },
            Series { label: "val".into(), points: vec![(3.0, 0.7)] },
        ];
        let spec = PlotSpec {
            title: "loss",
            x_label: "step",
            y_label: "loss",
            log_y: true,
            y_range: None,
            series: &series,
        };
        let c = draw(&spec);
        let has = |col: [u8; 3]| {
            (0..c.height()).any(|y| (0..c.width()).any(|x| c.get(x, y) == Some(col)))
        };
        assert!(has(PALETTE[0]) && has(PALETTE[1]) && has(INK));
    }
}
