//! Where the memory of one training step goes: live heap bytes (a counting global allocator),
//! resident memory, and the tensors the autograd graph holds when backward starts, grouped by
//! shape, for a preset's model at a given patch.
//!
//! `cargo run --release -p medseg-train --example train_memory -- [--preset btcv]
//!  [--patch 96,96,96] [--steps 2] [--checkpoint] [--checkpoint-encoders]`
//!
//! Phases of each step (the first is a warm-up, as in `bench_train`): forward, loss, backward,
//! gradient collection and AdamW step; for each the live heap after it, the highest live heap
//! during it, `VmRSS` after it and `VmHWM`. The graph walk lists every distinct storage reachable
//! from the loss (all of it stays alive until the loss is dropped, candle's autograd semantics),
//! which is what the backward pass starts from. `--checkpoint` turns on `use_checkpoint`,
//! `--checkpoint-encoders` `checkpoint_encoders`.
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use candle::{DType, Device, Storage, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_testkit::bench::{arg, parse_dims};
use medseg_train::loss::segmentation_loss;
use medseg_train::{AdamW, Grads, ModelConfig, TrainConfig};

/// The system allocator, counting live bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` with the caller's arguments; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grow(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grow(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            grow(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MB: f64 = 1024.0 * 1024.0;

/// `VmRSS` and `VmHWM` in MiB.
fn rss() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts a phase: the peak counter restarts from the live bytes.
fn begin() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Ends a phase: prints live after, peak during, RSS and HWM.
fn end(step: usize, phase: &str) {
    let (live, peak) = (LIVE.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed));
    let (rss, hwm) = rss();
    eprintln!(
        "step {step} {phase:>9}: live {:7.0} MiB, peak during {:7.0} MiB, RSS {rss:7.0}, HWM {hwm:7.0}",
        live as f64 / MB,
        peak as f64 / MB
    );
}

/// Distinct storages reachable from `loss` (variables excluded), grouped by shape.
fn graph_report(loss: &Tensor) {
    let mut seen = HashSet::new();
    let mut by_shape: BTreeMap<Vec<usize>, (usize, usize)> = BTreeMap::new();
    let mut total = 0usize;
    for t in loss.sorted_nodes() {
        if t.is_variable() {
            continue;
        }
        let (s, _) = t.storage_and_layout();
        let (ptr, bytes) = match &*s {
            Storage::Cpu(c) => match c {
                candle::CpuStorage::F32(v) => (v.as_ptr() as usize, v.len() * 4),
                candle::CpuStorage::U8(v) => (v.as_ptr() as usize, v.len()),
                candle::CpuStorage::U32(v) => (v.as_ptr() as usize, v.len() * 4),
                candle::CpuStorage::I64(v) => (v.as_ptr() as usize, v.len() * 8),
                _ => continue,
            },
            _ => continue,
        };
        if !seen.insert(ptr) {
            continue;
        }
        total += bytes;
        let e = by_shape.entry(t.dims().to_vec()).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    let mut rows: Vec<_> = by_shape.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.1));
    eprintln!("graph: {:.0} MiB in {} storages", total as f64 / MB, seen.len());
    for (shape, (n, bytes)) in rows.iter().take(40) {
        eprintln!("  {:8.1} MiB  {n:3} × {shape:?}", *bytes as f64 / MB);
    }
}

fn main() -> anyhow::Result<()> {
    medseg_ops::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let preset = arg(&args, "--preset").unwrap_or_else(|| "btcv".into());
    let roi = match arg(&args, "--patch") {
        Some(p) => parse_dims("--patch", &p).map_err(anyhow::Error::msg)?,
        None => [96, 96, 96],
    };
    let steps: usize = arg(&args, "--steps").map_or(Ok(2), |s| s.parse()).context("--steps")?;
    let mut cfg = TrainConfig::preset(&preset)?;
    let (swin, enc) = (
        args.iter().any(|a| a == "--checkpoint"),
        args.iter().any(|a| a == "--checkpoint-encoders"),
    );
    if swin || enc {
        match &mut cfg.model {
            ModelConfig::SwinUnetr(m) => {
                m.use_checkpoint = swin;
                m.checkpoint_encoders = enc;
            }
            _ => anyhow::bail!("--checkpoint needs a swin_unetr preset"),
        }
    }
    let dev = Device::Cpu;
    let (rss0, _) = rss();
    eprintln!("start: live {:.0} MiB, RSS {rss0:.0}", LIVE.load(Ordering::Relaxed) as f64 / MB);
    let varmap = VarMap::new();
    let model = cfg.model.build(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mut opt = AdamW::from_varmap(&varmap, cfg.optim.clone())?;
    end(0, "model+opt");
    let nc = cfg.model.out_channels();
    let x = Tensor::randn(0f32, 1f32, (1, cfg.model.in_channels(), roi[0], roi[1], roi[2]), &dev)?;
    let n = roi.iter().product::<usize>();
    let y: Vec<f32> = (0..n).map(|i| (i * nc / n) as f32).collect();
    let y = Tensor::from_vec(y, (1, 1, roi[0], roi[1], roi[2]), &dev)?;
    let lcfg = cfg.loss.dice_ce();
    for s in 0..steps {
        begin();
        let logits = model.forward_t(&x, true)?;
        end(s, "forward");
        begin();
        let loss = segmentation_loss(cfg.loss.kind, &logits, &y, &lcfg)?;
        drop(logits);
        end(s, "loss");
        if s + 1 == steps {
            graph_report(&loss);
        }
        begin();
        let g = loss.backward()?;
        end(s, "backward");
        begin();
        drop(loss);
        end(s, "drop loss");
        begin();
        let mut grads = Grads::new();
        grads.accumulate(&g, opt.vars().map(|(_, v)| v), 1.0)?;
        drop(g);
        end(s, "grads");
        begin();
        opt.step(&grads)?;
        drop(grads);
        end(s, "step");
    }
    Ok(())
}
