//! Data benchmark (`cargo run --release -p medseg-data --example bench_data -- <workdir> [out.json]`):
//! load time of the shared CT cases and of a synthetic 512×512×300 i16 `.nii.gz`, and augmented
//! 96³ patches per second through the BTCV training pipeline with the threaded loader.
//! `tools/bench/data_nibabel.py <workdir>` measures nibabel + MONAI on the same files.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use medseg_data::phantom::{self, PhantomConfig};
use medseg_data::transforms::{self, BtcvConfig};
use medseg_data::{Affine, CacheMode, Datalist, Loader, LoaderConfig, Volume};

fn median_secs(n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

fn synthetic(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let p = dir.join("synthetic_512x512x300_i16.nii.gz");
    if !p.is_file() {
        let mut state = 0x1234_5678u64;
        let v =
            Volume::from_fn([512, 512, 300], Affine::from_diagonal([0.8, 0.8, 1.5]), |i, j, k| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let (x, y) = ((i as f64 - 256.0) / 230.0, (j as f64 - 256.0) / 180.0);
                if x * x + y * y > 1.0 {
                    -1024
                } else {
                    (40.0 + 30.0 * ((k as f64) / 20.0).sin() + ((state >> 40) % 40) as f64) as i16
                }
            });
        medseg_data::write_volume(&p, &v)?;
    }
    Ok(p)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().unwrap_or_else(|| "target/bench-data".into()));
    let out = args.next();
    std::fs::create_dir_all(&work)?;
    let mut report = serde_json::Map::new();
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let mut files: Vec<PathBuf> = Vec::new();
    for case in ["ts-abdomen-3mm-small", "ts-abdomen-pelvis-3mm", "ts-thorax-aorta-1.5mm"] {
        let p = shared.join(case).join("ct.nii.gz");
        if p.is_file() {
            files.push(p);
        }
    }
    files.push(synthetic(&work)?);
    for f in &files {
        let t = median_secs(3, || {
            let v: Volume<f32> = medseg_data::read_volume(f).expect("read");
            std::hint::black_box(v.len());
        });
        let name = f.strip_prefix(&shared).unwrap_or(f).display().to_string();
        println!("load {name}: {t:.3} s");
        report.insert(format!("load_s/{name}"), t.into());
    }
    // Augmented patches: phantom volumes of 192×192×128 at 1.5 mm through the BTCV pipeline.
    let ph = work.join("phantom-bench");
    let cfg = PhantomConfig {
        n_cases: 4,
        n_validation: 0,
        shape: [192, 192, 128],
        spacing: [1.5, 1.5, 2.0],
        ..PhantomConfig::default()
    };
    let json = if ph.join("dataset.json").is_file() {
        ph.join("dataset.json")
    } else {
        phantom::generate(&ph, &cfg)?
    };
    let dl = Datalist::from_json(&json)?;
    let ds = Arc::new(dl.training_dataset());
    let workers = std::env::var("BENCH_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let lc = LoaderConfig {
        num_workers: workers,
        cache: CacheMode::Memory,
        ..LoaderConfig::train(1, 0)
    };
    let loader = Loader::new(ds, transforms::btcv_train(&BtcvConfig::research()), lc)?;
    let s = Instant::now();
    let mut n = 0usize;
    for b in loader.epoch(0) {
        n += b?.image.dims()[0];
    }
    let warm = s.elapsed().as_secs_f64();
    println!("epoch 0 (load + preprocess + cache, {n} patches): {warm:.2} s");
    let s = Instant::now();
    let mut n = 0usize;
    for e in 1..=5 {
        for b in loader.epoch(e) {
            n += b?.image.dims()[0];
        }
    }
    let pps = n as f64 / s.elapsed().as_secs_f64();
    println!("augmented 96³ patches/s ({workers} workers, cached): {pps:.1}");
    report.insert("btcv_first_epoch_s".into(), warm.into());
    report.insert("btcv_patches_per_s".into(), pps.into());
    if let Some(o) = out {
        std::fs::write(o, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
