//! Figures of three orthogonal mid-slices (axial, coronal, sagittal) per row, in the
//! radiological display convention: axial with anterior up and the patient's right on the
//! image's left, coronal with the head up and the patient's right on the left, sagittal with the
//! head up and anterior on the left. Each row has a title (e.g. "ground truth", "prediction"),
//! each panel its orientation letters, and label maps are drawn at 50 % over the image in
//! [`class_colour`]s named in a legend.
use std::path::Path;

use medseg_data::Affine;

use super::canvas::{Canvas, class_colour};
use crate::{Error, Result};

/// One of the three slice orientations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Fixed inferior–superior coordinate.
    Axial,
    /// Fixed posterior–anterior coordinate.
    Coronal,
    /// Fixed left–right coordinate.
    Sagittal,
}

impl View {
    /// The three views, in figure order.
    pub const ALL: [View; 3] = [View::Axial, View::Coronal, View::Sagittal];

    fn name(self) -> &'static str {
        match self {
            View::Axial => "axial",
            View::Coronal => "coronal",
            View::Sagittal => "sagittal",
        }
    }

    /// The panel's name for a grid without anatomical meaning: the axis it cuts across.
    fn plain_name(self) -> String {
        let axis = match self {
            View::Axial => 2,
            View::Coronal => 1,
            View::Sagittal => 0,
        };
        format!("across axis {axis}")
    }

    /// The anatomical directions of the image's +x (rightwards) and +y (downwards).
    fn screen(self) -> (char, char) {
        match self {
            View::Axial => ('L', 'P'),
            View::Coronal => ('L', 'I'),
            View::Sagittal => ('P', 'I'),
        }
    }
}

/// One row of a [`Figure`].
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// Shown above the row.
    pub title: String,
    /// Intensities in `[0, 1]` (clamped), C order over `dims`.
    pub image: &'a [f32],
    /// A label map drawn over the image (0 = background), C order over `dims`.
    pub labels: Option<&'a [u8]>,
}

/// A figure for [`slice_figure`].
#[derive(Debug, Clone)]
pub struct Figure<'a> {
    /// Shown on top.
    pub title: String,
    /// The grid of every row's volume.
    pub dims: [usize; 3],
    /// nibabel axis codes of the grid (`"RAS"`: +i right, +j anterior, +k superior); `None`
    /// when the grid has no anatomical meaning (then it is drawn as if RAS, without letters).
    pub axcodes: Option<&'a str>,
    /// The rows.
    pub rows: Vec<Row<'a>>,
    /// Class names by label value (index 0 = background); missing names print as `class N`.
    pub class_names: &'a [String],
}

fn pair(c: char) -> Option<usize> {
    match c {
        'R' | 'L' => Some(0),
        'A' | 'P' => Some(1),
        'S' | 'I' => Some(2),
        _ => None,
    }
}

fn opposite(c: char) -> char {
    match c {
        'R' => 'L',
        'L' => 'R',
        'A' => 'P',
        'P' => 'A',
        'S' => 'I',
        _ => 'S',
    }
}

fn parse_axcodes(codes: &str) -> Result<[char; 3]> {
    let c: Vec<char> = codes.chars().collect();
    let ok = c.len() == 3 && {
        let p: Vec<Option<usize>> = c.iter().map(|&x| pair(x)).collect();
        p.iter().all(Option::is_some) && p[0] != p[1] && p[1] != p[2] && p[0] != p[2]
    };
    if !ok {
        return Err(Error::Invalid(format!(
            "axis codes {codes:?}: need one of R/L, A/P, S/I per axis (e.g. \"RAS\")"
        )));
    }
    Ok([c[0], c[1], c[2]])
}

