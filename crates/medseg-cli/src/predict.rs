//! `medseg predict`: NIfTI image(s) → label map(s) on the input's exact grid, TotalSegmentator
//! style. The model is a run folder (its `config.toml` + `checkpoints/best.safetensors`, else
//! `last`) or a weights file (`.safetensors`, MONAI `.pt`/`.pth`) with `--preset`/`--config` for the
//! architecture and preprocessing.
//!
//! Per case: read → the run's deterministic validation transforms (the medseg-data preset the
//! trainer validates with: Orientation RAS, Spacing, ScaleIntensityRange, CropForeground) →
//! sliding window (the run's `[inference]` settings) → softmax (averaged over the 8 flips of the
//! three spatial axes with `--tta`) → argmax → nearest-neighbour back to the input's grid in world
//! space (`medseg_data::write_prediction`: same shape and affine as the input). Every file is
//! written atomically. See `docs/inference.md`.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use medseg_data::dataset::{DataItem, case_id, load_sample};
use medseg_data::spatial::{Interp, Padding, resample_to_grid};
use medseg_data::transforms::{Compose, Meta};
use medseg_data::{Affine, Volume, sample_rng, write_prediction, write_volume};
use medseg_models::MergeOrder;
use medseg_models::loader::{load_into_varmap, read_checkpoint};
use medseg_train::config::Pipeline;
use medseg_train::sliding_window::window_starts;
use medseg_train::{
    ModelConfig, SegModel, TrainConfig, device_from_str, sliding_window_argmax,
    sliding_window_stream,
};
use rayon::prelude::*;

/// Arguments of `medseg predict`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input image (`.nii`/`.nii.gz`) or a folder of them (hidden files are skipped).
    #[arg(short = 'i', long)]
    pub input: PathBuf,
    /// Output label map (`.nii`/`.nii.gz`), or a folder: it receives `<case>.nii.gz` per input
    /// (`<case>` is the file name without `.nii[.gz]` and an nnU-Net `_0000` suffix).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// A run folder (`config.toml` + `checkpoints/best.safetensors`, else `last`), or a weights
    /// file (`.safetensors`, MONAI `.pt`/`.pth`), which needs `--preset` or `--config`.
    #[arg(long)]
    pub model: PathBuf,
    /// Embedded training preset giving architecture, preprocessing and sliding window
    /// (phantom, phantom_unet, btcv, msd_spleen, totalseg_smt).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// Training config TOML giving architecture, preprocessing and sliding window (overrides a
    /// run folder's own `config.toml`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Folder receiving the softmax probabilities, one float32 `prob_<class>.nii.gz` per class on
    /// the input grid (folder input: one subfolder per case).
    #[arg(long)]
    pub probabilities: Option<PathBuf>,
    /// Test-time augmentation: average the softmax over the 8 flip combinations of the three
    /// spatial axes (8× the inference time).
    #[arg(long)]
    pub tta: bool,
    /// cpu, cuda or cuda:N (CUDA needs a CUDA build).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Sliding-window overlap in [0, 1) (default: the config's `inference.overlap`).
    #[arg(long)]
    pub overlap: Option<f64>,
    /// Windows per forward pass (default: the config's `inference.sw_batch_size`).
    #[arg(long)]
    pub sw_batch_size: Option<usize>,
    /// Swin UNETR patch-merging order: legacy (MONAI < 1.5: every published BTCV/SSL/Swin SMT
    /// checkpoint), fixed (MONAI ≥ 1.5 "merging"), v2 ("mergingv2"). Default: the config's
    /// `merge_order`, else the weights' metadata, else MONAI 1.6.1 semantics of `downsample`.
    #[arg(long, value_parser = ["legacy", "fixed", "v2"])]
    pub merge_order: Option<String>,
}

/// One input and where its outputs go.
#[derive(Debug, Clone)]
struct Job {
    input: PathBuf,
    output: PathBuf,
    probabilities: Option<PathBuf>,
}

