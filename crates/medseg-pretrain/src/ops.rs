//! The pretext transforms of research-contributions `SwinUNETR/Pretrain/utils/ops.py`
//! (swin-reference §3.2) as plain CPU loops over C-order `f32` buffers:
//! [`rot90`] / [`rot_rand`] (rotation by `k·90°` about the first spatial axis, label `k`),
//! [`patch_rand_drop`] (cutout with noise or partner fill) and [`aug_rand`] (inner cutout, then
//! cross-sample inpainting from a random partner).
//!
//! Randomness is injected through [`Draws`], whose three methods are the three generators the
//! research code calls (`np.random.uniform`, `np.random.randint`, `torch.Tensor.normal_`), in the
//! same order. [`RngDraws`] draws them from a seeded Rust RNG; [`Replay`] replays numbers recorded
//! from the Python reference, which makes the golden comparison exact.
//!
//! A sample is `[C, X, Y, Z]` in C order; a batch is `B` such samples back to back (`[B, C, X, Y, Z]`).
use std::collections::VecDeque;

use rand::Rng;
use rand_distr::StandardNormal;

use crate::{Error, Result};

/// The random numbers the pretext transforms consume.
pub trait Draws {
    /// `np.random.uniform(lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64;
    /// `np.random.randint(lo, hi)`: an integer in `[lo, hi)`; callers guarantee `lo < hi`.
    fn randint(&mut self, lo: usize, hi: usize) -> usize;
    /// `torch.empty(n).normal_()`: `n` standard normal numbers.
    fn normal(&mut self, n: usize) -> Vec<f32>;
}

/// [`Draws`] from any seeded RNG.
#[derive(Debug, Clone)]
pub struct RngDraws<R>(pub R);

impl<R: Rng> Draws for RngDraws<R> {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.random::<f64>()
    }
    fn randint(&mut self, lo: usize, hi: usize) -> usize {
        self.0.random_range(lo..hi)
    }
    fn normal(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.0.sample::<f32, _>(StandardNormal)).collect()
    }
}

/// [`Draws`] that replays recorded numbers (one queue per kind); panics when a queue runs dry,
/// which in a golden test means the consumption order differs from the reference.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Values of successive `uniform` calls.
    pub uniforms: VecDeque<f64>,
    /// Values of successive `randint` calls.
    pub ints: VecDeque<usize>,
    /// Successive `normal` draws, concatenated.
    pub normals: VecDeque<f32>,
}

impl Draws for Replay {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let v = self.uniforms.pop_front().expect("replay: uniform stream exhausted");
        assert!((lo..hi).contains(&v) || lo == hi, "replayed uniform {v} outside [{lo}, {hi})");
        v
    }
    fn randint(&mut self, lo: usize, hi: usize) -> usize {
        let v = self.ints.pop_front().expect("replay: randint stream exhausted");
        assert!((lo..hi).contains(&v), "replayed randint {v} outside [{lo}, {hi})");
        v
    }
    fn normal(&mut self, n: usize) -> Vec<f32> {
        assert!(self.normals.len() >= n, "replay: normal stream exhausted");
        self.normals.drain(..n).collect()
    }
}

/// `patch_rand_drop` arguments (research defaults: [`CutoutConfig::research`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoutConfig {
    /// Largest fraction of the volume whose voxels are replaced (the budget is `U(0, max_drop)`).
    pub max_drop: f64,
    /// Largest block side as a fraction of each axis (exclusive bound of the side).
    pub max_block_sz: f64,
    /// Smallest block side as a fraction of each axis (also the margin at the far end for corners).
    pub tolr: f64,
}

impl CutoutConfig {
    /// `max_drop 0.3, max_block_sz 0.25, tolr 0.05`.
    pub fn research() -> Self {
        CutoutConfig { max_drop: 0.3, max_block_sz: 0.25, tolr: 0.05 }
    }

