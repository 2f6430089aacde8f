//! Slice ordering and the voxel-to-world affine of a series, with the checks that make the slices
//! one regular grid: same size and orientation, no duplicate or missing slice, equal spacing, no
//! gantry tilt.
//!
//! The affine is built as dcm2niix and dicom2nifti build it: slices sorted by the projection of
//! ImagePositionPatient on the slice normal (row cosines × column cosines), index `i` along the
//! row direction (columns, spacing `PixelSpacing[1]`), `j` along the column direction (rows,
//! spacing `PixelSpacing[0]`), `k` from the first to the last slice with step
//! `(IPP_last − IPP_first) / (n − 1)`, origin at the first slice's IPP; then DICOM LPS becomes
//! NIfTI RAS+ by negating the first two rows.
use medseg_data::Affine;

use crate::error::{Error, Result};
use crate::instance::{FrameHeader, Instance};

/// Relative tolerance for "equal" slice gaps (1 %).
pub const SPACING_TOLERANCE: f64 = 0.01;
/// Tolerance (mm) of the in-plane drift of slice positions before it counts as gantry tilt.
pub const TILT_TOLERANCE_MM: f64 = 0.01;

/// One slice of a series: frame `frame` of instance `inst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SliceKey {
    pub inst: usize,
    pub frame: usize,
}

