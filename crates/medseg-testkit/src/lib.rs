//! Test helpers shared by the medseg crates.
//!
//! Nothing here is used outside tests: tolerance checks that name the worst element, seeded
//! random tensors, f64 finite differences, gradient-coverage checks, fixture locations and the
//! per-device test macro [`test_device!`].
use std::path::{Path, PathBuf};

use candle::{DType, Device, Result, Tensor, Var, backprop::GradStore};
use candle_nn::VarMap;

/// candle, for [`test_device!`]'s expansion in the calling crate.
pub use candle;

/// One test body, run on every device present (candle's `test_device!`).
///
/// `test_device!(body, body_cpu, body_cuda)` defines `#[test] fn body_cpu()` running
/// `body(&Device::Cpu)` and, when the calling crate is built with its `cuda` feature,
/// `#[test] fn body_cuda()` running `body` on the first CUDA device, or printing
/// `body_cuda: skipped, no CUDA device (…)` and passing when there is none. `body` is a
/// `fn(&Device) -> candle::Result<()>` that computes on the given device and compares against the
/// CPU reference within [`device_tolerance`].
#[macro_export]
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() -> $crate::candle::Result<()> {
            $body(&$crate::candle::Device::Cpu)
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() -> $crate::candle::Result<()> {
            match $crate::cuda_device(stringify!($cuda)) {
                Some(device) => $body(&device),
                None => Ok(()),
            }
        }
    };
}

/// The first CUDA device, or `None` after printing why `test` is skipped (no device, no driver,
/// or a build without CUDA).
pub fn cuda_device(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let reason = e.to_string();
            let reason = reason.lines().next().unwrap_or("unknown error");
            println!("{test}: skipped, no CUDA device ({reason})");
            None
        }
    }
}

/// Tolerance of an op computed on `device` in `dtype` against its f32 CPU reference, relative to
/// the reference's magnitude where that exceeds 1 (see [`assert_close_on_device`]): bf16 and f16
/// 2e-2; f32 on CPU 2e-5 (same arithmetic, different order); f32 on other devices 1e-4.
pub fn device_tolerance(device: &Device, dtype: DType) -> f64 {
    match (dtype, device) {
        (DType::BF16 | DType::F16, _) => 2e-2,
        (_, Device::Cpu) => 2e-5,
        _ => 1e-4,
    }
}

/// Asserts that `got` (any device, any float dtype) equals the CPU reference `want` within
/// `tol · max(1, max |want|)` in every element; the panic message names the worst element.
#[track_caller]
pub fn assert_close_on_device(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let got = got.to_device(&Device::Cpu).and_then(|t| t.to_dtype(DType::F64)).expect("got");
    let want = want.to_dtype(DType::F64).expect("want");
    let scale = want
        .abs()
        .and_then(|t| t.flatten_all()?.max(0)?.to_scalar::<f64>())
        .expect("reference magnitude")
        .max(1.0);
    assert_close(what, &got, &want, tol * scale, 0.0);
}

/// Deterministic values uniform in `[-1, 1)` (xorshift64*, seeded).
pub fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A deterministic tensor of [`random_values`].
pub fn random_tensor(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(random_values(shape.iter().product(), seed), shape, device)
}

/// Maximum absolute difference and the flat index where it occurs.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<(f64, usize)> {
    if a.dims() != b.dims() {
        candle::bail!("shape mismatch: {:?} vs {:?}", a.dims(), b.dims())
    }
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut worst = (0.0, 0);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = (x - y).abs();
        if d > worst.0 || d.is_nan() {
            worst = (if d.is_nan() { f64::INFINITY } else { d }, i);
        }
    }
    Ok(worst)
}

/// Asserts `|a − b| ≤ atol + rtol·|b|` elementwise; the panic message names the worst element.
#[track_caller]
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let av = a.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.to_vec1::<f64>()).expect("a");
    let bv = b.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.to_vec1::<f64>()).expect("b");
    let mut worst: Option<(f64, usize)> = None;
    for (i, (x, y)) in av.iter().zip(&bv).enumerate() {
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        if excess > 0.0 || x.is_nan() != y.is_nan() {
            let e = if excess.is_nan() { f64::INFINITY } else { excess };
            if worst.is_none_or(|(w, _)| e > w) {
                worst = Some((e, i));
            }
        }
    }
    if let Some((_, i)) = worst {
        panic!(
            "{what}: element {i} differs: {} vs {} (atol {atol}, rtol {rtol}, shape {:?})",
            av[i],
            bv[i],
            a.dims()
        );
    }
}

