//! Training-step and sliding-window speed of the presets' models (random weights and data), on
//! CPU (f32, the `cargo xtask bench train` numbers) or on CUDA (f32 or bf16 mixed precision, the
//! GPU bundle's `run.sh bench`), one fresh child process per case so `VmHWM` (and on CUDA the
//! memory pool's high-water mark) is that case's peak.
//!
//! `cargo run --release -p medseg-train [--features cuda] --example bench_train -- --out PATH
//!  [--cases tiny,base,base_ckpt,base_ckpt_enc,smt] [--steps N] [--device cpu|cuda|cuda:N] [--precision f32|bf16]
//!  [--patch D,H,W]`
//!
//! Cases (shapes from the presets, so the numbers follow them):
//! - `tiny`: the `phantom` preset (the `cargo xtask train` default): its model, its patch batch
//!   (`batch_size × num_samples` patches of `data.roi`), and sliding-window inference with its
//!   `[inference]` settings over a 64³ volume (the phantom's size);
//! - `base`: the `btcv` preset's model (Swin UNETR fs48) with one 96³ patch per step (the recipe's
//!   4 patches per step would take minutes per step on 2 cores) and one 96³ window;
//! - `base_ckpt`: `base` with `use_checkpoint = true` (Swin blocks recomputed in backward; the
//!   MONAI side runs with the same flag); `base_ckpt_enc` adds medseg's `checkpoint_encoders`
//!   (MONAI has no such option: its side runs `base_ckpt`'s model);
//! - `smt`: the `totalseg_smt` preset's model (Swin SMT: fs48, dynamic-slot Soft MoE with 32
//!   experts in stages 2–4, 118 classes, gradient checkpointing as in the preset) with one 128³
//!   patch per step and one 128³ window.
//!
//! `--patch` (for smoke runs) replaces the training patch, the sliding-window volume and the
//! inference roi of every case by one shape.
//!
//! A step is what the trainer does: forward, MONAI DiceCE loss, backward, AdamW update. With
//! `--precision bf16` it is the trainer's bf16 step (`precision = "bf16"`): the model is built per
//! step from differentiable bf16 casts of the f32 masters (`precision_var_builder`), the input is
//! cast to bf16, the logits to f32 before the loss; gradients, AdamW and the masters stay f32.
//! The first step is a warm-up and is not timed; on CUDA the device is synchronised before every
//! clock reading. `tools/bench/train_monai.py --rust-json PATH` runs MONAI's loop on the same
//! shapes (on CUDA: `--device cuda`, `--amp` for PyTorch bf16 autocast) and prints both side by
//! side.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_testkit::bench::{arg, child_record, parse_dims, peak_rss_mb};
use medseg_train::loss::segmentation_loss;
use medseg_train::precision::{Precision, precision_var_builder};
use medseg_train::{
    AdamW, Grads, ModelConfig, SegModel, TrainConfig, device_from_str, sliding_window_inference,
};

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// The options every case runs with (the parent passes them on to each child).
struct Opts {
    /// `cpu`, `cuda` or `cuda:N`.
    device: String,
    precision: Precision,
    /// Timed steps (default per case).
    steps: Option<usize>,
    /// Replaces the training patch, the sliding-window volume and the inference roi.
    patch: Option<[usize; 3]>,
}

impl Opts {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let steps = arg(args, "--steps")
            .map(|r| r.parse::<usize>().with_context(|| format!("--steps {r:?}")))
            .transpose()?;
        let precision = match arg(args, "--precision").as_deref() {
            None | Some("f32") => Precision::F32,
            Some("bf16") => Precision::Bf16,
            Some(other) => anyhow::bail!("--precision must be f32 or bf16, got {other:?}"),
        };
        let patch = arg(args, "--patch")
            .map(|p| parse_dims("--patch", &p).map_err(anyhow::Error::msg))
            .transpose()?;
        let device = arg(args, "--device").unwrap_or_else(|| "cpu".into());
        Ok(Opts { device, precision, steps, patch })
    }

    /// The flags that reproduce these options in a child process.
    fn child_args(&self) -> Vec<String> {
        let mut a = vec!["--device".to_string(), self.device.clone()];
        if self.precision == Precision::Bf16 {
            a.extend(["--precision".to_string(), "bf16".to_string()]);
        }
        if let Some(s) = self.steps {
            a.extend(["--steps".to_string(), s.to_string()]);
        }
        if let Some([d, h, w]) = self.patch {
            a.extend(["--patch".to_string(), format!("{d},{h},{w}")]);
        }
        a
    }
}

/// (preset, patches per step, training patch, sliding-window volume, default timed steps).
type Case = (TrainConfig, usize, [usize; 3], [usize; 3], usize);

