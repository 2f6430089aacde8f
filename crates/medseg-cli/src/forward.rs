//! `medseg forward`: config JSON (MONAI argument names) + weights (.safetensors / .pt / .pth)
//! + input safetensors (key `input`, `[B, C, D, H, W]`) → output safetensors (key `output`).
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use medseg_models::loader::{load_into_varmap, read_checkpoint};
use medseg_models::{MergeOrder, SwinUnetr, SwinUnetrConfig};

/// Arguments of `medseg forward`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model config JSON with MONAI `SwinUNETR` argument names (Swin SMT: `use_moe`, ...).
    #[arg(long)]
    config: PathBuf,
    /// Weights: .safetensors, or a PyTorch .pt/.pth (state dict, or under `state_dict`/`model`).
    #[arg(long)]
    weights: PathBuf,
    /// Input safetensors file with the tensor under key `input`.
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file; the result is written under key `output` (atomically).
    #[arg(long)]
    output: PathBuf,
    /// Patch-merging order: legacy (MONAI < 1.5, all public checkpoints, Swin SMT), fixed
    /// (MONAI ≥ 1.5 "merging"), v2 ("mergingv2"). Default: the config's `merge_order`, else the
    /// file's metadata, else legacy for Swin SMT (`use_moe`) and MONAI 1.6.1 semantics of
    /// `downsample` otherwise. The order used is printed on stderr.
    #[arg(long, value_parser = ["legacy", "fixed", "v2"])]
    merge_order: Option<String>,
    /// Accept checkpoints that lack some parameters (they keep their random initial values).
    #[arg(long)]
    allow_missing: bool,
    /// Operand precision of the convolution and linear-layer products on CPU: f32, or bf16 (bf16
    /// operands, f32 accumulation, norms and softmax in f32; needs AVX-512 BF16, else f32 runs).
    #[arg(long, default_value = "f32")]
    precision: medseg_ops::Precision,
}

/// Says on stderr which precision runs (bf16 falls back to f32 without AVX-512 BF16).
pub(crate) fn report_precision(p: medseg_ops::Precision) {
    if p == medseg_ops::Precision::Bf16 {
        if medseg_ops::bf16_dot_available() {
            eprintln!("precision: bf16 convolution and linear products (AVX-512 BF16), f32 sums");
        } else {
            eprintln!("precision: bf16 requested, but this CPU lacks AVX-512 BF16: running f32");
        }
    }
}

/// Runs the subcommand.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading config {}", args.config.display()))?;
    let mut cfg = SwinUnetrConfig::from_json(&text)
        .with_context(|| format!("parsing config {}", args.config.display()))?;
    let ckpt = read_checkpoint(&args.weights)
        .with_context(|| format!("reading weights {}", args.weights.display()))?;
    let merge_source = if let Some(o) = &args.merge_order {
        cfg.merge_order = Some(MergeOrder::parse(o)?);
        "set by --merge-order"
    } else if cfg.merge_order.is_some() {
        "set by the config"
    } else if let Some(o) = ckpt.merge_order {
        cfg.merge_order = Some(o);
        "from the weights' metadata"
    } else {
        cfg.merge_order_with_source().1
    };
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    // Creates the variables (MONAI names) that the checkpoint is loaded into.
    SwinUnetr::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))
        .context("building the model")?;
    let report = load_into_varmap(&varmap, &ckpt)
        .with_context(|| format!("loading weights {}", args.weights.display()))?;
    eprint!("{report}");
    if !report.missing.is_empty() && !args.allow_missing {
        bail!(
            "{} parameters missing from {} (pass --allow-missing to run anyway)",
            report.missing.len(),
            args.weights.display()
        )
    }
    let moe = if cfg.use_moe {
        format!(", Soft MoE padding: {}", cfg.moe_padding.as_str())
    } else {
        String::new()
    };
    eprintln!("merge order: {} ({merge_source}){moe}", cfg.resolved_merge_order().as_str());
    let inputs = candle::safetensors::load(&args.input, &dev)
        .with_context(|| format!("reading input {}", args.input.display()))?;
    let Some(x) = inputs.get("input") else {
        bail!("{} has no tensor named `input` (found {:?})", args.input.display(), inputs.keys())
    };
    if x.rank() != 5 {
        bail!("input must be [B, C, D, H, W], got {:?}", x.dims())
    }
    let x = x.to_dtype(DType::F32)?;
    // Detached weights: no autograd graph, activations are freed as they are consumed.
    let model = SwinUnetr::new(&cfg, medseg_models::frozen_var_builder(&varmap)?)?;
    report_precision(args.precision);
    let start = std::time::Instant::now();
    let out = medseg_ops::with_precision(args.precision, || model.forward_t(&x, false))
        .context("forward pass")?;
    eprintln!("forward {:?} -> {:?} in {:.2?}", x.dims(), out.dims(), start.elapsed());
    write_atomic(&out, &args.output)
}

/// Writes `{"output": out}` to a temporary file next to `path`, then renames it.
fn write_atomic(out: &Tensor, path: &Path) -> anyhow::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    out.save_safetensors("output", &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
