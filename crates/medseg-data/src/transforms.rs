//! The transform tier: `Sample`, the `Transform` trait, `Compose`, every BTCV / Swin SMT transform
//! and the published pipelines as presets.
//!
//! Random transforms follow one pattern: `sample(&self, rng) -> Params` draws every random number
//! once, then a pure `apply_params` applies those parameters to the image and the label alike.
//! Semantics mirror MONAI 1.6 (`monai/transforms/{spatial,croppad,intensity}/array.py`); the
//! random number streams differ, the distributions are the same.
use std::path::PathBuf;

use rand::{Rng, RngCore};

use crate::affine::Affine;
use crate::intensity::{self, uniform};
use crate::spatial::{self, Interp, Padding, ZoomMode};
use crate::volume::Volume;
use crate::{Error, Result};

/// Where a sample came from and the geometry needed to map predictions back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Meta {
    /// Case identifier (file stem or datalist entry).
    pub id: String,
    /// Image file, if any.
    pub image_path: Option<PathBuf>,
    /// Label file, if any.
    pub label_path: Option<PathBuf>,
    /// Affine of the image as read from disk.
    pub original_affine: Affine,
    /// Shape of the image as read from disk.
    pub original_shape: [usize; 3],
    /// Index of the crop among the `num_samples` drawn from one volume (0 otherwise).
    pub patch_index: usize,
    /// Header warnings of the image and label files ([`crate::NiftiInfo::warnings`]); binaries
    /// print them. Not kept by the disk cache.
    pub warnings: Vec<String>,
}

/// One training/validation item: a single-channel f32 image, an optional u8 label map on the same grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image (channel 0).
    pub image: Volume<f32>,
    /// The label map, same shape and affine as `image`.
    pub label: Option<Volume<u8>>,
    /// Provenance and original geometry.
    pub meta: Meta,
}

impl Sample {
    /// A sample from in-memory volumes (no files); checks that the label grid matches.
    pub fn new(image: Volume<f32>, label: Option<Volume<u8>>) -> Result<Sample> {
        let meta = Meta {
            original_affine: image.affine,
            original_shape: image.shape(),
            ..Meta::default()
        };
        let s = Sample { image, label, meta };
        s.check_grid()?;
        Ok(s)
    }

    /// Errors when the label's shape or affine (tolerance 1e-3 mm) differs from the image's.
    pub fn check_grid(&self) -> Result<()> {
        if let Some(l) = &self.label
            && !self.image.same_grid(l, 1e-3)
        {
            return Err(Error::GeometryMismatch {
                path: self.meta.label_path.clone().unwrap_or_default(),
                reason: format!(
                    "image shape {:?} affine {:?} vs label shape {:?} affine {:?}",
                    self.image.shape(),
                    self.image.affine.0,
                    l.shape(),
                    l.affine.0
                ),
            });
        }
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.meta.image_path.clone().unwrap_or_default()
    }

    /// Applies one geometric function to the image and the label (a size-limit error names the
    /// sample's image file).
    pub fn map_spatial(
        mut self,
        f_img: impl FnOnce(&Volume<f32>) -> Result<Volume<f32>>,
        f_lbl: impl FnOnce(&Volume<u8>) -> Result<Volume<u8>>,
    ) -> Result<Sample> {
        let path = self.path();
        self.image = f_img(&self.image).map_err(|e| e.at_path(&path))?;
        if let Some(l) = &self.label {
            self.label = Some(f_lbl(l).map_err(|e| e.at_path(&path))?);
        }
        Ok(self)
    }
}

