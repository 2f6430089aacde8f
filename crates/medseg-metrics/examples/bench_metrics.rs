//! Benchmark: Dice + HD95 + NSD on a deterministic 117-class 512×512×300 pair.
//!
//! ```text
//! cargo run --release -p medseg-metrics --example bench_metrics -- --out target/bench/metrics.json
//! ```
//! Ground truth: 117 random ellipsoids (one per class, later classes overwrite earlier ones) on a
//! `[nz, ny, nx] = [300, 512, 512]` grid with spacing `[2.0, 0.8, 0.8]` mm. Prediction: every
//! ellipsoid moved by up to ±3 voxels per axis and scaled by 0.85–1.15 per radius, plus 0.001 %
//! salt voxels of random classes (far outliers, so HD ≠ HD95). The pair is also written as
//! `metrics_pair/{gt,pred}.npy` (uint8, C order, shape `[nz, ny, nx]`) next to the JSON so that
//! `tools/bench/metrics_monai.py --rust-json <json>` times MONAI on exactly the same data.
//!
//! Flags: `--out PATH` (default `target/bench/metrics.json`), `--runs N` (default 3),
//! `--dims NZ,NY,NX`, `--classes N` (default 117), `--no-npy`.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use medseg_metrics::{Metric, MetricsConfig, SegmentationMetric};
use serde_json::json;

const SPACING: [f64; 3] = [2.0, 0.8, 0.8];
const NSD_TOLERANCE_MM: f64 = 3.0;
const SEED: u64 = 0x5EED_2024_0117;

struct Args {
    out: PathBuf,
    runs: usize,
    dims: [usize; 3],
    classes: usize,
    npy: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        out: PathBuf::from("target/bench/metrics.json"),
        runs: 3,
        dims: [300, 512, 512],
        classes: 117,
        npy: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = PathBuf::from(val()?),
            "--runs" => a.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--classes" => a.classes = val()?.parse().map_err(|e| format!("--classes: {e}"))?,
            "--dims" => {
                let v: Vec<usize> = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--dims: {e}"))?;
                a.dims = v.try_into().map_err(|_| "--dims needs NZ,NY,NX".to_string())?;
            }
            "--no-npy" => a.npy = false,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.runs == 0 || a.classes == 0 || a.classes > 255 || a.dims.contains(&0) {
        return Err("--runs, --dims must be > 0 and --classes in 1..=255".into());
    }
    Ok(a)
}

/// xorshift64*: deterministic, platform-independent.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Writes `label` inside the ellipsoid `center ± radii` (voxel units).
fn paint(v: &mut [u8], dims: [usize; 3], center: [f64; 3], radii: [f64; 3], label: u8) {
    let [n0, n1, n2] = dims;
    let range = |k: usize, n: usize| {
        let lo = (center[k] - radii[k]).ceil().max(0.0) as usize;
        let hi = ((center[k] + radii[k]).floor() as isize).min(n as isize - 1);
        lo..(hi + 1).max(0) as usize
    };
    for i0 in range(0, n0) {
        let d0 = (i0 as f64 - center[0]) / radii[0];
        for i1 in range(1, n1) {
            let d1 = (i1 as f64 - center[1]) / radii[1];
            let rest = 1.0 - d0 * d0 - d1 * d1;
            if rest < 0.0 {
                continue;
            }
            let half = rest.sqrt() * radii[2];
            let lo = (center[2] - half).ceil().max(0.0) as usize;
            let hi = ((center[2] + half).floor() as isize).min(n2 as isize - 1);
            if hi < lo as isize {
                continue;
            }
            let row = (i0 * n1 + i1) * n2;
            v[row + lo..=row + hi as usize].fill(label);
        }
    }
}

/// The deterministic (gt, pred) pair described in the module docs.
fn make_pair(dims: [usize; 3], classes: usize) -> (Vec<u8>, Vec<u8>) {
    let n: usize = dims.iter().product();
    let (mut gt, mut pred) = (vec![0u8; n], vec![0u8; n]);
    let mut rng = Rng(SEED);
    // Radii in mm, as organs from vessels to the liver; converted to voxels per axis.
    for c in 1..=classes {
        let r_mm = rng.uniform(8.0, 45.0);
        let radii: [f64; 3] = [0, 1, 2].map(|k| r_mm * rng.uniform(0.6, 1.4) / SPACING[k]);
        let center: [f64; 3] = [0, 1, 2].map(|k| rng.uniform(0.1, 0.9) * dims[k] as f64);
        paint(&mut gt, dims, center, radii, c as u8);
        let pc: [f64; 3] = [0, 1, 2].map(|k| center[k] + rng.uniform(-3.0, 3.0));
        let pr: [f64; 3] = [0, 1, 2].map(|k| radii[k] * rng.uniform(0.85, 1.15));
        paint(&mut pred, dims, pc, pr, c as u8);
    }
    for _ in 0..n / 100_000 {
        let idx = (rng.next_u64() % n as u64) as usize;
        pred[idx] = 1 + (rng.next_u64() % classes as u64) as u8;
    }
    (gt, pred)
}