/// Everything needed to predict a case.
struct Predictor {
    cfg: TrainConfig,
    model: Box<dyn SegModel>,
    transforms: Compose,
    device: Device,
    tta: bool,
    /// Show a bar over the sliding windows of each case (single-file mode on a terminal; folder
    /// mode has its bar over the cases).
    window_bar: bool,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> Result<()> {
    let (mut cfg, weights, cfg_origin) = resolve_model(args)?;
    if let Some(o) = args.overlap {
        cfg.inference.overlap = o;
    }
    if let Some(b) = args.sw_batch_size {
        cfg.inference.sw_batch_size = b;
    }
    if let Some(o) = &args.merge_order {
        match &mut cfg.model {
            ModelConfig::SwinUnetr(c) => c.merge_order = Some(MergeOrder::parse(o)?),
            ModelConfig::TinyUnet(_) => bail!("--merge-order applies to swin_unetr models only"),
        }
    }
    cfg.validate().with_context(|| format!("checking config {cfg_origin}"))?;
    if cfg.model.in_channels() != 1 {
        bail!(
            "the model of {cfg_origin} takes {} input channels; medseg predict feeds one \
             single-channel image",
            cfg.model.in_channels()
        );
    }
    let jobs = plan_jobs(args)?;
    let device = device_from_str(&args.device)?;
    let model = load_model(&mut cfg, &weights, &device, args.model.is_dir())?;
    let sw = &cfg.inference;
    let merge = match &cfg.model {
        ModelConfig::SwinUnetr(c) => format!(", merge order {:?}", c.resolved_merge_order()),
        ModelConfig::TinyUnet(_) => String::new(),
    };
    eprintln!(
        "model {} ({} classes{merge}) from {} (config {cfg_origin})",
        model_kind(&cfg.model),
        cfg.model.out_channels(),
        weights.display()
    );
    eprintln!(
        "sliding window roi {:?}, overlap {}, {:?} blending, sw_batch_size {}{}",
        sw.roi,
        sw.overlap,
        sw.mode,
        sw.sw_batch_size,
        if args.tta { "; TTA over 8 flips" } else { "" }
    );
    let transforms = cfg.data.val_transforms();
    let window_bar = !args.input.is_dir();
    let p = Predictor { cfg, model, transforms, device, tta: args.tta, window_bar };
    if args.input.is_dir() {
        run_folder(&p, &jobs)
    } else {
        let job = &jobs[0];
        p.predict(job, &|m| eprintln!("{m}"))
            .with_context(|| format!("predicting {}", job.input.display()))
    }
}

fn model_kind(m: &ModelConfig) -> &'static str {
    match m {
        ModelConfig::TinyUnet(_) => "tiny_unet",
        ModelConfig::SwinUnetr(_) => "swin_unetr",
    }
}

/// The training config, the weights file and a description of where the config came from.
fn resolve_model(args: &Args) -> Result<(TrainConfig, PathBuf, String)> {
    let m = &args.model;
    if !m.exists() {
        bail!("model {} does not exist (a run folder or a weights file)", m.display());
    }
    let explicit = match (&args.preset, &args.config) {
        (Some(p), _) => Some((
            TrainConfig::preset(p).with_context(|| format!("loading preset {p}"))?,
            format!("preset {p}"),
        )),
        (None, Some(c)) => {
            let text = std::fs::read_to_string(c)
                .with_context(|| format!("reading config {}", c.display()))?;
            Some((TrainConfig::from_toml(&text, c)?, c.display().to_string()))
        }
        (None, None) => None,
    };
    if m.is_dir() {
        let ck = m.join("checkpoints");
        let weights = ["best.safetensors", "last.safetensors"]
            .iter()
            .map(|f| ck.join(f))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "run folder {} has neither checkpoints/best.safetensors nor \
                     checkpoints/last.safetensors",
                    m.display()
                )
            })?;
        let (cfg, origin) = match explicit {
            Some(e) => e,
            None => {
                let path = m.join("config.toml");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("reading {} (pass --preset or --config instead)", path.display())
                })?;
                (TrainConfig::from_toml(&text, &path)?, path.display().to_string())
            }
        };
        Ok((cfg, weights, origin))
    } else {
        let Some((cfg, origin)) = explicit else {
            bail!(
                "weights file {} needs --preset or --config for the architecture and \
                 preprocessing (or pass a run folder)",
                m.display()
            )
        };
        Ok((cfg, m.clone(), origin))
    }
}

fn is_nifti(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (name.ends_with(".nii") || name.ends_with(".nii.gz")) && !name.starts_with('.')
}

/// A folder that must exist (the parent of an output file), named in the error.
fn require_dir(dir: &Path, what: &str, file: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if !dir.is_dir() {
        bail!("{what} folder {} does not exist (for {})", dir.display(), file.display());
    }
    Ok(())
}