/// A transform of one sample. Random transforms draw from `rng` only.
pub trait Transform: Send + Sync + std::fmt::Debug {
    /// Transforms one sample.
    fn apply(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Sample>;
    /// Transforms one sample into several (patch samplers override this).
    fn apply_multi(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Vec<Sample>> {
        Ok(vec![self.apply(s, rng)?])
    }
    /// Whether the transform draws random numbers (the deterministic prefix can be cached).
    fn is_random(&self) -> bool {
        false
    }
}

/// A sequence of transforms; patch samplers multiply the samples.
#[derive(Debug, Default)]
pub struct Compose(pub Vec<Box<dyn Transform>>);

impl Compose {
    /// Runs every transform in order.
    pub fn apply(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Vec<Sample>> {
        let mut cur = vec![s];
        for t in &self.0 {
            let mut next = Vec::with_capacity(cur.len());
            for s in cur {
                next.extend(t.apply_multi(s, rng)?);
            }
            cur = next;
        }
        Ok(cur)
    }

    /// Splits into the leading deterministic transforms (cacheable) and the rest.
    pub fn split_deterministic(self) -> (Compose, Compose) {
        let n = self.0.iter().position(|t| t.is_random()).unwrap_or(self.0.len());
        let mut head = self.0;
        let tail = head.split_off(n);
        (Compose(head), Compose(tail))
    }

    /// Number of transforms.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------- deterministic transforms

/// MONAI `Orientation(axcodes)` on image and label.
#[derive(Debug, Clone)]
pub struct Orientation {
    /// Target codes, e.g. `"RAS"`.
    pub axcodes: String,
}

impl Transform for Orientation {
    fn apply(&self, s: Sample, _rng: &mut dyn RngCore) -> Result<Sample> {
        let c = &self.axcodes;
        s.map_spatial(|v| spatial::orient(v, c), |v| spatial::orient(v, c))
    }
}

/// MONAI `Spacing(pixdim)`: trilinear for the image, nearest for the label (border padding).
#[derive(Debug, Clone)]
pub struct Spacing {
    /// Target voxel size in mm.
    pub pixdim: [f64; 3],
}

impl Transform for Spacing {
    fn apply(&self, s: Sample, _rng: &mut dyn RngCore) -> Result<Sample> {
        let p = self.pixdim;
        s.map_spatial(|v| spatial::spacing_image(v, p), |v| spatial::spacing_label(v, p))
    }
}

/// MONAI `ScaleIntensityRange(a_min, a_max, b_min, b_max, clip)` on the image.
#[derive(Debug, Clone)]
pub struct ScaleIntensityRange {
    /// Input low.
    pub a_min: f32,
    /// Input high (must differ from `a_min`).
    pub a_max: f32,
    /// Output low.
    pub b_min: f32,
    /// Output high.
    pub b_max: f32,
    /// Clip to `[b_min, b_max]`.
    pub clip: bool,
}

impl Transform for ScaleIntensityRange {
    fn apply(&self, mut s: Sample, _rng: &mut dyn RngCore) -> Result<Sample> {
        if self.a_max == self.a_min {
            return Err(Error::InvalidArgument(format!(
                "ScaleIntensityRange with a_min == a_max = {}",
                self.a_min
            )));
        }
        intensity::scale_intensity_range(
            s.image.data_mut(),
            self.a_min,
            self.a_max,
            self.b_min,
            self.b_max,
            self.clip,
        );
        Ok(s)
    }
}

/// MONAI `CropForeground(select_fn = image > threshold, margin, allow_smaller, k_divisible)`.
///
/// A sample without foreground is returned unchanged (MONAI would produce an empty volume).
/// Outside parts of a box that exceeds the volume are zero-padded (image and label).
#[derive(Debug, Clone)]
pub struct CropForeground {
    /// Foreground is `image > threshold` (MONAI's default `is_positive` is threshold 0).
    pub threshold: f32,
    /// Margin in voxels per axis.
    pub margin: [usize; 3],
    /// Clip the margin-grown box to the volume (MONAI ≥ 1.5 default `false`).
    pub allow_smaller: bool,
    /// Round the box size up to a multiple of this per axis.
    pub k_divisible: [usize; 3],
}

impl Default for CropForeground {
    fn default() -> Self {
        CropForeground { threshold: 0.0, margin: [0; 3], allow_smaller: false, k_divisible: [1; 3] }
    }
}

impl Transform for CropForeground {
    fn apply(&self, s: Sample, _rng: &mut dyn RngCore) -> Result<Sample> {
        let th = self.threshold;
        let fg = spatial::bounding_box(&s.image, |v| v > th);
        let Some((start, size)) = spatial::foreground_box(
            fg,
            s.image.shape(),
            self.margin,
            self.allow_smaller,
            self.k_divisible,
        ) else {
            return Ok(s);
        };
        s.map_spatial(|v| spatial::crop(v, start, size, 0.0), |v| spatial::crop(v, start, size, 0))
    }
}

/// MONAI `SpatialPad(spatial_size, method="symmetric", mode="constant")`, zero fill.
#[derive(Debug, Clone)]
pub struct SpatialPad {
    /// Minimum output size.
    pub size: [usize; 3],
}

impl Transform for SpatialPad {
    fn apply(&self, s: Sample, _rng: &mut dyn RngCore) -> Result<Sample> {
        let z = self.size;
        s.map_spatial(|v| spatial::spatial_pad(v, z, 0.0), |v| spatial::spatial_pad(v, z, 0))
    }
}

// ---------------------------------------------------------------- random transforms

fn fires<R: Rng + ?Sized>(rng: &mut R, prob: f64) -> bool {
    rng.random::<f64>() < prob
}

/// MONAI `RandFlip(prob, spatial_axis)`: flips one axis with probability `prob`.
#[derive(Debug, Clone)]
pub struct RandFlip {
    /// Probability.
    pub prob: f64,
    /// Spatial axis 0, 1 or 2.
    pub axis: usize,
}

impl RandFlip {
    /// Whether to flip.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> bool {
        fires(rng, self.prob)
    }
}

impl Transform for RandFlip {
    fn apply(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        if self.axis > 2 {
            return Err(Error::InvalidArgument(format!(
                "RandFlip axis {} is not 0, 1 or 2",
                self.axis
            )));
        }
        if !self.sample(rng) {
            return Ok(s);
        }
        let a = self.axis;
        s.map_spatial(|v| Ok(spatial::flip(v, a)), |v| Ok(spatial::flip(v, a)))
    }
    fn is_random(&self) -> bool {
        true
    }
}

/// MONAI `RandRotate90(prob, max_k, spatial_axes)`: `k ∈ {1..=max_k}` quarter turns.
#[derive(Debug, Clone)]
pub struct RandRotate90 {
    /// Probability.
    pub prob: f64,
    /// Largest number of quarter turns (MONAI default 3).
    pub max_k: u32,
    /// Rotation plane.
    pub axes: (usize, usize),
}

impl RandRotate90 {
    /// `0` when not fired, else `k`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        if fires(rng, self.prob) { rng.random_range(0..self.max_k.max(1)) + 1 } else { 0 }
    }
}

impl Transform for RandRotate90 {
    fn apply(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        let (a, b) = self.axes;
        if a > 2 || b > 2 || a == b {
            return Err(Error::InvalidArgument(format!(
                "RandRotate90 axes {:?} must be two distinct of 0, 1, 2",
                self.axes
            )));
        }
        let k = self.sample(rng);
        if k == 0 {
            return Ok(s);
        }
        let ax = self.axes;
        s.map_spatial(|v| Ok(spatial::rot90(v, k, ax)), |v| Ok(spatial::rot90(v, k, ax)))
    }
    fn is_random(&self) -> bool {
        true
    }
}

/// MONAI `RandScaleIntensity(factors, prob)`: `v · (1 + f)`, `f ~ U(−factors, factors)`.
#[derive(Debug, Clone)]
pub struct RandScaleIntensity {
    /// Probability.
    pub prob: f64,
    /// Half-width of the factor range.
    pub factors: f64,
}

impl Transform for RandScaleIntensity {
    fn apply(&self, mut s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        if fires(rng, self.prob) {
            let f = uniform(rng, -self.factors, self.factors) as f32;
            intensity::scale(s.image.data_mut(), f);
        }
        Ok(s)
    }
    fn is_random(&self) -> bool {
        true
    }
}

/// MONAI `RandShiftIntensity(offsets, prob)`: `v + o`, `o ~ U(−offsets, offsets)`.
#[derive(Debug, Clone)]
pub struct RandShiftIntensity {
    /// Probability.
    pub prob: f64,
    /// Half-width of the offset range.
    pub offsets: f64,
}

impl Transform for RandShiftIntensity {
    fn apply(&self, mut s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        if fires(rng, self.prob) {
            let o = uniform(rng, -self.offsets, self.offsets) as f32;
            intensity::shift(s.image.data_mut(), o);
        }
        Ok(s)
    }
    fn is_random(&self) -> bool {
        true
    }
}

/// MONAI `RandGaussianNoise(prob, mean, std, sample_std=True)`: std drawn from `U(0, std)`.
#[derive(Debug, Clone)]
pub struct RandGaussianNoise {
    /// Probability.
    pub prob: f64,
    /// Noise mean.
    pub mean: f64,
    /// Upper bound of the noise standard deviation.
    pub std: f64,
}

impl Transform for RandGaussianNoise {
    fn apply(&self, mut s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        if !(self.std.is_finite() && self.std >= 0.0 && self.mean.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "RandGaussianNoise mean {} std {}",
                self.mean, self.std
            )));
        }
        if fires(rng, self.prob) {
            let std = uniform(rng, 0.0, self.std) as f32;
            let seed = rng.next_u64();
            intensity::add_gaussian_noise(s.image.data_mut(), self.mean as f32, std, seed);
        }
        Ok(s)
    }
    fn is_random(&self) -> bool {
        true
    }
}

