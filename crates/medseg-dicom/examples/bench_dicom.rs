//! `cargo xtask bench dicom`: time medseg-dicom reading a CT series (every header, geometry
//! checks, decode, rescale to HU) from `WORKDIR/native` (explicit VR little endian) and
//! `WORKDIR/j2k` (JPEG 2000 lossless), written by `tools/bench/dicom_python.py`; medians of
//! `--reps` runs (default 3) into `--out` JSON.
//!
//! Usage: `bench_dicom WORKDIR --out target/bench/dicom.json [--reps N]`.
use std::time::Instant;

use anyhow::{Context, Result, bail};
use medseg_dicom::{Limits, Scan};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let Some(work) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!("usage: bench_dicom WORKDIR --out FILE.json [--reps N]");
    };
    let out = flag("--out").context("--out FILE.json is required")?;
    let reps: usize = flag("--reps").map_or(Ok(3), |r| r.parse()).context("--reps")?;
    let mut records = Vec::new();
    for series in ["native", "j2k"] {
        let dir = std::path::Path::new(work).join(series);
        if !dir.is_dir() {
            bail!("{} is missing: run tools/bench/dicom_python.py {work} first", dir.display());
        }
        let (mut times, mut header_times) = (Vec::new(), Vec::new());
        let mut shape = [0; 3];
        for _ in 0..reps {
            // `read_dicom` in two timed parts: the header pass (`Scan::open`) and the decode.
            let t = Instant::now();
            let mut scan = Scan::open(&dir, Limits::default())
                .with_context(|| format!("reading {}", dir.display()))?;
            header_times.push(t.elapsed().as_secs_f64());
            let uid = scan.choose(None)?.series_instance_uid.clone();
            let v = scan.load(&uid).with_context(|| format!("reading {}", dir.display()))?;
            times.push(t.elapsed().as_secs_f64());
            shape = v.volume.shape();
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        header_times.sort_by(f64::total_cmp);
        let header = header_times[header_times.len() / 2];
        println!(
            "medseg-dicom {series:>6}: {shape:?} median {median:.2} s (header pass {header:.2} s) \
             over {reps} runs {times:.2?}"
        );
        records.push(serde_json::json!({
            "reader": "medseg-dicom", "series": series, "shape": shape,
            "median_s": median, "times_s": times, "header_pass_median_s": header,
        }));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let json = serde_json::json!({"load": load.split_whitespace().take(3).collect::<Vec<_>>(), "records": records});
    std::fs::write(out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {out}"))?;
    Ok(())
}