    /// `(tolerance, max block side)` per axis, `int(f·size)` as in the research code.
    pub fn bounds(&self, dims: [usize; 3]) -> ([usize; 3], [usize; 3]) {
        let tol = dims.map(|s| (self.tolr * s as f64) as usize);
        let mx = dims.map(|s| (self.max_block_sz * s as f64) as usize);
        (tol, mx)
    }

    /// Checks the fractions and that every axis of `dims` admits a block: `int(tolr·s) <
    /// int(max_block_sz·s)` (NumPy's `randint(tol, mx)` raises otherwise) and `tol ≥ 1` so every
    /// block has at least one voxel and the drop loop terminates.
    pub fn validate(&self, dims: [usize; 3]) -> Result<()> {
        if !((0.0..=1.0).contains(&self.max_drop)
            && self.max_block_sz > 0.0
            && self.max_block_sz <= 1.0
            && self.tolr > 0.0
            && self.tolr < self.max_block_sz)
        {
            return Err(Error::Config(format!(
                "cutout needs 0 ≤ max_drop ≤ 1 and 0 < tolr < max_block_sz ≤ 1, got max_drop {}, \
                 max_block_sz {}, tolr {}",
                self.max_drop, self.max_block_sz, self.tolr
            )));
        }
        let (tol, mx) = self.bounds(dims);
        for a in 0..3 {
            if tol[a] == 0 || tol[a] >= mx[a] || tol[a] >= dims[a] {
                return Err(Error::Config(format!(
                    "cutout on a crop of {dims:?}: axis {a} gives block sides in [int(tolr·{s}) = {t}, \
                     int(max_block_sz·{s}) = {m}); need 1 ≤ tolerance < max side (use a larger crop \
                     or other fractions)",
                    s = dims[a],
                    t = tol[a],
                    m = mx[a]
                )));
            }
        }
        Ok(())
    }
}

/// One replaced block: `[start, end)` per spatial axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// First voxel per axis.
    pub start: [usize; 3],
    /// One past the last voxel per axis.
    pub end: [usize; 3],
}

impl Block {
    /// Voxels per channel.
    pub fn volume(&self) -> usize {
        (0..3).map(|a| self.end[a] - self.start[a]).product()
    }
}

fn check_len(what: &str, len: usize, c: usize, dims: [usize; 3]) -> Result<()> {
    let n = c * dims.iter().product::<usize>();
    if len != n || n == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: buffer of {len} values does not hold a [C = {c}, {dims:?}] sample"
        )));
    }
    Ok(())
}

/// `patch_rand_drop(x, x_rep, max_drop, max_block_sz, tolr)` on one sample `x` (`[C, X, Y, Z]`),
/// in place; returns the blocks in drawing order.
///
/// Budget `U(0, max_drop)·X·Y·Z`; blocks are drawn until the summed block volumes (overlaps
/// counted twice) reach it. Corner `randint(0, s − tol)`, side `randint(tol, mx)`, end clipped to
/// the axis. Fill: `partner`'s voxels at the same place, or (`partner = None`) standard normal
/// noise min–max normalised to `[0, 1]` over the block (all channels). A block whose noise is
/// constant (one voxel) is filled with 0 where the research code would write NaN (0/0).
pub fn patch_rand_drop(
    x: &mut [f32],
    c: usize,
    dims: [usize; 3],
    partner: Option<&[f32]>,
    cfg: &CutoutConfig,
    draws: &mut dyn Draws,
) -> Result<Vec<Block>> {
    check_len("patch_rand_drop", x.len(), c, dims)?;
    if let Some(p) = partner {
        check_len("patch_rand_drop partner", p.len(), c, dims)?;
    }
    cfg.validate(dims)?;
    let [h, w, z] = dims;
    let budget = draws.uniform(0.0, cfg.max_drop) * (h * w * z) as f64;
    let (tol, mx) = cfg.bounds(dims);
    let mut blocks = Vec::new();
    let mut total = 0usize;
    while (total as f64) < budget {
        let start: [usize; 3] = std::array::from_fn(|a| draws.randint(0, dims[a] - tol[a]));
        let end: [usize; 3] =
            std::array::from_fn(|a| (draws.randint(tol[a], mx[a]) + start[a]).min(dims[a]));
        let b = Block { start, end };
        let ext = [end[0] - start[0], end[1] - start[1], end[2] - start[2]];
        let n = b.volume();
        let noise = match partner {
            Some(_) => None,
            None => {
                let mut v = draws.normal(c * n);
                let (lo, hi) =
                    v.iter().fold((f32::MAX, f32::MIN), |(l, u), &q| (l.min(q), u.max(q)));
                let range = hi - lo;
                for q in &mut v {
                    *q = if range > 0.0 { (*q - lo) / range } else { 0.0 };
                }
                Some(v)
            }
        };
        let mut k = 0usize;
        for ch in 0..c {
            for i in start[0]..end[0] {
                for j in start[1]..end[1] {
                    let row = ((ch * h + i) * w + j) * z;
                    let (r0, r1) = (row + start[2], row + end[2]);
                    match (&noise, partner) {
                        (Some(v), _) => {
                            x[r0..r1].copy_from_slice(&v[k..k + ext[2]]);
                        }
                        (None, Some(p)) => x[r0..r1].copy_from_slice(&p[r0..r1]),
                        (None, None) => unreachable!("noise is drawn when there is no partner"),
                    }
                    k += ext[2];
                }
            }
        }
        total += n;
        blocks.push(b);
    }
    Ok(blocks)
}