/// NPY v1.0, uint8, C order.
fn write_npy(path: &Path, data: &[u8], dims: [usize; 3]) -> std::io::Result<()> {
    let mut header = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        dims[0], dims[1], dims[2]
    );
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(data)?;
    f.flush()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 { s[m] } else { 0.5 * (s[m - 1] + s[m]) }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_metrics: {e}");
            std::process::exit(2);
        }
    };
    let dims = args.dims;
    let voxels: usize = dims.iter().product();
    let t = Instant::now();
    let (gt, pred) = make_pair(dims, args.classes);
    let gen_s = t.elapsed().as_secs_f64();
    let num_classes = args.classes + 1;

    let out_dir = args.out.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("bench_metrics: creating {}: {e}", out_dir.display());
        std::process::exit(1);
    }
    let pair_dir = out_dir.join("metrics_pair");
    let (gt_npy, pred_npy) = (pair_dir.join("gt.npy"), pair_dir.join("pred.npy"));
    if args.npy {
        let written = std::fs::create_dir_all(&pair_dir)
            .and_then(|()| write_npy(&gt_npy, &gt, dims))
            .and_then(|()| write_npy(&pred_npy, &pred, dims));
        if let Err(e) = written {
            eprintln!("bench_metrics: writing {}: {e}", pair_dir.display());
            std::process::exit(1);
        }
    }

    let full = SegmentationMetric::new(MetricsConfig::new(num_classes, NSD_TOLERANCE_MM))
        .unwrap_or_else(|e| panic!("config: {e}"));
    let mut dice_cfg = MetricsConfig::new(num_classes, NSD_TOLERANCE_MM);
    dice_cfg.distances = false;
    let dice_only = SegmentationMetric::new(dice_cfg).unwrap_or_else(|e| panic!("config: {e}"));

    let mut runs = Vec::new();
    let mut scores = None;
    for _ in 0..args.runs {
        let t = Instant::now();
        let s =
            full.score_labels("bench", &pred, &gt, dims, SPACING).unwrap_or_else(|e| panic!("{e}"));
        runs.push(t.elapsed().as_secs_f64());
        scores = Some(s);
    }
    let mut dice_runs = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        let _ = dice_only
            .score_labels("bench", &pred, &gt, dims, SPACING)
            .unwrap_or_else(|e| panic!("{e}"));
        dice_runs.push(t.elapsed().as_secs_f64());
    }
    let Some(scores) = scores else { return };
    let mut m = SegmentationMetric::new(MetricsConfig::new(num_classes, NSD_TOLERANCE_MM))
        .unwrap_or_else(|e| panic!("config: {e}"));
    m.push(scores.clone());
    let report = m.compute();
    let mean = |metric: Metric| {
        report.metrics.iter().position(|&x| x == metric).map_or(f64::NAN, |i| report.mean[i].value)
    };
    let threads = rayon::current_num_threads();
    let med = median(&runs);
    let dice_med = median(&dice_runs);

    println!(
        "medseg-metrics bench: {} classes, dims {:?} ({} voxels), spacing {:?} mm",
        args.classes, dims, voxels, SPACING
    );
    println!("| what | median (s) | runs (s) |");
    println!("|---|---|---|");
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
    println!("| Dice+IoU+HD+HD95+ASSD+NSD, {threads} threads | {med:.3} | {} |", fmt(&runs));
    println!("| Dice+IoU only | {dice_med:.3} | {} |", fmt(&dice_runs));
    println!(
        "mean Dice {:.4}, HD95 {:.3} mm, NSD@{NSD_TOLERANCE_MM}mm {:.4} (pair generated in {gen_s:.1} s)",
        mean(Metric::Dice),
        mean(Metric::Hd95),
        mean(Metric::Nsd)
    );

    let per_class: Vec<_> = scores
        .classes
        .iter()
        .map(|c| {
            let s = c.surface.expect("distances enabled");
            json!({"class": c.class, "dice": c.dice, "hd95": num(s.hd95), "nsd": num(s.nsd)})
        })
        .collect();
    let doc = json!({
        "bench": "metrics",
        "dims": dims,
        "spacing": SPACING,
        "classes": args.classes,
        "nsd_tolerance": NSD_TOLERANCE_MM,
        "threads": threads,
        "runs": args.runs,
        "rust": {
            "median_s": med,
            "runs_s": runs,
            "dice_only_median_s": dice_med,
            "dice_only_runs_s": dice_runs,
            "what": "Dice+IoU+HD+HD95+ASSD+NSD, all classes, one pair",
        },
        "mean": {"dice": mean(Metric::Dice), "hd95": num(mean(Metric::Hd95)), "nsd": mean(Metric::Nsd)},
        "pair": if args.npy {
            json!({"gt": gt_npy, "pred": pred_npy, "layout": "uint8 C-order [nz, ny, nx]"})
        } else { serde_json::Value::Null },
        "per_class": per_class,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    if let Err(e) = std::fs::write(&args.out, text + "\n") {
        eprintln!("bench_metrics: writing {}: {e}", args.out.display());
        std::process::exit(1);
    }
    println!("wrote {}", args.out.display());
}

fn num(x: f64) -> serde_json::Value {
    if x.is_finite() { json!(x) } else { json!(x.to_string()) }
}