/// MONAI `RandZoom(prob, min_zoom, max_zoom, mode, keep_size=True)`: one isotropic factor
/// `z ~ U(min, max)`; the image uses `image_mode` (default area), the label nearest; the result is
/// centre-cropped or edge-padded back to the input size.
#[derive(Debug, Clone)]
pub struct RandZoom {
    /// Probability.
    pub prob: f64,
    /// Smallest factor.
    pub min_zoom: f64,
    /// Largest factor.
    pub max_zoom: f64,
    /// Image interpolation.
    pub image_mode: ZoomMode,
}

fn keep_size<T: Copy + Into<f64> + Sync + Send + Default>(
    v: &Volume<T>,
    orig: [usize; 3],
    cast: impl Fn(f64) -> T + Sync,
) -> Result<Volume<T>> {
    let shape = v.shape();
    if shape == orig {
        return Ok(v.clone());
    }
    // Centre crop or symmetric pad with edge replication: nearest sampling with border padding
    // at integer offsets.
    let start: [f64; 3] = std::array::from_fn(|d| {
        if shape[d] >= orig[d] {
            ((shape[d] / 2) as isize - (orig[d] / 2) as isize) as f64
        } else {
            -(((orig[d] - shape[d]) / 2) as f64)
        }
    });
    let m = Affine::translation(start);
    spatial::warp(v, &m, orig, v.affine.matmul(&m), Interp::Nearest, Padding::Border, cast)
}