/// `aug_rand` on a batch `[B, C, X, Y, Z]`: returns the augmented copy. For each sample `i`:
/// noise cutout, then a partner `r = randint(0, B)`; when `r ≠ i`, a second cutout filled from
/// sample `r` of the augmented batch as it is at that moment (already augmented when `r < i`).
pub fn aug_rand(
    batch: &[f32],
    b: usize,
    c: usize,
    dims: [usize; 3],
    cfg: &CutoutConfig,
    draws: &mut dyn Draws,
) -> Result<Vec<f32>> {
    let per = c * dims.iter().product::<usize>();
    if b == 0 || batch.len() != b * per {
        return Err(Error::InvalidArgument(format!(
            "aug_rand: buffer of {} values does not hold [B = {b}, C = {c}, {dims:?}]",
            batch.len()
        )));
    }
    let mut out = batch.to_vec();
    for i in 0..b {
        patch_rand_drop(&mut out[i * per..(i + 1) * per], c, dims, None, cfg, draws)?;
        let r = draws.randint(0, b);
        if r != i {
            let partner = out[r * per..(r + 1) * per].to_vec();
            patch_rand_drop(&mut out[i * per..(i + 1) * per], c, dims, Some(&partner), cfg, draws)?;
        }
    }
    Ok(out)
}

/// `torch.rot90(x, k, dims = (2, 3))` of one sample `[C, X, Y, Z]` (rotation about the first
/// spatial axis); the output is `[C, X, Z, Y]` for odd `k`.
///
/// Index maps (`out[c, x, i, j]` =): k = 1: `in[c, x, j, Z−1−i]`; k = 2: `in[c, x, Y−1−i, Z−1−j]`;
/// k = 3: `in[c, x, Y−1−j, i]`.
pub fn rot90(x: &[f32], c: usize, dims: [usize; 3], k: usize) -> Result<Vec<f32>> {
    check_len("rot90", x.len(), c, dims)?;
    let [nx, ny, nz] = dims;
    let k = k % 4;
    let (oy, oz) = if k % 2 == 1 { (nz, ny) } else { (ny, nz) };
    let mut out = vec![0f32; x.len()];
    for ch in 0..c {
        for xi in 0..nx {
            let base = (ch * nx + xi) * ny * nz;
            for i in 0..oy {
                for j in 0..oz {
                    let (y, z) = match k {
                        0 => (i, j),
                        1 => (j, nz - 1 - i),
                        2 => (ny - 1 - i, nz - 1 - j),
                        _ => (ny - 1 - j, i),
                    };
                    out[base + i * oz + j] = x[base + y * nz + z];
                }
            }
        }
    }
    Ok(out)
}

