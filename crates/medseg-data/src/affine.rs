//! 4×4 voxel-to-world affines (RAS+ world, NIfTI convention) and the orientation maths of nibabel.
//!
//! `Affine` maps a voxel index `(i, j, k, 1)` to world millimetres `(x, y, z, 1)`, exactly like
//! nibabel's `img.affine`. Orientation codes follow nibabel: a code letter names the world
//! direction an index axis *increases towards* (`R`, `A`, `S` positive; `L`, `P`, `I` negative).

/// A 4×4 homogeneous matrix in row-major order (`m[row][col]`), f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [[f64; 4]; 4]);

/// For one index axis: the world axis (0 = x/LR, 1 = y/PA, 2 = z/IS) and its sign (+1 or -1).
pub type Ornt = [(usize, i8); 3];

impl Default for Affine {
    fn default() -> Self {
        Affine::identity()
    }
}

impl Affine {
    /// The identity.
    pub fn identity() -> Self {
        let mut m = [[0.0; 4]; 4];
        for (i, row) in m.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        Affine(m)
    }

    /// `diag(sx, sy, sz, 1)`.
    pub fn from_diagonal(s: [f64; 3]) -> Self {
        let mut a = Affine::identity();
        for (i, &v) in s.iter().enumerate() {
            a.0[i][i] = v;
        }
        a
    }

    /// A pure translation.
    pub fn translation(t: [f64; 3]) -> Self {
        let mut a = Affine::identity();
        for (i, &v) in t.iter().enumerate() {
            a.0[i][3] = v;
        }
        a
    }

    /// Builds an affine from a 3×3 linear part and a translation.
    pub fn from_parts(m: [[f64; 3]; 3], t: [f64; 3]) -> Self {
        let mut a = Affine::identity();
        for r in 0..3 {
            a.0[r][..3].copy_from_slice(&m[r]);
            a.0[r][3] = t[r];
        }
        a
    }

    /// The 3×3 rotation-zoom-shear part.
    pub fn linear(&self) -> [[f64; 3]; 3] {
        let mut m = [[0.0; 3]; 3];
        for (r, row) in m.iter_mut().enumerate() {
            row.copy_from_slice(&self.0[r][..3]);
        }
        m
    }

    /// The translation column.
    pub fn translation_part(&self) -> [f64; 3] {
        [self.0[0][3], self.0[1][3], self.0[2][3]]
    }

    /// Matrix product `self · rhs`.
    pub fn matmul(&self, rhs: &Affine) -> Affine {
        let mut m = [[0.0; 4]; 4];
        for (r, row) in m.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..4).map(|k| self.0[r][k] * rhs.0[k][c]).sum();
            }
        }
        Affine(m)
    }

    /// Applies the affine to a point (`p` treated as homogeneous with w = 1).
    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        let mut out = [0.0; 3];
        for (r, o) in out.iter_mut().enumerate() {
            *o = m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3];
        }
        out
    }

    /// Inverse of an affine whose last row is `[0, 0, 0, 1]`; `None` when the linear part is singular.
    pub fn inverse(&self) -> Option<Affine> {
        let inv = mat3_inverse(&self.linear())?;
        let t = self.translation_part();
        let mut ti = [0.0; 3];
        for (r, v) in ti.iter_mut().enumerate() {
            *v = -(inv[r][0] * t[0] + inv[r][1] * t[1] + inv[r][2] * t[2]);
        }
        Some(Affine::from_parts(inv, ti))
    }

    /// Voxel spacing = column norms of the linear part (MONAI `affine_to_spacing`).
    pub fn spacing(&self) -> [f64; 3] {
        let m = self.linear();
        let mut s = [0.0; 3];
        for (c, v) in s.iter_mut().enumerate() {
            *v = (0..3).map(|r| m[r][c] * m[r][c]).sum::<f64>().sqrt();
        }
        s
    }

    /// True when every entry is finite and the linear part is invertible.
    pub fn is_valid(&self) -> bool {
        self.0.iter().flatten().all(|v| v.is_finite()) && self.inverse().is_some()
    }

    /// Largest absolute element-wise difference.
    pub fn max_abs_diff(&self, other: &Affine) -> f64 {
        self.0
            .iter()
            .flatten()
            .zip(other.0.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }

    /// nibabel `io_orientation`: for each index axis, the world axis it is closest to and the sign.
    ///
    /// Uses the polar decomposition of the column-normalised linear part (the closest rotation), then
    /// picks the largest component greedily in index-axis order, removing used world axes.
    pub fn orientation(&self) -> Ornt {
        let mut rs = self.linear();
        let zooms = self.spacing();
        for row in rs.iter_mut() {
            for (c, v) in row.iter_mut().enumerate() {
                if zooms[c] > 0.0 {
                    *v /= zooms[c];
                }
            }
        }
        let mut r = polar_rotation(&rs).unwrap_or(rs);
        let mut out: Ornt = [(0, 1), (1, 1), (2, 1)];
        let mut used = [false; 3];
        for (in_ax, o) in out.iter_mut().enumerate() {
            let mut best = None;
            let mut best_v = 0.0f64;
            for (w, &u) in used.iter().enumerate() {
                if !u && r[w][in_ax].abs() > best_v {
                    best_v = r[w][in_ax].abs();
                    best = Some(w);
                }
            }
            // A degenerate column falls back to the first unused world axis.
            let w = best.unwrap_or_else(|| used.iter().position(|u| !u).unwrap_or(in_ax));
            *o = (w, if r[w][in_ax] < 0.0 { -1 } else { 1 });
            used[w] = true;
            r[w] = [0.0; 3];
        }
        out
    }

    /// nibabel `aff2axcodes`, e.g. `"RAS"` or `"LPS"`.
    pub fn axcodes(&self) -> String {
        ornt_to_axcodes(&self.orientation())
    }
}