impl Transform for RandZoom {
    fn apply(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        if !fires(rng, self.prob) {
            return Ok(s);
        }
        let z = uniform(rng, self.min_zoom, self.max_zoom);
        let orig = s.image.shape();
        let mode = self.image_mode;
        s.map_spatial(
            |v| keep_size(&spatial::zoom(v, [z; 3], mode, |x| x as f32)?, orig, |x| x as f32),
            |v| {
                keep_size(&spatial::zoom(v, [z; 3], ZoomMode::Nearest, |x| x as u8)?, orig, |x| {
                    x as u8
                })
            },
        )
    }
    fn is_random(&self) -> bool {
        true
    }
}

/// Parameters drawn by [`RandAffine`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineParams {
    /// Rotation angles (radians) about axes 0, 1, 2.
    pub angles: [f64; 3],
    /// Scale factors per axis.
    pub scale: [f64; 3],
    /// Translation in voxels.
    pub translate: [f64; 3],
}

/// MONAI `RandAffine(prob, rotate_range, scale_range, translate_range, padding_mode)`: output
/// voxel `q` reads the input at `c + R·(S·(q − c) + t)` (trilinear image, nearest label).
#[derive(Debug, Clone)]
pub struct RandAffine {
    /// Probability.
    pub prob: f64,
    /// Angle half-ranges (radians).
    pub rotate_range: [f64; 3],
    /// Scale half-ranges (factor `1 + U(−s, s)`).
    pub scale_range: [f64; 3],
    /// Translation half-ranges in voxels.
    pub translate_range: [f64; 3],
    /// Padding (MONAI default reflection).
    pub padding: Padding,
}

