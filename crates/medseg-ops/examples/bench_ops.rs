//! Benchmark of the medseg-ops fast paths at the shapes Swin UNETR fs48 uses at 96³.
//!
//! Prints, per op and shape, the median forward and forward+backward times with GFLOP/s (or
//! GB/s for memory-bound ops) and writes them as JSON (`--out`, default `target/bench/ops.json`).
//! `tools/bench/ops_torch.py --rust-json <file>` times the same cases in PyTorch and prints ratios.
//! Run through `cargo xtask bench ops` (release build). `--quick` uses one repetition,
//! `--filter S` keeps cases whose op name contains S, `--no-tune` skips `tune_allocator()`,
//! `--fwd-only` skips the forward+backward timing. The `cpu` column is the forward's rate per
//! second of process CPU time divided by the thread count (from `/proc/self/stat`): on a machine
//! shared with other jobs it tracks the kernels' efficiency where wall time cannot.
use std::time::Instant;

use candle::{Device, Result, Tensor, Var};
use medseg_ops::{
    Conv3dConfig, ConvTranspose3dConfig, InterpolationMode, Precision, Resize, conv_transpose3d,
    conv3d, gelu, instance_norm3d, interpolate3d, layer_norm, softmax_last_dim, window_attention,
    window_attention_qkv, with_precision,
};
use medseg_testkit::bench::cpu_seconds;
use medseg_testkit::random_tensor;

type OpFn = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

/// One benchmark case: inputs, the op, and its work for the throughput column.
struct Case {
    name: &'static str,
    /// Shape description, as printed and as matched by the PyTorch script.
    shape: String,
    inputs: Vec<Vec<usize>>,
    /// Floating point operations of one forward (0 for memory-bound ops).
    flops: f64,
    /// Bytes read + written by one forward (used when `flops` is 0).
    bytes: f64,
    run: OpFn,
}

fn conv_flops(co: usize, ci: usize, k: usize, out_vox: usize) -> f64 {
    2.0 * (co * ci * k * k * k) as f64 * out_vox as f64
}