/// The panel of `view` through the middle of a `dims` grid with axis codes `axcodes`:
/// `(width, height, flat voxel index of each pixel in row-major order)`.
pub fn slice_index(view: View, dims: [usize; 3], axcodes: &str) -> Result<Panel> {
    let codes = parse_axcodes(axcodes)?;
    let (sx, sy) = view.screen();
    let axis_of = |dir: char| -> Result<usize> {
        codes
            .iter()
            .position(|&c| pair(c) == pair(dir))
            .ok_or_else(|| Error::Invalid(format!("axis codes {axcodes:?} lack {dir}")))
    };
    let (ax, ay) = (axis_of(sx)?, axis_of(sy)?);
    let fixed = 3 - ax - ay;
    let (w, h) = (dims[ax], dims[ay]);
    // Index along `axis` of screen coordinate t that grows towards `dir`.
    let along = |axis: usize, dir: char, t: usize| {
        if codes[axis] == dir { t } else { dims[axis] - 1 - t }
    };
    let mut idx = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let mut v = [0usize; 3];
            v[ax] = along(ax, sx, x);
            v[ay] = along(ay, sy, y);
            v[fixed] = dims[fixed] / 2;
            idx.push((v[0] * dims[1] + v[1]) * dims[2] + v[2]);
        }
    }
    Ok((w, h, idx))
}

/// A panel's width, height and the flat voxel index of each pixel ([`slice_index`]).
type Panel = (usize, usize, Vec<usize>);

const BG: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [0, 0, 0];
/// Longest panel side in pixels.
const PANEL: f64 = 192.0;

/// Draws `fig` and writes it as a PNG.
pub fn slice_figure(path: &Path, fig: &Figure<'_>) -> Result<()> {
    draw(fig)?.save(path)
}

/// Where the panels of [`slice_figure_world`] cut the volume and how large they are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorldView {
    /// Voxel-to-world (RAS+, mm) affine of the figure's grid.
    pub affine: Affine,
    /// The world point (mm) every panel passes through.
    pub centre: [f64; 3],
    /// Longest panel side in pixels (the pixel size in mm follows from the volume's extent).
    pub panel_px: usize,
}

/// Draws `fig` with panels sampled in world space ([`world_panel`]): the planes through
/// `view.centre` perpendicular to the world axes, in the radiological convention whatever the
/// grid's orientation (oblique grids included), with square pixels in mm. `fig.axcodes` is
/// ignored: the orientation letters always come from the world directions.
pub fn slice_figure_world(path: &Path, fig: &Figure<'_>, view: &WorldView) -> Result<()> {
    draw_world(fig, view)?.save(path)
}

/// The corners of the grid's voxel-centre box in world coordinates: per world axis, the range.
fn world_extent(dims: [usize; 3], affine: &Affine) -> [(f64, f64); 3] {
    let mut ext = [(f64::INFINITY, f64::NEG_INFINITY); 3];
    for c in 0..8 {
        let p: [f64; 3] = std::array::from_fn(|d| {
            if c >> d & 1 == 1 { dims[d].saturating_sub(1) as f64 } else { 0.0 }
        });
        let w = affine.apply(p);
        for d in 0..3 {
            ext[d] = (ext[d].0.min(w[d]), ext[d].1.max(w[d]));
        }
    }
    ext
}

/// The world axis (0 = R, 1 = A, 2 = S) and the sign of world coordinate growth of a screen
/// direction letter.
fn world_dir(c: char) -> (usize, f64) {
    match c {
        'R' => (0, 1.0),
        'L' => (0, -1.0),
        'A' => (1, 1.0),
        'P' => (1, -1.0),
        'S' => (2, 1.0),
        _ => (2, -1.0),
    }
}