/// The regular grid of a series: slices in volume order and the RAS affine.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    /// Slices in increasing position along the normal: `order[k]` is slice `k`.
    pub order: Vec<SliceKey>,
    /// `[columns, rows, slices]`, the NIfTI shape.
    pub shape: [usize; 3],
    /// Voxel `(i, j, k)` → RAS+ mm.
    pub affine: Affine,
    /// ImageOrientationPatient shared by all slices.
    pub iop: [f64; 6],
    /// PixelSpacing `(row, column)`.
    pub pixel_spacing: [f64; 2],
    /// Distance between slices along the normal (SliceThickness, else 1, for a single slice).
    pub slice_spacing: f64,
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// Sorts the slices of one series and checks they form one grid; errors name the series, the
/// failed check and the files involved.
pub(crate) fn build_grid(
    series: &str,
    instances: &[Instance],
    slices: &[SliceKey],
) -> Result<Grid> {
    let fail = |message: String| Error::Geometry { series: series.to_string(), message };
    let frame = |s: &SliceKey| -> &FrameHeader { &instances[s.inst].frames[s.frame] };
    let name = |s: &SliceKey| -> String {
        let inst = &instances[s.inst];
        if inst.frames.len() > 1 {
            format!("{} frame {}", inst.file, s.frame + 1)
        } else {
            inst.file.clone()
        }
    };
    let first = slices.first().ok_or_else(|| fail("no slices".to_string()))?;
    let (rows, cols) = (instances[first.inst].rows, instances[first.inst].cols);
    let mut geo = Vec::with_capacity(slices.len());
    for s in slices {
        let h = frame(s);
        let inst = &instances[s.inst];
        if (inst.rows, inst.cols) != (rows, cols) {
            return Err(fail(format!(
                "slices of different sizes: {} is {}×{}, {} is {rows}×{cols}",
                name(s),
                inst.rows,
                inst.cols,
                name(first)
            )));
        }
        let missing = |what: &str| fail(format!("{} has no {what}", name(s)));
        let iop = h.iop.ok_or_else(|| missing("ImageOrientationPatient"))?;
        let ipp = h.ipp.ok_or_else(|| missing("ImagePositionPatient"))?;
        let ps = h.spacing.ok_or_else(|| missing("PixelSpacing"))?;
        if !(ps[0] > 0.0 && ps[1] > 0.0) {
            return Err(fail(format!("{}: PixelSpacing {ps:?} is not positive", name(s))));
        }
        geo.push((iop, ipp, ps));
    }
    let (iop, _, ps) = geo[0];
    for (s, (o, _, p)) in slices.iter().zip(&geo) {
        if o.iter().zip(&iop).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(fail(format!(
                "mixed orientations: {} has ImageOrientationPatient {o:?}, {} has {iop:?}",
                name(s),
                name(first)
            )));
        }
        if p.iter().zip(&ps).any(|(a, b)| (a - b).abs() > 1e-4 * b.abs().max(1.0)) {
            return Err(fail(format!(
                "mixed pixel spacings: {} has PixelSpacing {p:?}, {} has {ps:?}",
                name(s),
                name(first)
            )));
        }
    }
    let r = [iop[0], iop[1], iop[2]];
    let c = [iop[3], iop[4], iop[5]];
    if (norm(r) - 1.0).abs() > 1e-3 || (norm(c) - 1.0).abs() > 1e-3 || dot(r, c).abs() > 1e-3 {
        return Err(fail(format!(
            "ImageOrientationPatient {iop:?} is not two orthogonal unit vectors"
        )));
    }
    let n = cross(r, c);
    // Sort along the normal; ties keep file order and are reported below.
    let mut idx: Vec<usize> = (0..slices.len()).collect();
    idx.sort_by(|&a, &b| dot(geo[a].1, n).total_cmp(&dot(geo[b].1, n)));
    let order: Vec<SliceKey> = idx.iter().map(|&i| slices[i]).collect();
    let pos: Vec<[f64; 3]> = idx.iter().map(|&i| geo[i].1).collect();
    let d: Vec<f64> = pos.iter().map(|&p| dot(p, n)).collect();
    let nz = order.len();
    let step = if nz == 1 {
        let t = instances[first.inst].slice_thickness.filter(|t| *t > 0.0).unwrap_or(1.0);
        [n[0] * t, n[1] * t, n[2] * t]
    } else {
        let gaps: Vec<f64> = d.windows(2).map(|w| w[1] - w[0]).collect();
        for (k, g) in gaps.iter().enumerate() {
            if *g < 1e-4 {
                return Err(fail(format!(
                    "duplicate slice position: {} and {} are both at {:.4} mm along the normal \
                     (two acquisitions in one series?)",
                    name(&order[k]),
                    name(&order[k + 1]),
                    d[k]
                )));
            }
        }
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let tol = (SPACING_TOLERANCE * median).max(1e-3);
        for (k, g) in gaps.iter().enumerate() {
            let ratio = g / median;
            if ratio > 1.5 && (ratio - ratio.round()).abs() < 0.15 {
                return Err(fail(format!(
                    "missing slice: {} missing between {} ({:.3} mm) and {} ({:.3} mm); the gap is \
                     {g:.3} mm, the other slices are {median:.3} mm apart",
                    ratio.round() as usize - 1,
                    name(&order[k]),
                    d[k],
                    name(&order[k + 1]),
                    d[k + 1]
                )));
            }
        }
        for (k, g) in gaps.iter().enumerate() {
            if (g - median).abs() > tol {
                return Err(fail(format!(
                    "unequal slice spacing: {} and {} are {g:.4} mm apart, the median gap is \
                     {median:.4} mm (tolerance {:.0} %)",
                    name(&order[k]),
                    name(&order[k + 1]),
                    SPACING_TOLERANCE * 100.0
                )));
            }
        }
        let total = sub(pos[nz - 1], pos[0]);
        let along = dot(total, n);
        let drift = norm(sub(total, [n[0] * along, n[1] * along, n[2] * along]));
        if drift > TILT_TOLERANCE_MM.max(1e-4 * along.abs()) {
            let angle = drift.atan2(along.abs()).to_degrees();
            return Err(fail(format!(
                "gantry tilt: the slice positions move {drift:.3} mm in-plane over {along:.3} mm \
                 (a tilt of {angle:.2}°); tilted series are not supported"
            )));
        }
        for (k, p) in pos.iter().enumerate() {
            let t = k as f64 / (nz - 1) as f64;
            let line =
                [pos[0][0] + t * total[0], pos[0][1] + t * total[1], pos[0][2] + t * total[2]];
            let off = norm(sub(*p, line));
            if off > TILT_TOLERANCE_MM.max(tol) {
                return Err(fail(format!(
                    "slice positions are not on one line: {} is {off:.3} mm off",
                    name(&order[k])
                )));
            }
        }
        let m = (nz - 1) as f64;
        [total[0] / m, total[1] / m, total[2] / m]
    };
    let slice_spacing = norm(step);
    let o = pos[0];
    // LPS columns: i along the row direction (PixelSpacing[1]), j along the column direction.
    let lps = [
        [r[0] * ps[1], c[0] * ps[0], step[0], o[0]],
        [r[1] * ps[1], c[1] * ps[0], step[1], o[1]],
        [r[2] * ps[1], c[2] * ps[0], step[2], o[2]],
    ];
    let affine = Affine([
        [-lps[0][0], -lps[0][1], -lps[0][2], -lps[0][3]],
        [-lps[1][0], -lps[1][1], -lps[1][2], -lps[1][3]],
        lps[2],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    Ok(Grid {
        order,
        shape: [cols as usize, rows as usize, nz],
        affine,
        iop,
        pixel_spacing: ps,
        slice_spacing,
    })
}