/// Turns an orientation into its three-letter code (nibabel `ornt2axcodes`).
pub fn ornt_to_axcodes(o: &Ornt) -> String {
    const LABELS: [[char; 2]; 3] = [['L', 'R'], ['P', 'A'], ['I', 'S']];
    o.iter().map(|&(w, s)| LABELS[w][usize::from(s > 0)]).collect()
}

/// Parses a three-letter code like `"RAS"` (case-insensitive) into an orientation.
pub fn axcodes_to_ornt(codes: &str) -> Option<Ornt> {
    let chars: Vec<char> = codes.chars().map(|c| c.to_ascii_uppercase()).collect();
    if chars.len() != 3 {
        return None;
    }
    let mut out: Ornt = [(0, 1); 3];
    let mut seen = [false; 3];
    for (o, c) in out.iter_mut().zip(chars) {
        let (w, s) = match c {
            'L' => (0, -1),
            'R' => (0, 1),
            'P' => (1, -1),
            'A' => (1, 1),
            'I' => (2, -1),
            'S' => (2, 1),
            _ => return None,
        };
        if seen[w] {
            return None;
        }
        seen[w] = true;
        *o = (w, s);
    }
    Some(out)
}

/// Determinant of a 3×3 matrix.
pub fn mat3_det(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// Inverse of a 3×3 matrix, `None` when (numerically) singular.
pub fn mat3_inverse(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = mat3_det(m);
    let scale = m.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
    if !det.is_finite() || scale == 0.0 || det.abs() <= 1e-12 * scale * scale * scale {
        return None;
    }
    let c =
        |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let inv = [
        [c(1, 1, 2, 2), -c(0, 1, 2, 2), c(0, 1, 1, 2)],
        [-c(1, 0, 2, 2), c(0, 0, 2, 2), -c(0, 0, 1, 2)],
        [c(1, 0, 2, 1), -c(0, 0, 2, 1), c(0, 0, 1, 1)],
    ];
    Some(inv.map(|row| row.map(|v| v / det)))
}

fn mat3_transpose(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut t = [[0.0; 3]; 3];
    for (r, row) in m.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c][r] = v;
        }
    }
    t
}

/// Orthogonal polar factor of `m` (closest rotation/reflection) by Newton iteration
/// `R ← (R + R⁻ᵀ)/2`; `None` when `m` is singular.
pub fn polar_rotation(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let mut r = *m;
    for _ in 0..100 {
        let inv_t = mat3_transpose(&mat3_inverse(&r)?);
        let mut next = [[0.0; 3]; 3];
        let mut delta = 0.0f64;
        for i in 0..3 {
            for j in 0..3 {
                next[i][j] = 0.5 * (r[i][j] + inv_t[i][j]);
                delta = delta.max((next[i][j] - r[i][j]).abs());
            }
        }
        r = next;
        if delta < 1e-15 {
            break;
        }
    }
    Some(r)
}