/// Creates `dir` when missing; its parent must exist.
fn ensure_out_dir(dir: &Path, what: &str) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        bail!("{what} {} exists and is not a folder", dir.display());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    require_dir(parent, what, dir)?;
    std::fs::create_dir(dir).with_context(|| format!("creating {what} folder {}", dir.display()))
}

/// Checks every path before the model is loaded and pairs inputs with outputs.
fn plan_jobs(args: &Args) -> Result<Vec<Job>> {
    let (input, output) = (&args.input, &args.output);
    if !input.exists() {
        bail!("input {} does not exist", input.display());
    }
    if input.is_dir() {
        let mut inputs = Vec::new();
        for entry in std::fs::read_dir(input)
            .with_context(|| format!("listing input folder {}", input.display()))?
        {
            let p = entry.with_context(|| format!("listing {}", input.display()))?.path();
            if p.is_file() && is_nifti(&p) {
                inputs.push(p);
            }
        }
        inputs.sort();
        if inputs.is_empty() {
            bail!("input folder {} contains no .nii or .nii.gz file", input.display());
        }
        if is_nifti(output) && !output.is_dir() {
            bail!(
                "input {} is a folder, so the output must be a folder, got {}",
                input.display(),
                output.display()
            );
        }
        ensure_out_dir(output, "output")?;
        if let Some(pd) = &args.probabilities {
            ensure_out_dir(pd, "probabilities")?;
        }
        let mut seen = std::collections::HashMap::new();
        let mut jobs = Vec::with_capacity(inputs.len());
        for p in inputs {
            let id = case_id(&p);
            if let Some(prev) = seen.insert(id.clone(), p.clone()) {
                bail!(
                    "inputs {} and {} both map to case {id:?} (output {id}.nii.gz)",
                    prev.display(),
                    p.display()
                );
            }
            jobs.push(Job {
                output: output.join(format!("{id}.nii.gz")),
                probabilities: args.probabilities.as_ref().map(|d| d.join(&id)),
                input: p,
            });
        }
        Ok(jobs)
    } else {
        let out = if output.is_dir() {
            output.join(format!("{}.nii.gz", case_id(input)))
        } else {
            if !is_nifti(output) {
                bail!(
                    "output {} must end in .nii or .nii.gz (or be an existing folder)",
                    output.display()
                );
            }
            require_dir(output.parent().unwrap_or(Path::new(".")), "output", output)?;
            output.clone()
        };
        if let Some(pd) = &args.probabilities {
            ensure_out_dir(pd, "probabilities")?;
        }
        Ok(vec![Job {
            input: input.clone(),
            output: out,
            probabilities: args.probabilities.clone(),
        }])
    }
}

/// Builds the network of `cfg` and fills it from `weights` (every parameter required).
/// `from_run`: the weights come from a run folder trained with `cfg` itself.
fn load_model(
    cfg: &mut TrainConfig,
    weights: &Path,
    device: &Device,
    from_run: bool,
) -> Result<Box<dyn SegModel>> {
    let ckpt = read_checkpoint(weights)
        .with_context(|| format!("reading weights {}", weights.display()))?;
    if let ModelConfig::SwinUnetr(c) = &mut cfg.model
        && c.merge_order.is_none()
    {
        c.merge_order = ckpt.merge_order;
        if c.merge_order.is_none() && !from_run {
            eprintln!(
                "warning: neither the config nor {} records the patch-merging order; using \
                 {:?} (MONAI 1.6.1 semantics). Weights trained before MONAI 1.5 (every \
                 published BTCV/SSL/Swin SMT checkpoint) need --merge-order legacy",
                weights.display(),
                c.resolved_merge_order()
            );
        }
    }
    if cfg.model.out_channels() > 256 {
        bail!(
            "model.out_channels {} exceeds the 256 labels of a u8 label map",
            cfg.model.out_channels()
        );
    }
    let varmap = VarMap::new();
    // Creates the variables (checkpoint names) that the weights are loaded into.
    cfg.model.build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let report = load_into_varmap(&varmap, &ckpt).with_context(|| {
        format!(
            "loading weights {} into the {} of the config (a model/config mismatch?)",
            weights.display(),
            model_kind(&cfg.model)
        )
    })?;
    if !report.missing.is_empty() {
        let first: Vec<&str> = report.missing.iter().take(3).map(String::as_str).collect();
        bail!(
            "{}: {} of the model's parameters are missing (first: {}); the weights do not \
             belong to this model config",
            weights.display(),
            report.missing.len(),
            first.join(", ")
        );
    }
    if !report.unused.is_empty() {
        eprintln!(
            "warning: {} tensors of {} are not used by the model (first: {})",
            report.unused.len(),
            weights.display(),
            report.unused[0]
        );
    }
    // Detached weights on the target device: inference records no autograd graph, so
    // activations are freed as soon as they are consumed.
    let tensors = {
        let data =
            varmap.data().lock().map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
        data.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().to_device(device)?)))
            .collect::<candle::Result<std::collections::HashMap<_, _>>>()?
    };
    Ok(cfg.model.build(VarBuilder::from_tensors(tensors, DType::F32, device))?)
}

