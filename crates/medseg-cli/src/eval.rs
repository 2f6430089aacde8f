//! `medseg eval`: scores a folder of predicted label maps against a folder of ground-truth label
//! maps paired by file name (`medseg_infer::eval_folders`: medseg-data's reader, the grids
//! checked, medseg-metrics' Dice, IoU, HD, HD95, ASSD, NSD with MONAI 1.6.1 semantics), prints the
//! per-class table (and a grouped one with `--groups`) and writes reports as Markdown, CSV or
//! JSON.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use medseg_data::nifti_io::atomic_write;
use medseg_infer::{AFFINE_TOLERANCE, EvalOptions, eval_folders};
use medseg_metrics::{GroupTable, GroupedReport, MetricsConfig, Report};

/// Arguments of `medseg eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of predicted label maps (`.nii`/`.nii.gz`, same file names as the ground truth).
    #[arg(long)]
    pub pred: PathBuf,
    /// Folder of ground-truth label maps; every file in it must have a prediction.
    #[arg(long)]
    pub gt: PathBuf,
    /// Classes including the background: a count (`14`) or comma-separated names in label order,
    /// background first (`background,liver,spleen`). Default: the labels of `--groups`.
    #[arg(long)]
    pub classes: Option<String>,
    /// Group table for a grouped summary: `btcv`, `totalseg_v2` (TotalSegmentator v2, the Swin
    /// SMT paper groups) or a JSON file (`{"name", "labels", "groups": [{"name", "classes"}]}`).
    #[arg(long)]
    pub groups: Option<String>,
    /// NSD tolerance in mm.
    #[arg(long, default_value_t = 2.0)]
    pub nsd_tolerance: f64,
    /// Score the background class (label 0) too.
    #[arg(long)]
    pub include_background: bool,
    /// Dice and IoU only (no surface distances; much faster).
    #[arg(long)]
    pub dice_only: bool,
    /// Score pairs whose affines differ (shape and spacing must still agree). By default every
    /// element of the two affines must agree within 1e-3 mm.
    #[arg(long)]
    pub ignore_affine: bool,
    /// Write the report to this file; the format follows the extension: `.md` (per-class and
    /// grouped tables), `.csv` (one row per case and class; the grouped table goes to
    /// `<stem>.groups.csv`), `.json` (everything). Repeatable.
    #[arg(long)]
    pub out: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Markdown,
    Csv,
    Json,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> Result<()> {
    for (what, d) in [("prediction", &args.pred), ("ground-truth", &args.gt)] {
        if !d.is_dir() {
            bail!("{what} folder {} does not exist or is not a folder", d.display());
        }
    }
    let outs: Vec<(PathBuf, Format)> =
        args.out.iter().map(|p| Ok((p.clone(), format_of(p)?))).collect::<Result<_>>()?;
    let table = args.groups.as_deref().map(group_table).transpose()?;
    let names: Vec<String> = match (&args.classes, &table) {
        (Some(c), _) => match c.trim().parse::<usize>() {
            Ok(n) => table
                .as_ref()
                .map(|t| t.labels.iter().take(n).cloned().collect())
                .filter(|v: &Vec<String>| v.len() == n)
                .unwrap_or_else(|| (0..n).map(|i| format!("class_{i}")).collect()),
            Err(_) => c.split(',').map(|s| s.trim().to_string()).collect(),
        },
        (None, Some(t)) => t.labels.clone(),
        (None, None) => bail!("give --classes (a count or names) or --groups"),
    };
    if names.len() < 2 {
        bail!("--classes needs at least 2 classes (background and one foreground), got {names:?}");
    }
    let mut cfg = MetricsConfig::new(names.len(), args.nsd_tolerance);
    cfg.include_background = args.include_background;
    cfg.distances = !args.dice_only;
    cfg.validate().context("metric settings")?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("eval");
    let opts = EvalOptions { ignore_affine: args.ignore_affine };
    let mut on_case = |done: usize, total: usize, name: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    };
    if args.ignore_affine {
        eprintln!(
            "--ignore-affine: affines are not compared (tolerance otherwise {AFFINE_TOLERANCE:e} mm)"
        );
    }
    let report = eval_folders(&args.pred, &args.gt, &cfg, opts, &mut on_case);
    bar.finish_and_clear();
    let report = report
        .with_context(|| {
            format!("evaluating {} against {}", args.pred.display(), args.gt.display())
        })?
        .with_class_names(&names);
    let grouped = table.as_ref().map(|t| t.group(&report));
    print!("{}", report.to_markdown());
    if let Some(g) = &grouped {
        println!();
        print!("{}", g.to_markdown());
    }
    for (path, fmt) in &outs {
        write_report(path, *fmt, args, &report, grouped.as_ref())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The report format of `path`, after checking that its folder exists.
fn format_of(path: &Path) -> Result<Format> {
    let fmt = match path.extension().and_then(|e| e.to_str()) {
        Some("md") => Format::Markdown,
        Some("csv") => Format::Csv,
        Some("json") => Format::Json,
        _ => bail!("report {} must end in .md, .csv or .json", path.display()),
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("output folder {} does not exist (for {})", dir.display(), path.display());
    }
    Ok(fmt)
}

fn group_table(spec: &str) -> Result<GroupTable> {
    Ok(match spec {
        "btcv" => GroupTable::btcv(),
        "totalseg_v2" | "totalsegmentator_v2" => GroupTable::totalsegmentator_v2(),
        path => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("reading group table {path} (built-in tables: btcv, totalseg_v2)")
            })?;
            GroupTable::from_json(&text).with_context(|| format!("parsing group table {path}"))?
        }
    })
}

fn write_report(
    path: &Path,
    fmt: Format,
    args: &Args,
    report: &Report,
    grouped: Option<&GroupedReport>,
) -> Result<()> {
    let write = |p: &Path, text: String| {
        atomic_write(p, |f| std::io::Write::write_all(f, text.as_bytes()))
            .with_context(|| format!("writing {}", p.display()))
    };
    match fmt {
        Format::Markdown => {
            let mut s = format!(
                "# medseg eval\n\n- predictions: `{}`\n- ground truth: `{}`\n- cases: {}\n\n",
                args.pred.display(),
                args.gt.display(),
                report.cases.len()
            );
            s.push_str(&report.to_markdown());
            if let Some(g) = grouped {
                s.push_str(&format!("\n## Groups ({})\n\n", g.table));
                s.push_str(&g.to_markdown());
            }
            write(path, s)
        }
        Format::Csv => {
            write(path, report.to_csv())?;
            if let Some(g) = grouped {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                let gp = path.with_file_name(format!("{}.groups.csv", stem.unwrap_or_default()));
                write(&gp, g.to_csv())?;
                eprintln!("wrote {}", gp.display());
            }
            Ok(())
        }
        Format::Json => {
            let mut v = report.to_json();
            if let (Some(g), Some(obj)) = (grouped, v.as_object_mut()) {
                obj.insert("groups".into(), g.to_json());
            }
            let text = serde_json::to_string_pretty(&v).context("serialising the report")?;
            write(path, text + "\n")
        }
    }
}
