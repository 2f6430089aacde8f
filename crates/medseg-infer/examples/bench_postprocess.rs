//! `cargo xtask bench postprocess`: per-class statistics, keep-largest-component and
//! remove-small on a 512×512×300 label map with 117 classes (synthetic: a body of box-shaped
//! organs with speckle that makes small components), the work of `medseg predict --statistics
//! --largest-component --remove-small` on a whole CT. Writes the map and its image as NIfTI into
//! WORKDIR for `tools/bench/postprocess_scipy.py` (the same work in scipy/numpy); medians of
//! `--reps` runs (default 3) into `--out` JSON.
//!
//! Usage: `bench_postprocess WORKDIR --out target/bench/postprocess.json [--reps N]`.
use std::time::Instant;

use anyhow::{Context, Result, bail};
use medseg_data::{Affine, Volume, write_volume};
use medseg_infer::components::{Connectivity, keep_largest, remove_small};
use medseg_infer::statistics::class_statistics;

const DIMS: [usize; 3] = [512, 512, 300];
const SPACING: [f64; 3] = [0.8, 0.8, 1.5];

/// The synthetic label map and image (deterministic).
fn phantom() -> (Vec<u8>, Vec<f32>) {
    let n: usize = DIMS.iter().product();
    let (mut labels, mut image) = (vec![0u8; n], vec![-1000f32; n]);
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..DIMS[0] {
        for j in 0..DIMS[1] {
            for k in 0..DIMS[2] {
                let v = (i * DIMS[1] + j) * DIMS[2] + k;
                let (x, y) = (i as f64 / 256.0 - 1.0, j as f64 / 256.0 - 1.0);
                if x * x + y * y > 0.8 {
                    continue;
                }
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let organ = 1 + ((i / 48) * 7 + (j / 48) * 3 + (k / 30) * 11) % 117;
                // 2 % speckle of a neighbouring class: small components of every class.
                let c = if s.is_multiple_of(50) { 1 + organ % 117 } else { organ };
                labels[v] = c as u8;
                image[v] = c as f32 * 2.0 - 100.0 + (s % 41) as f32;
            }
        }
    }
    (labels, image)
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let Some(work) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!("usage: bench_postprocess WORKDIR --out FILE.json [--reps N]");
    };
    let out = flag("--out").context("--out FILE.json is required")?;
    let reps: usize = flag("--reps").map_or(Ok(3), |r| r.parse()).context("--reps")?;
    let (labels, image) = phantom();
    let work = std::path::Path::new(work);
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let affine = Affine::from_diagonal(SPACING);
    let lab = Volume::new(labels.clone(), DIMS, affine).context("label volume")?;
    write_volume(work.join("labels.nii.gz"), &lab)?;
    let img = Volume::new(image.iter().map(|&v| v as i16).collect::<Vec<i16>>(), DIMS, affine)
        .context("image volume")?;
    write_volume(work.join("image.nii.gz"), &img)?;
    let names: Vec<String> = (0..118).map(|c| format!("class_{c}")).collect();
    let classes: Vec<u8> = (1..=117).collect();
    let (mut t_stats, mut t_largest, mut t_small) = (Vec::new(), Vec::new(), Vec::new());
    let (mut removed_largest, mut removed_small) = (0, 0);
    for _ in 0..reps {
        let t = Instant::now();
        let stats = class_statistics(&labels, &image, SPACING, &names);
        t_stats.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(stats.len() == 117, "statistics of {} classes", stats.len());
        let mut l = labels.clone();
        let t = Instant::now();
        removed_largest = keep_largest(&mut l, DIMS, &classes, Connectivity::Faces);
        t_largest.push(t.elapsed().as_secs_f64());
        let mut l = labels.clone();
        let t = Instant::now();
        removed_small = remove_small(&mut l, DIMS, SPACING, &classes, 0.1, Connectivity::Faces);
        t_small.push(t.elapsed().as_secs_f64());
    }
    let (s, l, r) = (median(t_stats), median(t_largest), median(t_small));
    println!(
        "medseg {DIMS:?}, 117 classes: statistics {s:.2} s, keep largest {l:.2} s \
         ({removed_largest} voxels removed), remove < 0.1 ml {r:.2} s ({removed_small} removed)"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let json = serde_json::json!({
        "load": load.split_whitespace().take(3).collect::<Vec<_>>(),
        "statistics_s": s, "keep_largest_s": l, "remove_small_s": r,
        "removed_largest": removed_largest, "removed_small": removed_small,
    });
    std::fs::write(out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {out}"))?;
    Ok(())
}