/// Upper Cholesky factor `U` with `Uᵀ U = a` of a symmetric positive-definite 3×3 matrix.
pub fn cholesky_upper(a: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    // Lower factor L with L Lᵀ = a, then U = Lᵀ.
    let mut l = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let d = a[i][i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i][j] = d.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    Some(mat3_transpose(&l))
}

/// Quaternion parameters of a NIfTI qform: `(b, c, d, qfac)` from a linear part (nibabel `set_qform`
/// with shears stripped). Returns `None` for a singular matrix.
pub fn qform_quaternion(m: &[[f64; 3]; 3]) -> Option<([f64; 3], f64, [f64; 3])> {
    let aff = Affine::from_parts(*m, [0.0; 3]);
    let zooms = aff.spacing();
    if zooms.contains(&0.0) {
        return None;
    }
    let mut r = *m;
    for row in r.iter_mut() {
        for (c, v) in row.iter_mut().enumerate() {
            *v /= zooms[c];
        }
    }
    let mut qfac = 1.0;
    if mat3_det(&r) < 0.0 {
        qfac = -1.0;
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    let r = polar_rotation(&r)?;
    // nifti1_io mat44_to_quatern.
    let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
    let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
    let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
    let trace = r11 + r22 + r33 + 1.0;
    let (a, mut b, mut c, mut d): (f64, f64, f64, f64);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r12 + r21) / b;
            d = 0.25 * (r13 + r31) / b;
            a = 0.25 * (r32 - r23) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r12 + r21) / c;
            d = 0.25 * (r23 + r32) / c;
            a = 0.25 * (r13 - r31) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r13 + r31) / d;
            c = 0.25 * (r23 + r32) / d;
            a = 0.25 * (r21 - r12) / d;
        }
        if a < 0.0 {
            b = -b;
            c = -c;
            d = -d;
        }
    }
    Some(([b, c, d], qfac, zooms))
}

/// Linear part of a qform from quaternion `(b, c, d)`, pixdim and qfac (nibabel `get_qform`).
pub fn qform_linear(bcd: [f64; 3], pixdim: [f64; 3], qfac: f64) -> [[f64; 3]; 3] {
    let [mut b, mut c, mut d] = bcd;
    let w2 = 1.0 - (b * b + c * c + d * d);
    let a = if w2 < 0.0 {
        // Not a unit quaternion: renormalise (b, c, d), rotation by 180 degrees.
        let n = (b * b + c * c + d * d).sqrt();
        b /= n;
        c /= n;
        d /= n;
        0.0
    } else {
        w2.sqrt()
    };
    let r = [
        [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
        [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
        [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ];
    let s = [pixdim[0], pixdim[1], pixdim[2] * qfac];
    r.map(|row| [row[0] * s[0], row[1] * s[1], row[2] * s[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_roundtrip() {
        let a = Affine([
            [-1.5, 0.1, 0.0, 10.0],
            [0.0, 1.5, 0.2, -4.0],
            [0.0, 0.0, 2.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let i = a.inverse().unwrap();
        assert!(a.matmul(&i).max_abs_diff(&Affine::identity()) < 1e-12);
    }

    #[test]
    fn axcodes_of_simple_affines() {
        assert_eq!(Affine::identity().axcodes(), "RAS");
        assert_eq!(Affine::from_diagonal([-1.0, -1.0, 1.0]).axcodes(), "LPS");
        let perm =
            Affine::from_parts([[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0.0; 3]);
        assert_eq!(perm.axcodes(), "PSR");
        assert_eq!(axcodes_to_ornt("psr").map(|o| ornt_to_axcodes(&o)), Some("PSR".into()));
        assert_eq!(axcodes_to_ornt("RRS"), None);
    }

    #[test]
    fn quaternion_roundtrip() {
        let m = [[0.0, 0.0, 2.0], [-1.5, 0.0, 0.0], [0.0, -1.0, 0.0]];
        let (bcd, qfac, zooms) = qform_quaternion(&m).unwrap();
        let back = qform_linear(bcd, zooms, qfac);
        for r in 0..3 {
            for c in 0..3 {
                assert!((back[r][c] - m[r][c]).abs() < 1e-9, "{back:?} vs {m:?}");
            }
        }
    }

    #[test]
    fn cholesky_of_diagonal() {
        let u = cholesky_upper(&[[4.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 1.0]]).unwrap();
        assert_eq!(u, [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]);
    }
}