impl RandAffine {
    /// Draws the parameters (`None` when not fired).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<AffineParams> {
        if !fires(rng, self.prob) {
            return None;
        }
        let angles = self.rotate_range.map(|r| uniform(rng, -r, r));
        let scale = self.scale_range.map(|r| 1.0 + uniform(rng, -r, r));
        let translate = self.translate_range.map(|r| uniform(rng, -r, r));
        Some(AffineParams { angles, scale, translate })
    }
}

impl Transform for RandAffine {
    fn apply(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        let Some(p) = self.sample(rng) else { return Ok(s) };
        let shape = s.image.shape();
        let m = spatial::centred_affine(shape, p.angles, p.scale, p.translate);
        let pad = self.padding;
        s.map_spatial(
            |v| spatial::warp(v, &m, shape, v.affine.matmul(&m), Interp::Linear, pad, |x| x as f32),
            |v| spatial::warp(v, &m, shape, v.affine.matmul(&m), Interp::Nearest, pad, |x| x as u8),
        )
    }
    fn is_random(&self) -> bool {
        true
    }
}

/// MONAI `RandCropByPosNegLabel(spatial_size, pos, neg, num_samples, image_threshold)`.
///
/// Each crop centre is a foreground voxel (`label > 0`) with probability `pos / (pos + neg)`, else a
/// background voxel (`label == 0` and `image > image_threshold`), then shifted so the crop lies inside
/// the volume. If one of the two sets is empty the other is used (as MONAI). A volume smaller than
/// `size` is first zero-padded symmetrically to `size` (documented safe behaviour; MONAI raises).
#[derive(Debug, Clone)]
pub struct RandCropByPosNegLabel {
    /// Crop size.
    pub size: [usize; 3],
    /// Positive weight.
    pub pos: f64,
    /// Negative weight.
    pub neg: f64,
    /// Crops per input sample.
    pub num_samples: usize,
    /// Background voxels must have `image > image_threshold`.
    pub image_threshold: f32,
}

impl RandCropByPosNegLabel {
    /// Draws `num_samples` crop starts for a padded sample (image/label of the same shape).
    pub fn sample<R: Rng + ?Sized>(
        &self,
        image: &Volume<f32>,
        label: &Volume<u8>,
        rng: &mut R,
    ) -> Option<Vec<[isize; 3]>> {
        let th = self.image_threshold;
        let img = image.data();
        let lbl = label.data();
        let is_fg = |i: usize| lbl[i] > 0;
        let is_bg = |i: usize| lbl[i] == 0 && img[i] > th;
        let n_fg = (0..lbl.len()).filter(|&i| is_fg(i)).count();
        let n_bg = (0..lbl.len()).filter(|&i| is_bg(i)).count();
        if n_fg == 0 && n_bg == 0 {
            return None;
        }
        let ratio = if n_fg == 0 {
            0.0
        } else if n_bg == 0 {
            1.0
        } else {
            self.pos / (self.pos + self.neg)
        };
        let shape = label.shape();
        let mut starts = Vec::with_capacity(self.num_samples);
        for _ in 0..self.num_samples {
            let use_fg = rng.random::<f64>() < ratio;
            let n = if use_fg { n_fg } else { n_bg };
            let r = rng.random_range(0..n);
            let idx = if use_fg {
                (0..lbl.len()).filter(|&i| is_fg(i)).nth(r)
            } else {
                (0..lbl.len()).filter(|&i| is_bg(i)).nth(r)
            }
            .unwrap_or(0);
            let c = [idx / (shape[1] * shape[2]), (idx / shape[2]) % shape[1], idx % shape[2]];
            starts.push(std::array::from_fn(|d| {
                let center = correct_center(c[d], self.size[d], shape[d]);
                center as isize - (self.size[d] / 2) as isize
            }));
        }
        Some(starts)
    }
}

/// MONAI `correct_crop_centers` for one axis (`size <= n`).
fn correct_center(c: usize, size: usize, n: usize) -> usize {
    let valid_start = size / 2;
    let mut valid_end = ((n as f64 + 1.0) - size as f64 / 2.0) as usize;
    if valid_start == valid_end {
        valid_end += 1;
    }
    c.max(valid_start).min(valid_end.saturating_sub(1))
}

