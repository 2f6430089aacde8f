//! A deterministic synthetic abdominal CT phantom: NIfTI images + label maps + an MSD-style
//! `dataset.json`. This is the embedded default data set of `cargo xtask train`.
//!
//! Each case is an air background (−1000 HU), an elliptic body (fat-like −80 HU with smooth texture
//! and a 50 HU muscle wall), five organs with smooth random shapes (ellipsoids deformed by Gaussian
//! bumps) — liver, spleen, left and right kidney (cortex 160 HU around a 30 HU medulla) and the
//! spine (700 HU cortical shell, 250 HU marrow) — Gaussian noise, and a random pose (rotation up
//! to `max_rotation_deg`, translation up to `max_shift_vox`). Same seed, same bytes.
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::affine::Affine;
use crate::intensity::uniform;
use crate::nifti_io::{atomic_write, write_volume};
use crate::volume::Volume;
use crate::{Error, Result};

/// Class names of the phantom labels, index = label value.
pub const PHANTOM_LABELS: [&str; 6] =
    ["background", "liver", "spleen", "kidney_left", "kidney_right", "spine"];

/// Phantom settings. [`PhantomConfig::default`] is small enough for a tiny Swin UNETR on 2 CPU cores.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhantomConfig {
    /// Number of cases written.
    pub n_cases: usize,
    /// How many of them (the last ones) go to `validation`.
    pub n_validation: usize,
    /// Volume shape `(X, Y, Z)`.
    pub shape: [usize; 3],
    /// Voxel size in mm.
    pub spacing: [f64; 3],
    /// Master seed: case `n` uses a stream derived from `(seed, n)`.
    pub seed: u64,
    /// Standard deviation of the voxel noise in HU.
    pub noise_hu: f64,
    /// Largest pose rotation about each axis, degrees.
    pub max_rotation_deg: f64,
    /// Largest pose translation, voxels.
    pub max_shift_vox: f64,
    /// Write odd cases in LPS orientation (same anatomy) to exercise `Orientation`.
    pub mixed_orientation: bool,
    /// How the four soft-tissue organs differ in intensity.
    #[serde(default)]
    pub contrast: OrganContrast,
}

/// Organ intensities of the phantom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrganContrast {
    /// Each organ has its own intensity: liver 65 HU, spleen 45 HU, kidneys a 160 HU cortex
    /// around a 30 HU medulla. A small network separates most voxels by intensity alone.
    #[default]
    Distinct,
    /// Liver, spleen and both kidneys are one 50 HU soft tissue (with the same texture and
    /// per-case shift); only position and shape tell them apart, so a segmenter needs context.
    /// The random draws are those of `Distinct`: the same seed gives the same anatomy.
    Uniform,
}

impl Default for PhantomConfig {
    /// 12 cases (10 train / 2 val) of 64³ at 2 mm, noise 15 HU, ±8° / ±3 voxel pose.
    fn default() -> Self {
        PhantomConfig {
            n_cases: 12,
            n_validation: 2,
            shape: [64, 64, 64],
            spacing: [2.0, 2.0, 2.0],
            seed: 0,
            noise_hu: 15.0,
            max_rotation_deg: 8.0,
            max_shift_vox: 3.0,
            mixed_orientation: false,
            contrast: OrganContrast::Distinct,
        }
    }
}

/// An ellipsoid deformed by Gaussian bumps, in normalised body coordinates (`[-1, 1]³`).
#[derive(Debug, Clone)]
struct Blob {
    center: [f64; 3],
    radii: [f64; 3],
    /// (centre offset in units of the radii, amplitude, width).
    bumps: Vec<([f64; 3], f64, f64)>,
}

impl Blob {
    fn random(rng: &mut ChaCha8Rng, center: [f64; 3], radii: [f64; 3], jitter: f64) -> Blob {
        let center = center.map(|c| c + uniform(rng, -jitter, jitter));
        let radii = radii.map(|r| r * uniform(rng, 0.9, 1.1));
        let bumps = (0..4)
            .map(|_| {
                let dir: [f64; 3] = std::array::from_fn(|_| uniform(rng, -1.0, 1.0));
                (dir, uniform(rng, -0.5, 0.5), uniform(rng, 0.35, 0.6))
            })
            .collect();
        Blob { center, radii, bumps }
    }

