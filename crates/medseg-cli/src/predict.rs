//! `medseg predict`: NIfTI image(s) or a DICOM series → label map(s) on the input's exact grid
//! (NIfTI or DICOM SEG), with statistics, preview, class subset and clean-up, TotalSegmentator
//! style. Argument parsing and progress display only: everything else is medseg-infer's
//! (`docs/inference.md`).
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use medseg_data::dataset::case_id;
use medseg_infer::{
    Cleanup, ModelSource, Observer, OutputType, PredictOptions, Predictor, Request, Resample,
    class_names, labels_of, plan,
};
use medseg_models::MergeOrder;
use medseg_train::device_from_str;

/// Arguments of `medseg predict`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input image (`.nii`/`.nii.gz`), a folder of them (hidden files are skipped), or a DICOM
    /// series: a folder without NIfTI files, a `.zip` or a DICOM file.
    #[arg(short = 'i', long)]
    pub input: PathBuf,
    /// Output label map (`.nii`/`.nii.gz`, or `.dcm` for a DICOM SEG), or a folder: it receives
    /// `<case>.nii.gz` (`<case>.dcm`) per input (`<case>` is the file name without
    /// `.nii[.gz]` and an nnU-Net `_0000` suffix). Never one of the inputs.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// nifti or dicom-seg (needs a DICOM input). Default: dicom-seg for a `.dcm` output, else nifti.
    #[arg(long = "output-type", value_parser = ["nifti", "dicom-seg"])]
    pub output_type: Option<String>,
    /// SeriesInstanceUID of a DICOM input (default: the CT series with most slices, no scout).
    #[arg(long)]
    pub series: Option<String>,
    /// Per-class statistics (`.json` or `.csv`): voxels, ml, mean/std/min/max/median of the
    /// input intensity. Folder input: `<output>/<case>_<file name>` per case.
    #[arg(long)]
    pub statistics: Option<PathBuf>,
    /// Preview picture (`.png`): three slices through the labelled region with a legend. Folder
    /// input: `<output>/<case>_<file name>` per case.
    #[arg(long)]
    pub preview: Option<PathBuf>,
    /// Write only these classes (comma-separated names; others become background).
    #[arg(long = "roi-subset")]
    pub roi_subset: Option<String>,
    /// Keep only the largest connected component of these classes (all without a list).
    #[arg(long = "largest-component", num_args = 0..=1, default_missing_value = "")]
    pub largest_component: Option<String>,
    /// Remove connected components smaller than this volume in ml (every class).
    #[arg(long = "remove-small", value_parser = parse_ml)]
    pub remove_small: Option<f64>,
    /// A run folder (`config.toml` + `checkpoints/best.safetensors`, else `last`), a model package
    /// (`medseg export`), a MONAI bundle folder (`configs/inference.json` + `models/model.pt`), or
    /// a weights file (`.safetensors`, MONAI `.pt`/`.pth`), which needs `--preset` or `--config`.
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
    /// Back to the input grid: `probabilities` (interpolate the softmax back, then arg-max:
    /// MONAI Invertd nearest_interp false) or `labels` (arg-max on the network grid, nearest
    /// neighbour back). Default: a bundle's postprocessing, else labels.
    #[arg(long, value_parser = ["probabilities", "labels"])]
    pub resample: Option<String>,
    /// Test-time augmentation: average the softmax over the 8 flip combinations of the three
    /// spatial axes (8× the inference time).
    #[arg(long)]
    pub tta: bool,
    /// cpu, cuda or cuda:N (CUDA needs a CUDA build).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Sliding-window overlap in [0, 1) (default: the config's `inference.overlap`).
    #[arg(long, value_parser = parse_overlap)]
    pub overlap: Option<f64>,
    /// Windows per forward pass, ≥ 1 (default: the config's `inference.sw_batch_size`).
    #[arg(long, value_parser = parse_batch)]
    pub sw_batch_size: Option<usize>,
    /// CPU threads for the network and the post-processing, ≥ 1 (default: every core).
    #[arg(long = "nr-threads", value_parser = parse_batch)]
    pub nr_threads: Option<usize>,
    /// Operand precision of the network's convolution and linear-layer products on CPU: f32, or
    /// bf16 (bf16 operands, f32 accumulation, norms and softmax in f32; needs AVX-512 BF16, else
    /// f32 runs).
    #[arg(long, default_value = "f32")]
    pub precision: medseg_ops::Precision,
    /// Swin UNETR patch-merging order: legacy (MONAI < 1.5: every published BTCV/SSL/Swin SMT
    /// checkpoint), fixed (MONAI ≥ 1.5 "merging"), v2 ("mergingv2"). Default: the config's
    /// `merge_order`, else the weights' metadata, else the model's default.
    #[arg(long, value_parser = ["legacy", "fixed", "v2"])]
    pub merge_order: Option<String>,
}

fn parse_overlap(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..1.0).contains(&v) { Ok(v) } else { Err(format!("must be in [0, 1), got {v}")) }
}