impl Transform for RandCropByPosNegLabel {
    fn apply(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        let mut v = self.apply_multi(s, rng)?;
        Ok(v.swap_remove(0))
    }
    fn apply_multi(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Vec<Sample>> {
        if self.num_samples == 0 || self.pos < 0.0 || self.neg < 0.0 || self.pos + self.neg <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "RandCropByPosNegLabel needs num_samples >= 1 and pos + neg > 0, got {} / {} / {}",
                self.num_samples, self.pos, self.neg
            )));
        }
        let path = s.path();
        let size = self.size;
        let s = s.map_spatial(
            |v| spatial::spatial_pad(v, size, 0.0),
            |v| spatial::spatial_pad(v, size, 0),
        )?;
        let label = s.label.as_ref().ok_or_else(|| Error::Transform {
            path: path.clone(),
            reason: "RandCropByPosNegLabel needs a label".into(),
        })?;
        let starts = self.sample(&s.image, label, rng).ok_or_else(|| Error::Transform {
            path: path.clone(),
            reason: "no foreground or background voxel to centre a crop on".into(),
        })?;
        starts
            .into_iter()
            .enumerate()
            .map(|(n, st)| {
                let mut meta = s.meta.clone();
                meta.patch_index = n;
                Ok(Sample {
                    image: spatial::crop(&s.image, st, size, 0.0).map_err(|e| e.at_path(&path))?,
                    label: s
                        .label
                        .as_ref()
                        .map(|l| spatial::crop(l, st, size, 0))
                        .transpose()
                        .map_err(|e| e.at_path(&path))?,
                    meta,
                })
            })
            .collect()
    }
    fn is_random(&self) -> bool {
        true
    }
}

/// MONAI `RandSpatialCropSamples(roi, num_samples, random_center=True, random_size=False)` (used by
/// the SSL pretraining loader): uniform crop starts; volumes smaller than `size` are padded first.
#[derive(Debug, Clone)]
pub struct RandSpatialCropSamples {
    /// Crop size.
    pub size: [usize; 3],
    /// Crops per input.
    pub num_samples: usize,
}