/// The panel of `view` through the world point `centre`, sampled every `pixel_mm` mm along the
/// world directions of the screen (axial: +x towards the patient's left, +y posterior; coronal:
/// left, inferior; sagittal: posterior, inferior) over the grid's world extent:
/// `(width, height, flat voxel index of each pixel or None outside the grid)`, nearest voxel.
pub fn world_panel(
    view: View,
    dims: [usize; 3],
    affine: &Affine,
    centre: [f64; 3],
    pixel_mm: f64,
) -> Result<WorldPanel> {
    let inv = affine
        .inverse()
        .ok_or_else(|| Error::Invalid(format!("the grid's affine {:?} is singular", affine.0)))?;
    if !(pixel_mm > 0.0 && pixel_mm.is_finite()) {
        return Err(Error::Invalid(format!("pixel size {pixel_mm} mm must be positive")));
    }
    let ext = world_extent(dims, affine);
    let (sx, sy) = view.screen();
    let ((ax, gx), (ay, gy)) = (world_dir(sx), world_dir(sy));
    let len = |a: usize| ext[a].1 - ext[a].0;
    let (w, h) =
        ((len(ax) / pixel_mm).round() as usize + 1, (len(ay) / pixel_mm).round() as usize + 1);
    // Screen coordinate 0 is the world end the direction starts from.
    let start = |a: usize, g: f64| if g > 0.0 { ext[a].0 } else { ext[a].1 };
    let mut idx = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let mut p = centre;
            p[ax] = start(ax, gx) + gx * x as f64 * pixel_mm;
            p[ay] = start(ay, gy) + gy * y as f64 * pixel_mm;
            let v = inv.apply(p);
            let r: [f64; 3] = v.map(f64::round);
            let inside = (0..3).all(|d| r[d] >= 0.0 && r[d] < dims[d] as f64);
            idx.push(inside.then(|| {
                let [i, j, k] = r.map(|t| t as usize);
                (i * dims[1] + j) * dims[2] + k
            }));
        }
    }
    Ok((w, h, idx))
}

/// A world panel's width, height and the flat voxel index of each pixel ([`world_panel`]).
pub type WorldPanel = (usize, usize, Vec<Option<usize>>);

fn check_rows(fig: &Figure<'_>) -> Result<()> {
    let n: usize = fig.dims.iter().product();
    if n == 0
        || fig.rows.iter().any(|r| r.image.len() != n || r.labels.is_some_and(|l| l.len() != n))
    {
        return Err(Error::Invalid(format!(
            "figure {:?}: every row needs {n} voxels for dims {:?}",
            fig.title, fig.dims
        )));
    }
    Ok(())
}

fn draw(fig: &Figure<'_>) -> Result<Canvas> {
    check_rows(fig)?;
    let dims = fig.dims;
    let codes = fig.axcodes.unwrap_or("RAS");
    let scale = PANEL / dims.iter().copied().max().unwrap_or(1) as f64;
    let panels: Vec<(View, WorldPanel)> = View::ALL
        .iter()
        .map(|&v| {
            let (w, h, idx) = slice_index(v, dims, codes)?;
            Ok((v, (w, h, idx.into_iter().map(Some).collect())))
        })
        .collect::<Result<_>>()?;
    Ok(draw_panels(fig, &panels, scale, fig.axcodes.is_some()))
}

fn draw_world(fig: &Figure<'_>, view: &WorldView) -> Result<Canvas> {
    check_rows(fig)?;
    let ext = world_extent(fig.dims, &view.affine);
    let longest = ext.iter().map(|e| e.1 - e.0).fold(0.0, f64::max);
    let pixel_mm = if longest > 0.0 { longest / view.panel_px.max(2) as f64 } else { 1.0 };
    let panels: Vec<(View, WorldPanel)> = View::ALL
        .iter()
        .map(|&v| Ok((v, world_panel(v, fig.dims, &view.affine, view.centre, pixel_mm)?)))
        .collect::<Result<_>>()?;
    Ok(draw_panels(fig, &panels, 1.0, true))
}

