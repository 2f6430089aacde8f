//! An RGB canvas with lines, rectangles and text in the public-domain 8×8 font of `font8x8`
//! (ASCII and Latin-1; other characters draw as `?`), scaled by whole pixels.
use std::path::Path;

use crate::files::write_atomic;
use crate::{Error, Result};

/// Distinct colours for series and classes (matplotlib's `tab10` order).
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
    [227, 119, 194],
    [188, 189, 34],
    [140, 86, 75],
    [127, 127, 127],
];

/// The overlay colour of label value `class` (≥ 1): [`PALETTE`] for labels 1–10, then hues
/// stepped by the golden angle (saturation and value alternating between two levels), so that
/// the 117 classes of TotalSegmentator get distinct colours.
pub fn class_colour(class: u8) -> [u8; 3] {
    let n = usize::from(class.max(1) - 1);
    if n < PALETTE.len() {
        return PALETTE[n];
    }
    let k = (n - PALETTE.len()) as f64;
    let hue = (k * 137.507_764).rem_euclid(360.0);
    let (s, v) = if n % 2 == 0 { (0.85, 0.95) } else { (0.65, 0.75) };
    hsv(hue, s, v)
}

/// HSV (hue in degrees, saturation and value in [0, 1]) to RGB.
fn hsv(h: f64, s: f64, v: f64) -> [u8; 3] {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0).rem_euclid(2.0) - 1.0).abs());
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r, g, b].map(|t| ((t + m) * 255.0).round().clamp(0.0, 255.0) as u8)
}

/// An RGB image.
#[derive(Debug, Clone)]
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

/// Glyph width and height of the font at scale 1.
pub(crate) const GLYPH: usize = 8;

fn glyph(c: char) -> [u8; 8] {
    let code = c as usize;
    match code {
        0..128 => font8x8::legacy::BASIC_LEGACY[code],
        0xA0..=0xFF => font8x8::legacy::LATIN_LEGACY[code - 0xA0],
        _ => font8x8::legacy::BASIC_LEGACY['?' as usize],
    }
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

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.w
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.h
    }

    /// The pixel at `(x, y)`.
    pub fn get(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        (x < self.w && y < self.h).then(|| {
            let i = (y * self.w + x) * 3;
            [self.px[i], self.px[i + 1], self.px[i + 2]]
        })
    }

    /// Sets one pixel (ignored outside).
    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A filled rectangle with its top-left corner at `(x, y)`.
    pub fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// A line (Bresenham), `width` pixels thick (1 or 2).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], width: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for k in 0..width.max(1) {
                if dx >= -dy {
                    self.set(x, y + k, c);
                } else {
                    self.set(x + k, y, c);
                }
            }
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

    /// Width in pixels of `s` at `scale`.
    pub fn text_width(s: &str, scale: usize) -> usize {
        s.chars().count() * GLYPH * scale
    }

    /// Text with its top-left corner at `(x, y)`, each font pixel `scale`×`scale`.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3], scale: usize) {
        let sc = scale.max(1) as i64;
        for (n, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + n as i64 * GLYPH as i64 * sc;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..GLYPH {
                    if bits >> col & 1 == 1 {
                        self.rect(ox + col as i64 * sc, y + row as i64 * sc, sc, sc, c);
                    }
                }
            }
        }
    }

    /// Text turned 90° counter-clockwise (reading bottom to top), its bounding box's top-left
    /// corner at `(x, y)`.
    pub fn text_up(&mut self, x: i64, y: i64, s: &str, c: [u8; 3], scale: usize) {
        let sc = scale.max(1) as i64;
        let len = Canvas::text_width(s, scale) as i64;
        for (n, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..GLYPH {
                    if bits >> col & 1 == 1 {
                        // (col, row) of the glyph → x = row, y = from the bottom up
                        let along = (n * GLYPH + col) as i64 * sc;
                        self.rect(x + row as i64 * sc, y + len - along - sc, sc, sc, c);
                    }
                }
            }
        }
    }

    /// PNG bytes of the canvas.
    pub fn png_bytes(&self) -> std::result::Result<Vec<u8>, png::EncodingError> {
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header()?;
            wr.write_image_data(&self.px)?;
        }
        Ok(buf)
    }

    /// Encodes as PNG and writes atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let buf = self
            .png_bytes()
            .map_err(|e| Error::Png { path: path.to_path_buf(), reason: e.to_string() })?;
        write_atomic(path, &buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_colours_are_distinct_for_every_label() {
        let all: Vec<[u8; 3]> = (1..=255u8).map(class_colour).collect();
        assert_eq!(all[0], PALETTE[0]);
        for (a, ca) in all.iter().enumerate().take(118) {
            for (b, cb) in all.iter().enumerate().take(118).skip(a + 1) {
                assert_ne!(ca, cb, "labels {} and {} share a colour", a + 1, b + 1);
            }
        }
    }

    #[test]
    fn text_sets_the_glyph_pixels_and_nothing_outside_its_box() {
        let mut c = Canvas::new(40, 20, [255; 3]);
        c.text(2, 3, "1", [0; 3], 2);
        let ink = |c: &Canvas| {
            (0..c.height())
                .flat_map(|y| (0..c.width()).map(move |x| (x, y)))
                .filter(|&(x, y)| c.get(x, y) == Some([0; 3]))
                .collect::<Vec<_>>()
        };
        let on = ink(&c);
        assert!(!on.is_empty());
        assert!(on.iter().all(|&(x, y)| (2..18).contains(&x) && (3..19).contains(&y)), "{on:?}");
        let mut u = Canvas::new(20, 40, [255; 3]);
        u.text_up(3, 2, "1", [0; 3], 2);
        assert_eq!(ink(&u).len(), on.len(), "turning text keeps its pixels");
    }
}