impl Transform for RandSpatialCropSamples {
    fn apply(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Sample> {
        let mut v = self.apply_multi(s, rng)?;
        Ok(v.swap_remove(0))
    }
    fn apply_multi(&self, s: Sample, rng: &mut dyn RngCore) -> Result<Vec<Sample>> {
        let size = self.size;
        let s = s.map_spatial(
            |v| spatial::spatial_pad(v, size, 0.0),
            |v| spatial::spatial_pad(v, size, 0),
        )?;
        let shape = s.image.shape();
        let path = s.path();
        let mut out = Vec::new();
        for n in 0..self.num_samples.max(1) {
            let st: [isize; 3] =
                std::array::from_fn(|d| rng.random_range(0..=shape[d] - size[d]) as isize);
            let mut meta = s.meta.clone();
            meta.patch_index = n;
            out.push(Sample {
                image: spatial::crop(&s.image, st, size, 0.0).map_err(|e| e.at_path(&path))?,
                label: s
                    .label
                    .as_ref()
                    .map(|l| spatial::crop(l, st, size, 0))
                    .transpose()
                    .map_err(|e| e.at_path(&path))?,
                meta,
            });
        }
        Ok(out)
    }
    fn is_random(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------- presets

/// Parameters of the BTCV recipe (research-contributions `SwinUNETR/BTCV/main.py` defaults).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BtcvConfig {
    /// Target spacing (mm).
    pub pixdim: [f64; 3],
    /// HU window low.
    pub a_min: f32,
    /// HU window high.
    pub a_max: f32,
    /// Patch size.
    pub roi: [usize; 3],
    /// Patches per volume.
    pub num_samples: usize,
    /// RandFlip probability per axis.
    pub flip_prob: f64,
    /// RandRotate90 probability.
    pub rot90_prob: f64,
    /// RandScaleIntensity probability.
    pub scale_prob: f64,
    /// RandShiftIntensity probability.
    pub shift_prob: f64,
}

impl BtcvConfig {
    /// `main.py` defaults: spacing 1.5×1.5×2, HU −175…250, 96³, 4 samples, p 0.2/0.2/0.1/0.1.
    pub fn research() -> Self {
        BtcvConfig {
            pixdim: [1.5, 1.5, 2.0],
            a_min: -175.0,
            a_max: 250.0,
            roi: [96; 3],
            num_samples: 4,
            flip_prob: 0.2,
            rot90_prob: 0.2,
            scale_prob: 0.1,
            shift_prob: 0.1,
        }
    }
}

fn btcv_deterministic(c: &BtcvConfig) -> Vec<Box<dyn Transform>> {
    vec![
        Box::new(Orientation { axcodes: "RAS".into() }),
        Box::new(Spacing { pixdim: c.pixdim }),
        Box::new(ScaleIntensityRange {
            a_min: c.a_min,
            a_max: c.a_max,
            b_min: 0.0,
            b_max: 1.0,
            clip: true,
        }),
        Box::new(CropForeground { allow_smaller: true, ..CropForeground::default() }),
    ]
}

/// The BTCV training pipeline (Orientation RAS → Spacing → ScaleIntensityRange → CropForeground →
/// RandCropByPosNegLabel → RandFlip ×3 → RandRotate90 → RandScaleIntensity → RandShiftIntensity).
pub fn btcv_train(c: &BtcvConfig) -> Compose {
    let mut t = btcv_deterministic(c);
    t.push(Box::new(RandCropByPosNegLabel {
        size: c.roi,
        pos: 1.0,
        neg: 1.0,
        num_samples: c.num_samples,
        image_threshold: 0.0,
    }));
    for axis in 0..3 {
        t.push(Box::new(RandFlip { prob: c.flip_prob, axis }));
    }
    t.push(Box::new(RandRotate90 { prob: c.rot90_prob, max_k: 3, axes: (0, 1) }));
    t.push(Box::new(RandScaleIntensity { prob: c.scale_prob, factors: 0.1 }));
    t.push(Box::new(RandShiftIntensity { prob: c.shift_prob, offsets: 0.1 }));
    Compose(t)
}

/// The BTCV validation pipeline (the deterministic part of [`btcv_train`]).
pub fn btcv_val(c: &BtcvConfig) -> Compose {
    Compose(btcv_deterministic(c))
}

/// The Swin SMT TotalSegmentator training pipeline (`src/data_loader.py`): RAS, HU −1024…1024 → [0, 1],
/// CropForeground(k_divisible = roi), RandZoom(1.3–1.5, area, p 0.3), RandCropByPosNegLabel(roi, 1, 1, 1),
/// RandRotate90(p 0.1), RandShiftIntensity(0.1, p 0.2).
pub fn smt_train(roi: [usize; 3]) -> Compose {
    let mut t = smt_val(roi).0;
    t.push(Box::new(RandZoom {
        prob: 0.3,
        min_zoom: 1.3,
        max_zoom: 1.5,
        image_mode: ZoomMode::Area,
    }));
    t.push(Box::new(RandCropByPosNegLabel {
        size: roi,
        pos: 1.0,
        neg: 1.0,
        num_samples: 1,
        image_threshold: 0.0,
    }));
    t.push(Box::new(RandRotate90 { prob: 0.1, max_k: 3, axes: (0, 1) }));
    t.push(Box::new(RandShiftIntensity { prob: 0.2, offsets: 0.1 }));
    Compose(t)
}

/// The Swin SMT validation pipeline.
pub fn smt_val(roi: [usize; 3]) -> Compose {
    Compose(vec![
        Box::new(Orientation { axcodes: "RAS".into() }),
        Box::new(ScaleIntensityRange {
            a_min: -1024.0,
            a_max: 1024.0,
            b_min: 0.0,
            b_max: 1.0,
            clip: true,
        }),
        Box::new(CropForeground { k_divisible: roi, ..CropForeground::default() }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correct_center_matches_monai() {
        // label shape 10, roi 4: valid centres [2, 8]
        assert_eq!(correct_center(0, 4, 10), 2);
        assert_eq!(correct_center(9, 4, 10), 8);
        // roi 5: valid_end = int(11 - 2.5) = 8 -> centres [2, 7]
        assert_eq!(correct_center(9, 5, 10), 7);
        // roi == n: start 5, end int(11 - 5) = 6 -> 5
        assert_eq!(correct_center(0, 10, 10), 5);
    }
}