fn draw_panels(
    fig: &Figure<'_>,
    panels: &[(View, WorldPanel)],
    scale: f64,
    with_letters: bool,
) -> Canvas {
    let size = |k: usize| ((k as f64 * scale).round() as usize).max(1);
    let (m, gap) = (12usize, 12usize);
    let panels_w = m + panels.iter().map(|(_, p)| size(p.0) + gap).sum::<usize>() + m - gap;
    let texts_w = std::iter::once(Canvas::text_width(&fig.title, 2))
        .chain(fig.rows.iter().map(|r| Canvas::text_width(&r.title, 2)))
        .max()
        .unwrap_or(0)
        + 2 * m;
    let total_w = panels_w.max(texts_w);
    let panel_h = panels.iter().map(|(_, p)| size(p.1)).max().unwrap_or(1);
    let title_h = 16 + 10;
    let head_h = 8 + 6;
    let row_h = 16 + 6 + panel_h + 10;
    // Classes drawn anywhere in the figure, for the legend.
    let mut present = [false; 256];
    for row in &fig.rows {
        if let Some(l) = row.labels {
            for (_, (_, _, idx)) in panels {
                for &i in idx.iter().flatten() {
                    present[usize::from(l[i])] = true;
                }
            }
        }
    }
    let classes: Vec<u8> = (1..=255u8).filter(|&c| present[usize::from(c)]).collect();
    let name = |c: u8| {
        fig.class_names.get(usize::from(c)).cloned().unwrap_or_else(|| format!("class {c}"))
    };
    let entries: Vec<(Option<u8>, String)> = if fig.rows.iter().any(|r| r.labels.is_some()) {
        if classes.is_empty() {
            vec![(None, "no labelled voxels in these slices".into())]
        } else {
            classes.iter().map(|&c| (Some(c), name(c))).collect()
        }
    } else {
        Vec::new()
    };
    let entry_w = |s: &str| 14 + 6 + Canvas::text_width(s, 1) + 16;
    let mut legend_lines = 0usize;
    let mut x = m;
    for (_, s) in &entries {
        if x == m || x + entry_w(s) > total_w - m {
            legend_lines += 1;
            x = m;
        }
        x += entry_w(s);
    }
    let legend_h = if entries.is_empty() { 0 } else { 8 + 8 + 6 + legend_lines * 18 };
    let total_h = m + title_h + head_h + fig.rows.len() * row_h + legend_h + m;
    let mut c = Canvas::new(total_w, total_h, BG);
    c.text(m as i64, m as i64, &fig.title, INK, 2);
    let mut y = m + title_h;
    let mut ox = m;
    for (view, p) in panels {
        let head = if with_letters { view.name().to_string() } else { view.plain_name() };
        c.text(ox as i64, y as i64, &head, INK, 1);
        ox += size(p.0) + gap;
    }
    y += head_h;
    for row in &fig.rows {
        c.text(m as i64, y as i64, &row.title, INK, 2);
        let py = y + 16 + 6;
        let mut ox = m;
        for (view, (w, h, idx)) in panels {
            let (dw, dh) = (size(*w), size(*h));
            for yy in 0..dh {
                let sy = ((yy as f64 / scale) as usize).min(h - 1);
                for xx in 0..dw {
                    let sx = ((xx as f64 / scale) as usize).min(w - 1);
                    let col = match idx[sy * w + sx] {
                        None => [0, 0, 0],
                        Some(i) => {
                            let g = (row.image[i].clamp(0.0, 1.0) * 255.0) as u8;
                            let l = row.labels.map_or(0, |l| l[i]);
                            if l == 0 {
                                [g, g, g]
                            } else {
                                let p = class_colour(l);
                                std::array::from_fn(|k| {
                                    ((u16::from(g) + u16::from(p[k])) / 2) as u8
                                })
                            }
                        }
                    };
                    c.set((ox + xx) as i64, (py + yy) as i64, col);
                }
            }
            if with_letters {
                letters(&mut c, *view, (ox, py, dw, dh));
            }
            ox += dw + gap;
        }
        y += row_h;
    }
    if !entries.is_empty() {
        c.text(m as i64, y as i64, "labels (50 % over the image):", INK, 1);
        let mut x = m;
        let mut ly = y + 8 + 6 - 18;
        for (cls, s) in &entries {
            if x == m || x + entry_w(s) > total_w - m {
                ly += 18;
                x = m;
            }
            if let Some(cls) = cls {
                c.rect(x as i64, ly as i64, 14, 14, class_colour(*cls));
            }
            c.text((x + 14 + 6) as i64, (ly + 3) as i64, s, INK, 1);
            x += entry_w(s);
        }
    }
    c
}