fn cases() -> Vec<Case> {
    let c3 = Conv3dConfig::uniform(1, 1);
    vec![
        Case {
            name: "conv3d k3 s1 p1",
            shape: "1x48x96^3 -> 48".into(),
            inputs: vec![vec![1, 48, 96, 96, 96], vec![48, 48, 3, 3, 3]],
            flops: conv_flops(48, 48, 3, 96 * 96 * 96),
            bytes: 0.0,
            run: Box::new(move |t| conv3d(&t[0], &t[1], None, &c3)),
        },
        Case {
            name: "conv3d k3 s1 p1",
            shape: "1x96x48^3 -> 96".into(),
            inputs: vec![vec![1, 96, 48, 48, 48], vec![96, 96, 3, 3, 3]],
            flops: conv_flops(96, 96, 3, 48 * 48 * 48),
            bytes: 0.0,
            run: Box::new(move |t| conv3d(&t[0], &t[1], None, &c3)),
        },
        Case {
            // bf16 operands, f32 accumulation (AVX-512 BF16); PyTorch side: CPU autocast bf16.
            name: "conv3d k3 s1 p1 (bf16)",
            shape: "1x48x96^3 -> 48".into(),
            inputs: vec![vec![1, 48, 96, 96, 96], vec![48, 48, 3, 3, 3]],
            flops: conv_flops(48, 48, 3, 96 * 96 * 96),
            bytes: 0.0,
            run: Box::new(move |t| {
                with_precision(Precision::Bf16, || conv3d(&t[0], &t[1], None, &c3))
            }),
        },
        Case {
            name: "conv3d k3 s1 p1 (bf16)",
            shape: "1x96x48^3 -> 96".into(),
            inputs: vec![vec![1, 96, 48, 48, 48], vec![96, 96, 3, 3, 3]],
            flops: conv_flops(96, 96, 3, 48 * 48 * 48),
            bytes: 0.0,
            run: Box::new(move |t| {
                with_precision(Precision::Bf16, || conv3d(&t[0], &t[1], None, &c3))
            }),
        },
        Case {
            name: "conv3d k2 s2 (patch embed)",
            shape: "1x1x96^3 -> 48".into(),
            inputs: vec![vec![1, 1, 96, 96, 96], vec![48, 1, 2, 2, 2], vec![48]],
            flops: conv_flops(48, 1, 2, 48 * 48 * 48),
            bytes: 0.0,
            run: Box::new(|t| conv3d(&t[0], &t[1], Some(&t[2]), &Conv3dConfig::uniform(2, 0))),
        },
        Case {
            name: "conv_transpose3d k2 s2",
            shape: "1x96x48^3 -> 48".into(),
            inputs: vec![vec![1, 96, 48, 48, 48], vec![96, 48, 2, 2, 2]],
            flops: conv_flops(48, 96, 2, 48 * 48 * 48),
            bytes: 0.0,
            run: Box::new(|t| {
                conv_transpose3d(&t[0], &t[1], None, &ConvTranspose3dConfig::uniform(2))
            }),
        },
        Case {
            name: "instance_norm3d",
            shape: "1x48x96^3".into(),
            inputs: vec![vec![1, 48, 96, 96, 96]],
            flops: 0.0,
            bytes: 2.0 * 4.0 * (48 * 96 * 96 * 96) as f64,
            run: Box::new(|t| instance_norm3d(&t[0], None, None, 1e-5)),
        },
        Case {
            name: "layer_norm (affine)",
            shape: "110592x48".into(),
            inputs: vec![vec![110_592, 48], vec![48], vec![48]],
            flops: 0.0,
            bytes: 2.0 * 4.0 * (110_592 * 48) as f64,
            run: Box::new(|t| layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-5)),
        },
        Case {
            name: "gelu",
            shape: "110592x192".into(),
            inputs: vec![vec![110_592, 192]],
            flops: 0.0,
            bytes: 2.0 * 4.0 * (110_592 * 192) as f64,
            run: Box::new(|t| gelu(&t[0])),
        },
        Case {
            name: "softmax_last_dim",
            shape: "1029x343x343".into(),
            inputs: vec![vec![1029, 343, 343]],
            flops: 0.0,
            bytes: 2.0 * 4.0 * (1029 * 343 * 343) as f64,
            run: Box::new(|t| softmax_last_dim(&t[0])),
        },
        Case {
            name: "window_attention (composed)",
            shape: "343x3x343x16".into(),
            inputs: vec![
                vec![343, 3, 343, 16],
                vec![343, 3, 343, 16],
                vec![343, 3, 343, 16],
                vec![3, 343, 343],
            ],
            flops: 2.0 * 2.0 * (343 * 3) as f64 * (343 * 343 * 16) as f64,
            bytes: 0.0,
            run: Box::new(|t| window_attention(&t[0], &t[1], &t[2], 0.25, Some(&t[3]), None)),
        },
        Case {
            // The same product from MONAI's qkv projection (what the models run), fused.
            name: "window_attention_qkv (fused)",
            shape: "343x343x(3x48), 3 heads".into(),
            inputs: vec![vec![343, 343, 144], vec![3, 343, 343]],
            flops: 2.0 * 2.0 * (343 * 3) as f64 * (343 * 343 * 16) as f64,
            bytes: 0.0,
            run: Box::new(|t| window_attention_qkv(&t[0], 3, 0.25, Some(&t[1]), None)),
        },
        Case {
            name: "interpolate3d trilinear x2",
            shape: "1x48x48^3".into(),
            inputs: vec![vec![1, 48, 48, 48, 48]],
            flops: 0.0,
            bytes: 4.0 * 9.0 * (48 * 48 * 48 * 48) as f64,
            run: Box::new(|t| {
                interpolate3d(&t[0], Resize::Scale([2.0; 3]), InterpolationMode::Trilinear)
            }),
        },
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `--no-tune` measures what the glibc malloc tunables buy (fresh-page first touch).
    let tuned = !args.iter().any(|a| a == "--no-tune") && medseg_ops::tune_allocator();
    let quick = args.iter().any(|a| a == "--quick");
    let fwd_only = args.iter().any(|a| a == "--fwd-only");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/bench/ops.json".into());
    let filter = args.iter().position(|a| a == "--filter").and_then(|i| args.get(i + 1).cloned());
    let reps = if quick { 1 } else { 3 };
    let dev = Device::Cpu;
    let threads = rayon::current_num_threads();
    println!("medseg-ops bench: {threads} threads, allocator tuned: {tuned}, {reps} reps (median)");
    println!(
        "{:<30} {:<20} {:>10} {:>12} {:>12} {:>8} {:>16}",
        "op", "shape", "fwd ms", "fwd+bwd ms", "fwd rate", "bwd/fwd", "cpu rate"
    );
    let mut rows = Vec::new();
    for case in cases() {
        if filter.as_ref().is_some_and(|f| !case.name.contains(f.as_str())) {
            continue;
        }
        let inputs: Vec<Tensor> = case
            .inputs
            .iter()
            .enumerate()
            .map(|(i, s)| random_tensor(s, i as u64 + 1, &dev))
            .collect::<Result<_>>()?;
        // Warm-up (allocator, page faults of the first run, rayon pool).
        (case.run)(&inputs)?;
        let mut fwd = Vec::new();
        let cpu0 = cpu_seconds();
        for _ in 0..reps {
            let t = Instant::now();
            let y = (case.run)(&inputs)?;
            fwd.push(t.elapsed().as_secs_f64());
            drop(y);
        }
        let cpu = (cpu_seconds() - cpu0) / (reps * threads) as f64;
        let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let vt: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let mut fb = Vec::new();
        for _ in 0..if fwd_only { 0 } else { reps } {
            let t = Instant::now();
            let y = (case.run)(&vt)?;
            let grads = y.sum_all()?.backward()?;
            fb.push(t.elapsed().as_secs_f64());
            drop(grads);
        }
        let (f, b) = (median(fwd), if fwd_only { f64::NAN } else { median(fb) });
        let rate_of = |s: f64| {
            if case.flops > 0.0 {
                format!("{:.1} GFLOP/s", case.flops / s / 1e9)
            } else {
                format!("{:.2} GB/s", case.bytes / s / 1e9)
            }
        };
        println!(
            "{:<30} {:<20} {:>10.1} {:>12.1} {:>12} {:>8.2} {:>16}",
            case.name,
            case.shape,
            f * 1e3,
            b * 1e3,
            rate_of(f),
            (b - f) / f,
            rate_of(cpu)
        );
        rows.push(serde_json::json!({
            "op": case.name,
            "shape": case.shape,
            "inputs": case.inputs,
            "fwd_ms": f * 1e3,
            "fwd_bwd_ms": if fwd_only { None } else { Some(b * 1e3) },
            "bwd_over_fwd": if fwd_only { None } else { Some((b - f) / f) },
            "fwd_cpu_s_per_thread": cpu,
            "gflops": if case.flops > 0.0 { Some(case.flops / f / 1e9) } else { None },
            "gbps": if case.flops > 0.0 { None } else { Some(case.bytes / f / 1e9) },
        }));
    }
    let doc = serde_json::json!({ "threads": threads, "reps": reps, "allocator_tuned": tuned, "cases": rows });
    let path = std::path::Path::new(&out);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&doc).map_err(candle::Error::wrap)?)?;
    std::fs::rename(&tmp, path)?;
    println!("wrote {out}");
    Ok(())
}