    /// < 1 inside. `q` in radius units relative to the centre.
    fn level(&self, p: [f64; 3]) -> f64 {
        let q: [f64; 3] = std::array::from_fn(|d| (p[d] - self.center[d]) / self.radii[d]);
        let mut f = q[0] * q[0] + q[1] * q[1] + q[2] * q[2];
        for (b, amp, w) in &self.bumps {
            let d2 = (0..3).map(|d| (q[d] - b[d]).powi(2)).sum::<f64>();
            f -= amp * (-d2 / (2.0 * w * w)).exp();
        }
        f
    }
}

/// Mixes a seed with a case index (splitmix64).
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x6A09_E667_F3BC_C909);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Generates case `n` in memory: `(image in HU as i16, label map)`, RAS affine centred on the volume.
pub fn generate_case(cfg: &PhantomConfig, n: usize) -> Result<(Volume<i16>, Volume<u8>)> {
    if cfg.shape.iter().any(|&s| s < 8) || cfg.spacing.iter().any(|&s| s.is_nan() || s <= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "phantom shape {:?} (each ≥ 8) / spacing {:?} (> 0) invalid",
            cfg.shape, cfg.spacing
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, n as u64));
    let shape = cfg.shape;
    // Pose: body coordinates b = Rᵀ (u − t), u in normalised voxel coordinates.
    let deg = cfg.max_rotation_deg.to_radians();
    let ang = [
        uniform(&mut rng, -deg, deg) * 0.5,
        uniform(&mut rng, -deg, deg) * 0.5,
        uniform(&mut rng, -deg, deg),
    ];
    let shift: [f64; 3] = std::array::from_fn(|d| {
        uniform(&mut rng, -cfg.max_shift_vox, cfg.max_shift_vox) / (shape[d] as f64 / 2.0)
    });
    let rot = crate::spatial::centred_affine([1, 1, 1], ang, [1.0; 3], [0.0; 3]).linear();
    // Organs (x = patient left→right is +x in RAS; y posterior→anterior; z inferior→superior).
    let body = Blob::random(&mut rng, [0.0, 0.0, 0.0], [0.86, 0.66, 1.4], 0.02);
    let organs = [
        (1u8, Blob::random(&mut rng, [0.32, 0.10, 0.22], [0.44, 0.40, 0.42], 0.04)), // liver
        (2u8, Blob::random(&mut rng, [-0.48, -0.08, 0.28], [0.22, 0.22, 0.32], 0.04)), // spleen
        (3u8, Blob::random(&mut rng, [-0.32, -0.28, -0.30], [0.15, 0.17, 0.30], 0.03)), // kidney_left
        (4u8, Blob::random(&mut rng, [0.32, -0.28, -0.35], [0.15, 0.17, 0.30], 0.03)), // kidney_right
    ];
    let spine_c = [uniform(&mut rng, -0.03, 0.03), -0.42 + uniform(&mut rng, -0.03, 0.03)];
    let spine_r = 0.16 * uniform(&mut rng, 0.9, 1.1);
    let tex: Vec<([f64; 3], f64)> = (0..6)
        .map(|_| {
            (std::array::from_fn(|_| uniform(&mut rng, 1.0, 4.0)), uniform(&mut rng, 0.0, 6.3))
        })
        .collect();
    let hu_shift = uniform(&mut rng, -10.0, 10.0); // per-case contrast variation
    let noise_seed = rng.random::<u64>();
    let half = shape.map(|s| s as f64 / 2.0);
    let nyz = shape[1] * shape[2];
    let mut hu = vec![0f32; shape.iter().product()];
    let mut lbl = vec![0u8; hu.len()];
    hu.par_chunks_mut(nyz).zip(lbl.par_chunks_mut(nyz)).enumerate().for_each(|(i, (h, l))| {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                let u = [
                    (i as f64 + 0.5 - half[0]) / half[0],
                    (j as f64 + 0.5 - half[1]) / half[1],
                    (k as f64 + 0.5 - half[2]) / half[2],
                ];
                let v: [f64; 3] = std::array::from_fn(|d| u[d] - shift[d]);
                // b = Rᵀ v
                let b: [f64; 3] = std::array::from_fn(|c| (0..3).map(|r| rot[r][c] * v[r]).sum());
                let o = j * shape[2] + k;
                let fb = body.level(b);
                if fb >= 1.0 {
                    h[o] = -1000.0;
                    continue;
                }
                let t: f64 = tex
                    .iter()
                    .map(|(f, ph)| (f[0] * b[0] + f[1] * b[1] + f[2] * b[2] + ph).sin())
                    .sum();
                let mut val = if fb > 0.8 { 50.0 } else { -80.0 + 12.0 * t };
                let mut lab = 0u8;
                for (id, blob) in &organs {
                    let f = blob.level(b);
                    if f < 1.0 {
                        lab = *id;
                        val = match (cfg.contrast, id) {
                            (OrganContrast::Uniform, _) => 50.0 + 4.0 * t,
                            (_, 1) => 65.0 + 4.0 * t,
                            (_, 2) => 45.0 + 4.0 * t,
                            _ if f > 0.55 => 160.0,
                            _ => 30.0,
                        } + hu_shift;
                    }
                }
                let rs = ((b[0] - spine_c[0]).powi(2) + ((b[1] - spine_c[1]) * 1.2).powi(2)).sqrt()
                    / spine_r;
                // Vertebrae: a cylinder modulated along z into bodies and discs.
                let disc = (b[2] * 9.0).sin() > 0.85;
                if rs < 1.0 && !disc {
                    lab = 5;
                    val = if rs > 0.7 { 700.0 } else { 250.0 };
                }
                h[o] = val as f32;
                l[o] = lab;
            }
        }
    });
    // Noise from a sequential stream (deterministic regardless of thread count).
    let mut nrng = ChaCha8Rng::seed_from_u64(noise_seed);
    let normal = Normal::new(0.0, cfg.noise_hu.max(0.0))
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let data: Vec<i16> = hu
        .iter()
        .map(|&v| (v as f64 + normal.sample(&mut nrng)).round().clamp(-1024.0, 3071.0) as i16)
        .collect();
    let sp = cfg.spacing;
    let origin: [f64; 3] = std::array::from_fn(|d| -(shape[d] as f64 - 1.0) / 2.0 * sp[d]);
    let affine =
        Affine::from_parts([[sp[0], 0.0, 0.0], [0.0, sp[1], 0.0], [0.0, 0.0, sp[2]]], origin);
    let img = Volume::new(data, shape, affine)
        .ok_or_else(|| Error::InvalidArgument("internal: phantom size".into()))?;
    let lab = Volume::new(lbl, shape, affine)
        .ok_or_else(|| Error::InvalidArgument("internal: phantom size".into()))?;
    if cfg.mixed_orientation && n % 2 == 1 {
        return Ok((crate::spatial::orient(&img, "LPS")?, crate::spatial::orient(&lab, "LPS")?));
    }
    Ok((img, lab))
}