/// Orientation letters on the four edges of a panel at `(x, y, w, h)`.
fn letters(c: &mut Canvas, view: View, (x, y, w, h): (usize, usize, usize, usize)) {
    let (sx, sy) = view.screen();
    let (x, y, w, h) = (x as i64, y as i64, w as i64, h as i64);
    let put = |c: &mut Canvas, lx: i64, ly: i64, ch: char| {
        c.rect(lx - 1, ly - 1, 10, 10, [0, 0, 0]);
        c.text(lx, ly, &ch.to_string(), [255, 255, 0], 1);
    };
    put(c, x + 2, y + h / 2 - 4, opposite(sx));
    put(c, x + w - 10, y + h / 2 - 4, sx);
    put(c, x + w / 2 - 4, y + 2, opposite(sy));
    put(c, x + w / 2 - 4, y + h - 10, sy);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The display position of voxel `v` in `view`.
    fn shown_at(
        view: View,
        dims: [usize; 3],
        codes: &str,
        v: [usize; 3],
    ) -> Option<(usize, usize)> {
        let (w, _, idx) = slice_index(view, dims, codes).expect("panel");
        let flat = (v[0] * dims[1] + v[1]) * dims[2] + v[2];
        idx.iter().position(|&i| i == flat).map(|p| (p % w, p / w))
    }

    #[test]
    fn views_follow_the_radiological_convention() {
        // RAS grid 10 (R) × 12 (A) × 14 (S): +i = patient right, +j = anterior, +k = superior.
        let d = [10, 12, 14];
        let (rx, ay, sz) = (9, 11, 13);
        // Axial (k = 7): the patient's right is on the image's left, anterior is up.
        assert_eq!(shown_at(View::Axial, d, "RAS", [rx, ay, 7]), Some((0, 0)));
        // Coronal (j = 6): right on the left, head up.
        assert_eq!(shown_at(View::Coronal, d, "RAS", [rx, 6, sz]), Some((0, 0)));
        // Sagittal (i = 5): anterior on the left, head up.
        assert_eq!(shown_at(View::Sagittal, d, "RAS", [5, ay, sz]), Some((0, 0)));
        // The same anatomy stored LPS lands on the same pixels.
        let lps = |[i, j, k]: [usize; 3]| [d[0] - 1 - i, d[1] - 1 - j, k];
        assert_eq!(shown_at(View::Axial, d, "LPS", lps([rx, ay, 7])), Some((0, 0)));
        // (The stored middle j = 6 is RAS j = 5 in the flipped grid.)
        assert_eq!(shown_at(View::Coronal, d, "LPS", lps([rx, 5, sz])), Some((0, 0)));
        assert!(slice_index(View::Axial, d, "RAR").is_err());
    }

    #[test]
    fn a_figure_names_its_classes_and_checks_sizes() {
        let dims = [8, 8, 8];
        let img = vec![0.5f32; 512];
        let mut lab = vec![0u8; 512];
        lab[(4 * 8 + 4) * 8 + 4] = 2;
        let names = vec!["background".to_string(), "liver".into(), "spleen".into()];
        let fig = Figure {
            title: "t".into(),
            dims,
            axcodes: Some("RAS"),
            rows: vec![Row { title: "ground truth".into(), image: &img, labels: Some(&lab) }],
            class_names: &names,
        };
        let c = draw(&fig).expect("draw");
        let has = |col: [u8; 3]| {
            (0..c.height()).any(|y| (0..c.width()).any(|x| c.get(x, y) == Some(col)))
        };
        assert!(has(class_colour(2)), "legend swatch of the spleen");
        assert!(!has(class_colour(1)), "no liver drawn, so no liver swatch");
        let short = Figure {
            rows: vec![Row { title: "x".into(), image: &img[..10], labels: None }],
            ..fig
        };
        assert!(draw(&short).is_err());
    }
}