/// Central finite-difference gradient of the scalar `f(x)` with respect to `x`, computed in f64.
///
/// `f` receives an f64 tensor; `x` may be any float dtype. Costs `2·numel` evaluations, so keep
/// `x` small (≤ a few hundred elements).
pub fn finite_difference_grad(
    f: impl Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let x64 = x.to_dtype(DType::F64)?;
    let base = x64.flatten_all()?.to_vec1::<f64>()?;
    let mut grad = Vec::with_capacity(base.len());
    let eval = |v: &[f64]| -> Result<f64> {
        let t = Tensor::from_slice(v, x.shape(), x.device())?;
        f(&t)?.to_dtype(DType::F64)?.to_scalar::<f64>()
    };
    let mut probe = base.clone();
    for i in 0..base.len() {
        probe[i] = base[i] + eps;
        let up = eval(&probe)?;
        probe[i] = base[i] - eps;
        let down = eval(&probe)?;
        probe[i] = base[i];
        grad.push((up - down) / (2.0 * eps));
    }
    Tensor::from_vec(grad, x.shape(), x.device())
}

/// Names of the variables in `varmap` without a finite, not-all-zero gradient, with the reason.
///
/// candle ops without a backward (`softmax_last_dim`, `layer_norm`, the contiguous `LayerNorm`
/// fast path) silently cut the graph; this finds every parameter behind such an op.
pub fn vars_without_grad(varmap: &VarMap, grads: &GradStore) -> Vec<String> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut missing = Vec::new();
    for name in names {
        let var: &Var = &data[name];
        match grads.get(var.as_tensor()) {
            None => missing.push(format!("{name}: no gradient")),
            Some(g) => {
                let abs =
                    g.abs().and_then(|a| a.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>());
                match abs {
                    Ok(s) if s.is_finite() && s > 0.0 => {}
                    Ok(s) => missing.push(format!("{name}: gradient |sum| = {s}")),
                    Err(e) => missing.push(format!("{name}: {e}")),
                }
            }
        }
    }
    missing
}

/// Asserts that every variable in `varmap` received a finite gradient that is not all zeros.
#[track_caller]
pub fn assert_all_vars_have_grad(varmap: &VarMap, grads: &GradStore) {
    let missing = vars_without_grad(varmap, grads);
    assert!(missing.is_empty(), "parameters without a usable gradient:\n{}", missing.join("\n"));
}

/// The shared real-data folder (`../shared/data` next to the checkout), or `None` after printing
/// why the calling test is skipped.
pub fn shared_data_dir(manifest_dir: &str) -> Option<PathBuf> {
    // crates/<name> -> crates -> workspace root -> its parent holds shared/.
    for dir in Path::new(manifest_dir).ancestors().take(4) {
        let candidate = dir.join("shared").join("data");
        if candidate.is_dir() {
            return Some(candidate);
        }
    }
    eprintln!("skipped: ../shared/data not found next to the checkout (real CT fixtures absent)");
    None
}

/// Helpers of the `bench_*` examples (flag parsing, the process's peak memory).
pub mod bench {
    /// The value after `--name` in `args`, if present.
    pub fn arg(args: &[String], name: &str) -> Option<String> {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
    }

    /// This process's peak resident set (`VmHWM` of `/proc/self/status`) in MiB; NaN where
    /// `/proc` is missing.
    pub fn peak_rss_mb() -> f64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
            })
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// This process's CPU time (user + system, all threads) in seconds, from `/proc/self/stat`
    /// (clock ticks of 10 ms); 0 where `/proc` is missing. On a machine shared with other jobs
    /// it tracks the work done where wall time also counts the waiting.
    pub fn cpu_seconds() -> f64 {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Runs this executable again with `args` (the benches measure each case in a child process,
    /// so that its peak memory is its own) and parses the one JSON record it prints on stdout.
    /// The error names `what` and carries the child's stderr.
    pub fn child_record(args: &[String], what: &str) -> Result<serde_json::Value, String> {
        let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
        let o = std::process::Command::new(&exe)
            .args(args)
            .output()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        if !o.status.success() {
            return Err(format!("{what} failed: {}", String::from_utf8_lossy(&o.stderr)));
        }
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim())
            .map_err(|e| format!("reading the {what} record: {e}"))
    }

    /// `N` (a cube) or `D,H,W`, all positive, as given to `flag`.
    pub fn parse_dims(flag: &str, s: &str) -> Result<[usize; 3], String> {
        let bad = || format!("{flag} must be N or D,H,W (positive integers), got {s:?}");
        let v = s
            .split(',')
            .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        match v[..] {
            [n] if n > 0 => Ok([n; 3]),
            [d, h, w] if d > 0 && h > 0 && w > 0 => Ok([d, h, w]),
            _ => Err(bad()),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dims_and_flags_parse() {
            assert_eq!(parse_dims("--patch", "64"), Ok([64; 3]));
            assert_eq!(parse_dims("--patch", "64, 32,16"), Ok([64, 32, 16]));
            for bad in ["0", "1,2", "a", "1,2,0"] {
                assert!(parse_dims("--patch", bad).unwrap_err().contains("--patch"), "{bad}");
            }
            let args: Vec<String> = ["x", "--out", "f.json"].map(String::from).to_vec();
            assert_eq!(arg(&args, "--out").as_deref(), Some("f.json"));
            assert_eq!(arg(&args, "--steps"), None);
        }
    }
}