/// Writes `imagesTr/phantom_NNN.nii.gz`, `labelsTr/phantom_NNN.nii.gz` and `dataset.json` under
/// `dir`; returns the path of `dataset.json`. Files are written atomically; rerunning with the same
/// config rewrites identical bytes.
pub fn generate(dir: impl AsRef<Path>, cfg: &PhantomConfig) -> Result<PathBuf> {
    let dir = dir.as_ref();
    if cfg.n_cases == 0 || cfg.n_validation > cfg.n_cases {
        return Err(Error::InvalidArgument(format!(
            "phantom needs n_cases ≥ 1 and n_validation ≤ n_cases, got {} / {}",
            cfg.n_cases, cfg.n_validation
        )));
    }
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
    }
    let mut entries = Vec::with_capacity(cfg.n_cases);
    for n in 0..cfg.n_cases {
        let (img, lab) = generate_case(cfg, n)?;
        let name = format!("phantom_{n:03}.nii.gz");
        write_volume(dir.join("imagesTr").join(&name), &img)?;
        write_volume(dir.join("labelsTr").join(&name), &lab)?;
        entries.push(serde_json::json!({
            "image": format!("./imagesTr/{name}"),
            "label": format!("./labelsTr/{name}"),
        }));
    }
    let n_train = cfg.n_cases - cfg.n_validation;
    let validation = entries.split_off(n_train);
    let labels: serde_json::Map<String, serde_json::Value> =
        PHANTOM_LABELS.iter().enumerate().map(|(i, n)| (i.to_string(), (*n).into())).collect();
    let json = serde_json::json!({
        "name": "medseg-phantom",
        "description": "synthetic abdominal CT phantom (medseg-data::phantom)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": n_train,
        "numValidation": cfg.n_validation,
        "numTest": 0,
        "phantom_config": cfg,
        "training": entries,
        "validation": validation,
        "test": [],
    });
    let path = dir.join("dataset.json");
    let text = serde_json::to_string_pretty(&json)
        .map_err(|e| Error::Json { path: path.clone(), source: e })?;
    atomic_write(&path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    Ok(path)
}