/// A bar `prefix [===>  ] pos/len unit (elapsed, eta)`; `unit` may be `{msg}`.
fn counting_bar(len: usize, prefix: &'static str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    let template =
        format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}}, eta {{eta}})");
    pb.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

/// Folder mode: every input in turn under a progress bar; a failing case is reported and the
/// others still run; the command fails at the end if any case failed.
fn run_folder(p: &Predictor, jobs: &[Job]) -> Result<()> {
    let pb = counting_bar(jobs.len(), "predict", "{msg}");
    let log = |m: String| if pb.is_hidden() { eprintln!("{m}") } else { pb.println(m) };
    let mut failed = Vec::new();
    for job in jobs {
        pb.set_message(case_id(&job.input));
        if let Err(e) = p.predict(job, &log) {
            log(format!("error: {}: {e:#}", job.input.display()));
            failed.push(job.input.clone());
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if !failed.is_empty() {
        let names: Vec<String> = failed.iter().map(|f| f.display().to_string()).collect();
        bail!("{} of {} inputs failed: {}", failed.len(), jobs.len(), names.join(", "));
    }
    eprintln!("{} predictions written to the output folder", jobs.len());
    Ok(())
}

impl Predictor {
    /// Predicts one case and writes its outputs (probabilities first, the label map last).
    fn predict(&self, job: &Job, log: &dyn Fn(String)) -> Result<()> {
        let start = Instant::now();
        let id = case_id(&job.input);
        let sample = load_sample(&DataItem::new(&job.input, None), None, 1e-3)?;
        for w in &sample.meta.warnings {
            log(format!("warning: {w}"));
        }
        self.log_geometry(&id, &sample.image, log);
        let mut rng = sample_rng(0, 0, 0);
        let sample =
            self.transforms.apply(sample, &mut rng)?.into_iter().next().with_context(|| {
                format!("{}: preprocessing produced no volume", job.input.display())
            })?;
        let shape = sample.image.shape();
        let affine = sample.image.affine;
        let meta = sample.meta;
        // [X·Y·Z] -> [1, 1, D, H, W]
        let x = Tensor::from_vec(
            sample.image.into_data(),
            (1, 1, shape[0], shape[1], shape[2]),
            &self.device,
        )?;
        let bar = self.window_progress(shape);
        let labels = if self.tta || job.probabilities.is_some() {
            self.labels_with_probabilities(&x, shape, affine, &meta, job, &bar)?
        } else {
            // Streamed: the K × voxels scores never exist at once (medseg-train docs).
            let labels = sliding_window_argmax(&x, &self.cfg.inference, |t| self.forward(t, &bar))?;
            labels.flatten_all()?.to_vec1::<u8>()?
        };
        bar.finish_and_clear();
        write_prediction(&job.output, labels, shape, affine, &meta)?;
        log(format!(
            "{id}: {:?} → network grid {:?} → {} in {:.2} s",
            meta.original_shape,
            shape,
            job.output.display(),
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Labels from the full class scores: the TTA average and/or the probability maps need all
    /// `K × voxels` of them at once. Writes the probabilities when asked.
    fn labels_with_probabilities(
        &self,
        x: &Tensor,
        shape: [usize; 3],
        affine: Affine,
        meta: &Meta,
        job: &Job,
        bar: &ProgressBar,
    ) -> Result<Vec<u8>> {
        let k = self.cfg.model.out_channels();
        // [K·D·H·W] channel-major softmax scores
        let scores = self.scores(x, shape, bar)?;
        if let Some(dir) = &job.probabilities {
            ensure_out_dir(dir, "probabilities")?;
            write_probabilities(dir, &scores, k, shape, affine, meta)?;
        }
        Ok(argmax_channels(&scores, k))
    }

    /// The network on a batch of windows; advances the window bar.
    fn forward(&self, windows: &Tensor, bar: &ProgressBar) -> medseg_train::Result<Tensor> {
        let out = self.model.forward_t(windows, false)?;
        bar.inc(windows.dim(0)? as u64);
        Ok(out)
    }

    /// A bar over every window of the case (× 8 with TTA) of the preprocessed grid `shape`;
    /// hidden in folder mode and when stderr is not a terminal.
    fn window_progress(&self, shape: [usize; 3]) -> ProgressBar {
        if !self.window_bar {
            return ProgressBar::hidden();
        }
        let roi = self.cfg.inference.roi;
        let padded: [usize; 3] = std::array::from_fn(|i| shape[i].max(roi[i]));
        let starts = window_starts(padded, roi, self.cfg.inference.overlap);
        let windows: usize = starts.iter().map(Vec::len).product();
        let passes = if self.tta { 8 } else { 1 };
        counting_bar(windows * passes, "sliding window", "windows")
    }

    /// One log line when the input's orientation or spacing differs from the training grid.
    fn log_geometry(&self, id: &str, image: &Volume<f32>, log: &dyn Fn(String)) {
        let (codes, spacing) = (image.axcodes(), image.spacing());
        let pixdim = match self.cfg.data.pipeline {
            Pipeline::Btcv => Some(self.cfg.data.pixdim),
            Pipeline::Smt => None,
        };
        let spacing_differs = pixdim.is_some_and(|p| {
            spacing.iter().zip(&p).any(|(a, b)| (a - b).abs() > 1e-3 * b.max(1.0))
        });
        if codes != "RAS" || spacing_differs {
            let sp = spacing.map(|s| (s * 1000.0).round() / 1000.0);
            let target = match pixdim {
                Some(p) => format!("RAS at {p:?} mm"),
                None => "RAS".to_string(),
            };
            log(format!(
                "{id}: input orientation {codes}, spacing {sp:?} mm differs from training \
                 ({target}): resampled to the training grid for the network (safe: the \
                 validation transforms), prediction mapped back to the input grid"
            ));
        }
    }

    /// Softmax class scores `[K·D·H·W]` (channel-major) of the preprocessed volume `x`,
    /// averaged over the 8 flips with TTA. Each flip's blended D-slices stream
    /// ([`sliding_window_stream`]) into one accumulator, un-flipped on the way: peak memory ≈
    /// K × voxels f32 plus the stream's `roi[0]` slices.
    fn scores(&self, x: &Tensor, shape: [usize; 3], bar: &ProgressBar) -> Result<Vec<f32>> {
        let k = self.cfg.model.out_channels();
        let flips: Vec<Vec<usize>> = if self.tta { flip_sets() } else { vec![Vec::new()] };
        let mut acc = vec![0f32; k * shape.iter().product::<usize>()];
        let mut probs: Vec<f32> = Vec::new();
        for f in &flips {
            let xf = if f.is_empty() { x.clone() } else { x.flip(f)? };
            // Spatial dims 2, 3, 4 of the tensor are axes 0, 1, 2 of each channel.
            let axes: Vec<usize> = f.iter().map(|d| d - 2).collect();
            sliding_window_stream(
                &xf,
                &self.cfg.inference,
                |t| self.forward(t, bar),
                |s| {
                    if s.scores.len() != k * shape[1] * shape[2] {
                        return Err(medseg_train::Error::Shape {
                            what: "model output channels".into(),
                            expected: format!("{k} channels (the config's out_channels)"),
                            got: vec![s.scores.len() / (shape[1] * shape[2]), shape[1], shape[2]],
                        });
                    }
                    if let Some(i) = s.scores.iter().position(|v| !v.is_finite()) {
                        let hw = shape[1] * shape[2];
                        let v = unflip(shape, &axes, [s.d, i % hw / shape[2], i % shape[2]]);
                        return Err(medseg_train::Error::NonFiniteOutput {
                            value: s.scores[i],
                            batch: s.batch,
                            channel: i / hw,
                            voxel: v,
                        });
                    }
                    probs.clear();
                    probs.extend_from_slice(s.scores);
                    softmax_channels(&mut probs, k);
                    add_slice(&mut acc, &probs, k, shape, &axes, s.d);
                    Ok(())
                },
            )?;
        }
        let n = flips.len() as f32;
        if n > 1.0 {
            acc.par_iter_mut().for_each(|a| *a /= n);
        }
        Ok(acc)
    }
}

/// Where voxel `[d, h, w]` of a volume of `shape` flipped along `axes` (0, 1, 2) sits unflipped.
fn unflip(shape: [usize; 3], axes: &[usize], v: [usize; 3]) -> [usize; 3] {
    std::array::from_fn(|a| if axes.contains(&a) { shape[a] - 1 - v[a] } else { v[a] })
}

/// Adds the channel-major `[K, H, W]` slice `d` of a volume flipped along `axes` to the
/// unflipped channel-major `[K·D·H·W]` accumulator.
fn add_slice(
    acc: &mut [f32],
    slice: &[f32],
    k: usize,
    shape: [usize; 3],
    axes: &[usize],
    d: usize,
) {
    let [_, nh, nw] = shape;
    let (hw, vox) = (nh * nw, shape.iter().product::<usize>());
    let d0 = unflip(shape, axes, [d, 0, 0])[0];
    let (flip_h, flip_w) = (axes.contains(&1), axes.contains(&2));
    for c in 0..k {
        let dst = &mut acc[c * vox + d0 * hw..][..hw];
        for (i, src) in slice[c * hw..(c + 1) * hw].chunks(nw).enumerate() {
            let i0 = if flip_h { nh - 1 - i } else { i };
            let row = &mut dst[i0 * nw..(i0 + 1) * nw];
            if flip_w {
                row.iter_mut().rev().zip(src).for_each(|(a, v)| *a += v);
            } else {
                row.iter_mut().zip(src).for_each(|(a, v)| *a += v);
            }
        }
    }
}

/// In-place softmax over the channels of a channel-major `[K·N]` buffer (max-subtracted).
fn softmax_channels(p: &mut [f32], k: usize) {
    let n = p.len() / k;
    let mut max = vec![f32::NEG_INFINITY; n];
    for row in p.chunks(n) {
        max.par_iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
    }
    let mut sum = vec![0f32; n];
    for row in p.chunks_mut(n) {
        row.par_iter_mut().zip(&max).zip(sum.par_iter_mut()).for_each(|((v, m), s)| {
            *v = (*v - m).exp();
            *s += *v;
        });
    }
    for row in p.chunks_mut(n) {
        row.par_iter_mut().zip(&sum).for_each(|(v, s)| *v /= s);
    }
}

/// Per-voxel index of the largest channel of a channel-major `[K·N]` buffer (first wins on ties,
/// as `torch.argmax`).
fn argmax_channels(p: &[f32], k: usize) -> Vec<u8> {
    let n = p.len() / k;
    let mut best = vec![0u8; n];
    let mut val: Vec<f32> = p[..n].to_vec();
    for (c, row) in p.chunks(n).enumerate().skip(1) {
        best.par_iter_mut().zip(val.par_iter_mut()).zip(row).for_each(|((b, m), &v)| {
            if v > *m {
                *m = v;
                *b = c as u8;
            }
        });
    }
    best
}

/// The 8 subsets of the spatial dims `{2, 3, 4}` of a `[B, C, D, H, W]` tensor, `[]` first.
fn flip_sets() -> Vec<Vec<usize>> {
    (0..8u8).map(|m| (0..3).filter(|b| m >> b & 1 == 1).map(|b| b + 2).collect()).collect()
}

/// Writes `prob_<c>.nii.gz` per class on the original grid (nearest neighbour, the same mapping
/// as the label map, so its argmax is the label map); outside the network's field of view the
/// background gets probability 1.
fn write_probabilities(
    dir: &Path,
    probs: &[f32],
    k: usize,
    shape: [usize; 3],
    affine: Affine,
    meta: &Meta,
) -> Result<()> {
    let vox: usize = shape.iter().product();
    let (orig_affine, orig_shape) = (&meta.original_affine, meta.original_shape);
    let inside = resample_to_grid(
        &Volume::filled(shape, 1u8, affine),
        orig_affine,
        orig_shape,
        Interp::Nearest,
        Padding::Zeros,
        |v| v as u8,
    )?;
    for c in 0..k {
        let vol = Volume::new(probs[c * vox..(c + 1) * vox].to_vec(), shape, affine)
            .context("probability map length")?;
        let mut out = resample_to_grid(
            &vol,
            orig_affine,
            orig_shape,
            Interp::Nearest,
            Padding::Zeros,
            |v| v as f32,
        )?;
        if c == 0 {
            for (o, &m) in out.data_mut().iter_mut().zip(inside.data()) {
                if m == 0 {
                    *o = 1.0;
                }
            }
        }
        write_volume(dir.join(format!("prob_{c:03}.nii.gz")), &out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: flips every channel of a channel-major `[K·X·Y·Z]` buffer along `axes` (0, 1, 2).
    fn flip_channels(p: &[f32], k: usize, shape: [usize; 3], axes: &[usize]) -> Vec<f32> {
        let [nx, ny, nz] = shape;
        let n = nx * ny * nz;
        let f = |a: usize, i: usize| if axes.contains(&a) { shape[a] - 1 - i } else { i };
        let mut out = vec![0f32; k * n];
        out.par_chunks_mut(nz).enumerate().for_each(|(row, dst)| {
            let (c, rest) = (row / (nx * ny), row % (nx * ny));
            let (i, j) = (rest / ny, rest % ny);
            let src = c * n + (f(0, i) * ny + f(1, j)) * nz;
            for (kk, d) in dst.iter_mut().enumerate() {
                *d = p[src + f(2, kk)];
            }
        });
        out
    }

    #[test]
    fn softmax_argmax_and_flip_on_channel_major_buffers() {
        // 2 channels × 3 voxels.
        let mut p = vec![1.0f32, 0.0, 5.0, 1.0, 2.0, -5.0];
        assert_eq!(argmax_channels(&p, 2), vec![0, 1, 0]);
        softmax_channels(&mut p, 2);
        assert!((p[0] - 0.5).abs() < 1e-7 && (p[3] - 0.5).abs() < 1e-7);
        let e2 = 1.0 / (1.0 + 2f32.exp());
        assert!((p[1] - e2).abs() < 1e-7 && (p[4] - (1.0 - e2)).abs() < 1e-7);
        for v in 0..3 {
            assert!((p[v] + p[3 + v] - 1.0).abs() < 1e-6);
        }
        // Ties keep the first channel, like torch.argmax.
        assert_eq!(argmax_channels(&[0.5, 0.5], 2), vec![0]);
        // 1 channel of shape 2×1×3, flipped along axes 0 and 2.
        let q: Vec<f32> = (0..6).map(|v| v as f32).collect();
        assert_eq!(flip_channels(&q, 1, [2, 1, 3], &[0, 2]), vec![5.0, 4.0, 3.0, 2.0, 1.0, 0.0]);
        assert_eq!(flip_channels(&q, 1, [2, 1, 3], &[0]), vec![3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
        let two: Vec<f32> = (0..4).map(|v| v as f32).collect();
        assert_eq!(flip_channels(&two, 2, [2, 1, 1], &[0]), vec![1.0, 0.0, 3.0, 2.0]);
    }

    #[test]
    fn streamed_slices_accumulate_unflipped() {
        // 2 channels of 3×4×5: every flip set, slice by slice, equals the whole-volume flip.
        let (k, shape) = (2, [3usize, 4, 5]);
        let vol: Vec<f32> = (0..k * 60).map(|v| (v * 7 % 11) as f32 - 3.0).collect();
        for f in flip_sets() {
            let axes: Vec<usize> = f.iter().map(|d| d - 2).collect();
            // The flipped volume as the network sees it, handed out slice by slice.
            let flipped = flip_channels(&vol, k, shape, &axes);
            let mut acc = vec![0f32; vol.len()];
            for d in 0..shape[0] {
                let slice: Vec<f32> =
                    (0..k).flat_map(|c| flipped[c * 60 + d * 20..][..20].to_vec()).collect();
                add_slice(&mut acc, &slice, k, shape, &axes, d);
            }
            assert_eq!(acc, vol, "flip {f:?}");
            assert_eq!(unflip(shape, &axes, unflip(shape, &axes, [2, 1, 0])), [2, 1, 0]);
        }
        assert_eq!(unflip(shape, &[0, 2], [0, 1, 0]), [2, 1, 4]);
    }

    #[test]
    fn flip_sets_are_the_eight_subsets() {
        let s = flip_sets();
        assert_eq!(s.len(), 8);
        assert_eq!(s[0], Vec::<usize>::new());
        assert_eq!(s[7], vec![2, 3, 4]);
        let mut sorted = s.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
    }
}