fn case(name: &str) -> anyhow::Result<Case> {
    match name {
        "tiny" => {
            let cfg = TrainConfig::preset("phantom")?;
            let b = cfg.data.batch_size * cfg.data.num_samples;
            let roi = cfg.data.roi;
            Ok((cfg, b, roi, [64, 64, 64], 5))
        }
        "base" => {
            let cfg = TrainConfig::preset("btcv")?;
            Ok((cfg, 1, [96, 96, 96], [96, 96, 96], 2))
        }
        "base_ckpt" | "base_ckpt_enc" => {
            // The same with MONAI's `use_checkpoint` (the Swin blocks recomputed in backward),
            // and with medseg's `checkpoint_encoders` as well.
            let mut cfg = TrainConfig::preset("btcv")?;
            if let ModelConfig::SwinUnetr(m) = &mut cfg.model {
                m.use_checkpoint = true;
                m.checkpoint_encoders = name == "base_ckpt_enc";
            }
            Ok((cfg, 1, [96, 96, 96], [96, 96, 96], 2))
        }
        "smt" => {
            let cfg = TrainConfig::preset("totalseg_smt")?;
            Ok((cfg, 1, [128, 128, 128], [128, 128, 128], 2))
        }
        other => anyhow::bail!(
            "unknown case {other:?}: expected tiny, base, base_ckpt, base_ckpt_enc or smt"
        ),
    }
}

/// A `VarBuilder` over detached copies of the variables in `dtype` on `dev`, for inference
/// (what `medseg_models::frozen_var_builder` does for f32 on the CPU).
fn inference_var_builder(
    varmap: &VarMap,
    dtype: DType,
    dev: &Device,
) -> anyhow::Result<VarBuilder<'static>> {
    let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
    let tensors = data
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().to_dtype(dtype)?)))
        .collect::<candle::Result<HashMap<String, Tensor>>>()?;
    Ok(VarBuilder::from_tensors(tensors, dtype, dev))
}