/// `rot_rand` on a batch `[B, C, X, Y, Z]` with `Y = Z`: each sample is rotated by
/// `k = randint(0, 4)` quarter turns; returns the rotated batch and the labels `k`.
pub fn rot_rand(
    batch: &[f32],
    b: usize,
    c: usize,
    dims: [usize; 3],
    draws: &mut dyn Draws,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let per = c * dims.iter().product::<usize>();
    if dims[1] != dims[2] {
        return Err(Error::InvalidArgument(format!(
            "rot_rand rotates in the plane of spatial axes 1 and 2, which must be equal: {dims:?}"
        )));
    }
    if b == 0 || batch.len() != b * per {
        return Err(Error::InvalidArgument(format!(
            "rot_rand: buffer of {} values does not hold [B = {b}, C = {c}, {dims:?}]",
            batch.len()
        )));
    }
    let mut out = Vec::with_capacity(batch.len());
    let mut labels = Vec::with_capacity(b);
    for i in 0..b {
        let k = draws.randint(0, 4);
        out.extend(rot90(&batch[i * per..(i + 1) * per], c, dims, k)?);
        labels.push(k as u32);
    }
    Ok((out, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn four_quarter_turns_are_the_identity_and_1_then_3_too() {
        let dims = [3, 5, 5];
        let x = ramp(2 * 75);
        let mut y = x.clone();
        for _ in 0..4 {
            y = rot90(&y, 2, dims, 1).expect("rot");
        }
        assert_eq!(y, x);
        let y = rot90(&rot90(&x, 2, dims, 1).expect("rot"), 2, dims, 3).expect("rot");
        assert_eq!(y, x);
        let y2 = rot90(&rot90(&x, 2, dims, 1).expect("rot"), 2, dims, 1).expect("rot");
        assert_eq!(y2, rot90(&x, 2, dims, 2).expect("rot"));
        assert_ne!(rot90(&x, 2, dims, 1).expect("rot"), x);
    }

    #[test]
    fn cutout_reaches_its_budget_inside_the_bounds() {
        let dims = [40, 40, 40];
        let cfg = CutoutConfig::research();
        let mut draws = RngDraws(rand_chacha::ChaCha8Rng::seed_from_u64(3));
        for _ in 0..20 {
            let mut x = vec![-5f32; 64_000];
            let blocks = patch_rand_drop(&mut x, 1, dims, None, &cfg, &mut draws).expect("drop");
            let (tol, mx) = cfg.bounds(dims);
            for b in &blocks {
                for a in 0..3 {
                    assert!(b.start[a] < dims[a] - tol[a]);
                    let side = b.end[a] - b.start[a];
                    assert!(side < mx[a] && (side >= tol[a] || b.end[a] == dims[a]));
                }
            }
            // every replaced voxel holds normalised noise in [0, 1]; the rest is untouched
            assert!(x.iter().all(|&v| v == -5.0 || (0.0..=1.0).contains(&v)));
            let replaced = x.iter().filter(|&&v| v != -5.0).count();
            let summed: usize = blocks.iter().map(Block::volume).sum();
            assert!(replaced <= summed && summed as f64 <= 0.3 * 64_000.0 + (mx[0].pow(3)) as f64);
        }
    }

    #[test]
    fn bad_shapes_and_settings_are_errors() {
        let mut draws = RngDraws(rand_chacha::ChaCha8Rng::seed_from_u64(0));
        let cfg = CutoutConfig::research();
        let mut x = vec![0f32; 8];
        assert!(patch_rand_drop(&mut x, 1, [2, 2, 2], None, &cfg, &mut draws).is_err());
        assert!(patch_rand_drop(&mut x, 1, [4, 4, 4], None, &cfg, &mut draws).is_err());
        assert!(rot_rand(&[0f32; 2 * 3 * 4], 1, 1, [2, 3, 4], &mut draws).is_err());
        let bad = CutoutConfig { tolr: 0.3, ..cfg };
        assert!(bad.validate([96; 3]).is_err());
        assert!(cfg.validate([96; 3]).is_ok());
    }
}