fn parse_ml(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("must be a volume in ml ≥ 0, got {s}")),
    }
}

fn parse_batch(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("must be an integer ≥ 1, got {s}")),
    }
}

/// Log lines and the window bar of a single input (folder mode has its bar over the cases).
struct Display {
    cases: ProgressBar,
    windows: Option<ProgressBar>,
}

impl Observer for Display {
    fn log(&self, msg: &str) {
        match &self.windows {
            Some(w) if !w.is_hidden() => w.println(msg),
            _ if !self.cases.is_hidden() => self.cases.println(msg),
            _ => eprintln!("{msg}"),
        }
    }
    fn windows_start(&self, total: usize) {
        if let Some(w) = &self.windows {
            w.set_length(total as u64);
            w.set_position(0);
        }
    }
    fn windows_done(&self, n: usize) {
        if let Some(w) = &self.windows {
            w.inc(n as u64);
        }
    }
}

/// Runs the subcommand.
pub fn run(args: &Args) -> Result<()> {
    if let Some(n) = args.nr_threads {
        // candle's GEMM and the rayon pool read RAYON_NUM_THREADS when first used.
        // SAFETY: nothing has started a thread yet: this runs first in a single-threaded process.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    let explicit = crate::explicit_config(args.preset.as_deref(), args.config.as_deref())?;
    let mut resolved = ModelSource::from_path(&args.model, explicit)?.resolve()?;
    let origin = resolved.origin.clone();
    if let Some(o) = args.overlap {
        resolved.config.window.overlap = o;
    }
    if let Some(b) = args.sw_batch_size {
        resolved.config.window.sw_batch_size = b;
    }
    if let Some(o) = &args.merge_order {
        resolved.config.set_merge_order(MergeOrder::parse(o)?).context("--merge-order")?;
    }
    resolved.config.validate().with_context(|| format!("checking config {origin}"))?;
    let request = Request {
        probabilities: args.probabilities.clone(),
        output_type: args.output_type.as_deref().map(OutputType::parse).transpose()?,
        statistics: args.statistics.clone(),
        preview: args.preview.clone(),
    };
    let jobs = plan(&args.input, &args.output, &request)?;
    let (names, names_from) = class_names(&args.model, resolved.config.model.out_channels());
    let cleanup = Cleanup {
        subset: args
            .roi_subset
            .as_deref()
            .map(|s| labels_of(s, &names, "--roi-subset"))
            .transpose()?,
        largest: match args.largest_component.as_deref() {
            Some("") => Some((1..names.len().min(256)).map(|c| c as u8).collect()),
            Some(s) => Some(labels_of(s, &names, "--largest-component")?),
            None => None,
        },
        remove_small_ml: args.remove_small,
    };
    let device = device_from_str(&args.device)?;
    let weights = resolved.weights.clone();
    let loaded = resolved.load(&device)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let model = &loaded.config.model;
    eprintln!(
        "model {} ({} classes) from {} (config {origin})",
        model.kind(),
        model.out_channels(),
        weights.display()
    );
    if let (Some(order), Some(from)) = (loaded.config.merge_order(), loaded.merge_order_from) {
        let from = if args.merge_order.is_some() { "--merge-order flag" } else { from };
        eprintln!("patch-merging order {order:?} (from the {from})");
    }
    if args.roi_subset.is_some() || args.largest_component.is_some() || args.statistics.is_some() {
        eprintln!("class names: {names_from}");
    }
    let opts = PredictOptions {
        tta: args.tta,
        class_names: names,
        cleanup,
        series: args.series.clone(),
        resample: args.resample.as_deref().map(Resample::parse).transpose()?,
    };
    let p = Predictor::new(loaded, device, opts);
    eprintln!("{}", p.window_summary());
    crate::forward::report_precision(args.precision);
    // Folder mode: the jobs' inputs are the files of the input folder (a DICOM folder is one job).
    let folder = jobs.iter().any(|j| j.input != args.input);
    let display = Display {
        cases: if folder {
            counting_bar(jobs.len(), "predict", "{msg}")
        } else {
            ProgressBar::hidden()
        },
        windows: (!folder).then(|| counting_bar(0, "sliding window", "windows")),
    };
    let mut failed = Vec::new();
    for job in &jobs {
        display.cases.set_message(case_id(&job.input));
        let r = medseg_ops::with_precision(args.precision, || p.predict(job, &display));
        if let Some(w) = &display.windows {
            w.finish_and_clear();
        }
        match r {
            Ok(()) => {}
            Err(e) if !folder => {
                return Err(e).with_context(|| format!("predicting {}", job.input.display()));
            }
            Err(e) => {
                display.log(&format!("error: {}: {e:#}", job.input.display()));
                failed.push(job.input.display().to_string());
            }
        }
        display.cases.inc(1);
    }
    display.cases.finish_and_clear();
    if !failed.is_empty() {
        bail!("{} of {} inputs failed: {}", failed.len(), jobs.len(), failed.join(", "));
    }
    if folder {
        eprintln!("{} predictions written to the output folder", jobs.len());
    }
    Ok(())
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