/// Child: runs one case and prints one JSON object.
fn child(name: &str, opts: &Opts) -> anyhow::Result<()> {
    medseg_ops::tune_allocator();
    let (mut cfg, batch, mut roi, mut volume, default_steps) = case(name)?;
    if let Some(p) = opts.patch {
        (roi, volume) = (p, p);
        cfg.inference.roi = p;
    }
    let steps = opts.steps.unwrap_or(default_steps).max(1);
    let dev = device_from_str(&opts.device)
        .with_context(|| format!("opening device {:?}", opts.device))?;
    let dtype = opts.precision.dtype();
    let varmap = VarMap::new();
    let model = cfg.model.build(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mut opt = AdamW::from_varmap(&varmap, cfg.optim.clone())?;
    let nc = cfg.model.out_channels();
    let x =
        Tensor::randn(0f32, 1f32, (batch, cfg.model.in_channels(), roi[0], roi[1], roi[2]), &dev)?;
    // Labels in blocks (not i.i.d. noise) so the Dice terms see realistic foreground fractions.
    let n = roi.iter().product::<usize>();
    let y: Vec<f32> = (0..batch * n).map(|i| ((i % n) * nc / n) as f32).collect();
    let y = Tensor::from_vec(y, (batch, 1, roi[0], roi[1], roi[2]), &dev)?;
    let lcfg = cfg.loss.dice_ce();
    let mut step_times = Vec::with_capacity(steps);
    for s in 0..=steps {
        dev.synchronize()?;
        let t = Instant::now();
        // The trainer's step (trainer.rs `step`): for bf16 a fresh model from differentiable
        // casts of the f32 masters, the batch cast to bf16, the logits cast to f32.
        let cast_model = match opts.precision {
            Precision::F32 => None,
            p @ Precision::Bf16 => Some(cfg.model.build(precision_var_builder(&varmap, p, &dev)?)?),
        };
        let m: &dyn SegModel = cast_model.as_deref().unwrap_or(model.as_ref());
        let logits = m.forward_t(&x.to_dtype(dtype)?, true)?.to_dtype(DType::F32)?;
        let loss = segmentation_loss(cfg.loss.kind, &logits, &y, &lcfg)?;
        let g = loss.backward()?;
        let mut grads = Grads::new();
        grads.accumulate(&g, opt.vars().map(|(_, v)| v), 1.0)?;
        drop(g);
        opt.step(&grads)?;
        dev.synchronize()?;
        if s > 0 {
            step_times.push(t.elapsed().as_secs_f64());
        }
    }
    drop(opt);
    // The pool's high-water mark over model, optimiser state, inputs and the steps.
    let device_mem = device_memory(&dev)?;
    // Inference on detached weights, as the trainer's validation and `medseg predict` do.
    let frozen = cfg.model.build(inference_var_builder(&varmap, dtype, &dev)?)?;
    let vol = Tensor::randn(
        0f32,
        1f32,
        (1, cfg.model.in_channels(), volume[0], volume[1], volume[2]),
        &dev,
    )?;
    let mut sw_times = Vec::new();
    for _ in 0..if name == "tiny" { 3 } else { 1 } {
        dev.synchronize()?;
        let t = Instant::now();
        let out = sliding_window_inference(&vol, &cfg.inference, |w| {
            Ok(frozen.forward_t(&w.to_dtype(dtype)?, false)?.to_dtype(DType::F32)?)
        })?;
        dev.synchronize()?;
        drop(out);
        sw_times.push(t.elapsed().as_secs_f64());
    }
    let step = median(&step_times);
    let mut rec = serde_json::json!({
        "case": name,
        "model": cfg.model,
        "loss": cfg.loss.kind,
        "optim": cfg.optim,
        "batch": batch,
        "patch": roi,
        "step_median_s": step,
        "steps_per_s": 1.0 / step,
        "step_times_s": step_times,
        "sw_volume": volume,
        "inference": cfg.inference,
        "sw_median_s": median(&sw_times),
        "sw_times_s": sw_times,
        "peak_rss_mb": peak_rss_mb(),
        "device": opts.device,
        "precision": opts.precision,
    });
    if let (Some(mem), Some(obj)) = (device_mem, rec.as_object_mut()) {
        for (k, v) in mem {
            obj.insert(k.into(), v);
        }
    }
    println!("{rec}");
    Ok(())
}

/// Device-memory fields of the record: `None` on the CPU.
#[cfg(not(feature = "cuda"))]
fn device_memory(_dev: &Device) -> anyhow::Result<Option<Vec<(&'static str, serde_json::Value)>>> {
    Ok(None)
}

/// Device-memory fields of the record on CUDA: the GPU's name and the high-water marks of the
/// device's memory pool (candle allocates through cudarc's stream-ordered `cuMemAllocAsync`),
/// `peak_device_mb` = bytes in use (≈ `torch.cuda.max_memory_allocated`), `peak_reserved_mb` =
/// bytes the pool held (≈ `max_memory_reserved`). Neither counts the CUDA context nor memory
/// that cuBLAS allocates outside the pool. `None` on the CPU.
#[cfg(feature = "cuda")]
fn device_memory(dev: &Device) -> anyhow::Result<Option<Vec<(&'static str, serde_json::Value)>>> {
    use candle::cuda::cudarc::driver::{result, sys};
    let Device::Cuda(cuda) = dev else { return Ok(None) };
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    let mut fields = vec![("gpu", serde_json::json!(ctx.name().context("reading the GPU name")?))];
    if !ctx.has_async_alloc() {
        fields.push((
            "peak_device_note",
            "the device has no memory pools (cuMemAlloc): no high-water mark".into(),
        ));
        return Ok(Some(fields));
    }
    ctx.bind_to_thread().context("binding the CUDA context")?;
    // SAFETY: `cu_device` is the device of a live context.
    let pool =
        unsafe { result::device::get_mem_pool(ctx.cu_device()) }.context("cuDeviceGetMemPool")?;
    let mib = |attr: sys::CUmemPool_attribute| -> anyhow::Result<f64> {
        let mut v: u64 = 0;
        // SAFETY: both attributes are `cuuint64_t` values written to `v`; `pool` is live.
        unsafe {
            sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast::<std::ffi::c_void>())
        }
        .result()
        .context("cuMemPoolGetAttribute")?;
        Ok(v as f64 / (1024.0 * 1024.0))
    };
    fields.push((
        "peak_device_mb",
        mib(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?.into(),
    ));
    fields.push((
        "peak_reserved_mb",
        mib(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?.into(),
    ));
    Ok(Some(fields))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opts = Opts::parse(&args)?;
    if let Some(name) = arg(&args, "--child") {
        return child(&name, &opts);
    }
    let out = PathBuf::from(arg(&args, "--out").unwrap_or("target/bench/train.json".into()));
    let cases = arg(&args, "--cases").unwrap_or("tiny,base".into());
    if opts.device != "cpu" {
        // One clear error before any case when the device cannot be opened (no GPU or driver,
        // a build without `cuda`); this process's handle is closed before the children start.
        let _ = device_from_str(&opts.device).with_context(|| {
            format!("opening --device {} (no usable CUDA device or driver?)", opts.device)
        })?;
    }
    let mut results = Vec::new();
    for name in cases.split(',').filter(|s| !s.is_empty()) {
        case(name)?;
        if opts.device == "cpu" && opts.precision == Precision::F32 {
            eprintln!("bench train {name}");
        } else {
            let p = serde_json::to_value(opts.precision)?;
            eprintln!("bench train {name} ({}, {})", opts.device, p.as_str().unwrap_or("?"));
        }
        let args = [vec!["--child".to_string(), name.to_string()], opts.child_args()].concat();
        let v = child_record(&args, name).map_err(anyhow::Error::msg)?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let device_mem = match v.get("peak_device_mb").and_then(|m| m.as_f64()) {
            Some(m) => format!(", peak device {m:.0} MB"),
            None => String::new(),
        };
        eprintln!(
            "  step {:.3} s ({:.3} steps/s), sliding window {:.3} s/volume, peak RSS {:.0} MB{device_mem}",
            f("step_median_s"),
            f("steps_per_s"),
            f("sw_median_s"),
            f("peak_rss_mb"),
        );
        results.push(v);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
