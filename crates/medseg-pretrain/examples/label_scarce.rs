//! Does self-supervised pretraining help when labels are scarce? The experiment of
//! docs/pretraining.md, end to end on the generated phantom:
//!
//! ```text
//! cargo run --release -p medseg-pretrain --example label_scarce -- \
//!     [--out runs/label_scarce] [--data data/label_scarce] [--seeds 0,1,2] \
//!     [--pretrained CHECKPOINT] [--pretrain-steps N] [--finetune-steps N] [--lr LR] \
//!     [--encoder-lr-scale S] [--contrast distinct|uniform]
//! ```
//!
//! 1. Writes a 24-case phantom (cases 0–11 are the default phantom's, 12–23 new) under `--data`
//!    and two datalists: `pretrain.json` (images of cases 0–13 train, 14–15 validate the
//!    reconstruction loss; no labels) and `finetune.json` (cases 0 and 1 are the only labelled
//!    training volumes; cases 16–23, never seen by either stage, validate).
//! 2. Pretrains the SSL head with `experiments/label_scarce/pretrain.toml` (skipped with
//!    `--pretrained`).
//! 3. For every seed, fine-tunes `experiments/label_scarce/finetune.toml` twice, from scratch and
//!    with `train.init_from` = the pretrained checkpoint; the seed fixes the initialisation of
//!    everything outside the Swin encoder and the batch order, so each pair differs only in the
//!    encoder's starting weights. `--lr` overrides the fine-tuning learning rate (docs/pretraining.md
//!    reports 3e-3, the `phantom` preset's, and 3e-4); `--encoder-lr-scale` sets
//!    `optim.encoder_lr_scale` of both runs of a pair (the encoder's lr multiplier).
//!    `--contrast uniform` gives liver, spleen and kidneys one intensity (medseg-data
//!    `OrganContrast::Uniform`), so that only context tells them apart; use its own `--data` folder.
//! 4. Prints and writes `<out>/summary.md`: validation mean Dice at every validation step per run,
//!    the means over seeds, and the final per-class Dice.
//!
//! About an hour on 2 CPU cores with the defaults.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use medseg_data::phantom::OrganContrast;
use medseg_pretrain::{PretrainConfig, Pretrainer};
use medseg_train::{TrainConfig, Trainer, device_from_str};

const PRETRAIN: &str = include_str!("../experiments/label_scarce/pretrain.toml");
const FINETUNE: &str = include_str!("../experiments/label_scarce/finetune.toml");
const N_CASES: usize = 24;

struct Args {
    out: PathBuf,
    data: PathBuf,
    seeds: Vec<u64>,
    pretrained: Option<PathBuf>,
    pretrain_steps: Option<u64>,
    finetune_steps: Option<u64>,
    lr: Option<f64>,
    encoder_lr_scale: Option<f64>,
    contrast: OrganContrast,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        out: "runs/label_scarce".into(),
        data: "data/label_scarce".into(),
        seeds: vec![0, 1, 2],
        pretrained: None,
        pretrain_steps: None,
        finetune_steps: None,
        lr: None,
        encoder_lr_scale: None,
        contrast: OrganContrast::Distinct,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = value()?.into(),
            "--data" => a.data = value()?.into(),
            "--pretrained" => a.pretrained = Some(value()?.into()),
            "--seeds" => {
                a.seeds = value()?
                    .split(',')
                    .map(|s| s.trim().parse().with_context(|| format!("--seeds: bad seed {s:?}")))
                    .collect::<Result<_>>()?
            }
            "--pretrain-steps" => a.pretrain_steps = Some(value()?.parse()?),
            "--finetune-steps" => a.finetune_steps = Some(value()?.parse()?),
            "--lr" => a.lr = Some(value()?.parse()?),
            "--encoder-lr-scale" => a.encoder_lr_scale = Some(value()?.parse()?),
            "--contrast" => {
                a.contrast = match value()?.as_str() {
                    "distinct" => OrganContrast::Distinct,
                    "uniform" => OrganContrast::Uniform,
                    other => bail!("--contrast: {other:?} is not distinct or uniform"),
                }
            }
            other => bail!("unknown argument {other:?} (see the example's doc comment)"),
        }
    }
    if a.seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    Ok(a)
}

/// The phantom and the two datalists (entries relative to the datalists' folder).
fn write_data(dir: &Path, contrast: OrganContrast) -> Result<()> {
    let cfg = medseg_data::phantom::PhantomConfig {
        n_cases: N_CASES,
        n_validation: 0,
        contrast,
        ..Default::default()
    };
    medseg_data::phantom::generate(dir.join("phantom"), &cfg)
        .with_context(|| format!("writing the phantom under {}", dir.display()))?;
    let image = |n: usize| format!("phantom/imagesTr/phantom_{n:03}.nii.gz");
    let labelled = |n: usize| serde_json::json!({"image": image(n), "label": format!("phantom/labelsTr/phantom_{n:03}.nii.gz")});
    let labels: serde_json::Map<String, serde_json::Value> = medseg_data::phantom::PHANTOM_LABELS
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), (*n).into()))
        .collect();
    let pretrain = serde_json::json!({
        "name": "label-scarce pretraining (images only)",
        "training": (0..14).map(|n| serde_json::json!({"image": image(n)})).collect::<Vec<_>>(),
        "validation": (14..16).map(|n| serde_json::json!({"image": image(n)})).collect::<Vec<_>>(),
    });
    let finetune = serde_json::json!({
        "name": "label-scarce fine-tuning (2 labelled volumes)",
        "labels": labels,
        "training": [labelled(0), labelled(1)],
        "validation": (16..N_CASES).map(labelled).collect::<Vec<_>>(),
    });
    for (name, json) in [("pretrain.json", pretrain), ("finetune.json", finetune)] {
        let path = dir.join(name);
        medseg_run::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn pretrain(args: &Args) -> Result<PathBuf> {
    let origin = Path::new("experiments/label_scarce/pretrain.toml");
    let mut cfg = PretrainConfig::from_toml(PRETRAIN, origin)?;
    cfg.data.datalists = vec![args.data.join("pretrain.json")];
    cfg.output.dir = args.out.clone();
    if let Some(n) = args.pretrain_steps {
        cfg.train.max_steps = n;
    }
    let device = device_from_str(&cfg.device)?;
    let plan = cfg.resolve()?;
    eprintln!("pretraining: {}", plan.run_dir.display());
    let mut pre = Pretrainer::new(plan, device)?;
    let outcome = pre.run(&Default::default())?;
    Ok(outcome.run_dir.join("checkpoints/last.safetensors"))
}

/// Validation rows of a run's `metrics.csv`: (step, mean Dice, per-class Dice).
type Curve = Vec<(u64, f64, Vec<f64>)>;

fn read_curve(run_dir: &Path) -> Result<(Vec<String>, Curve)> {
    let path = run_dir.join("metrics.csv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty metrics.csv")?.split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(step_c), Some(mean_c)) = (col("step"), col("val_mean_dice")) else {
        bail!("{}: no step / val_mean_dice columns", path.display());
    };
    let class_cols: Vec<usize> =
        (0..header.len()).filter(|&i| header[i].starts_with("dice_")).collect();
    let classes =
        class_cols.iter().map(|&i| header[i].trim_start_matches("dice_").to_string()).collect();
    let mut curve = Curve::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let Some(mean) = f.get(mean_c).filter(|s| !s.is_empty()) else { continue };
        let per_class = class_cols.iter().map(|&i| f[i].parse().unwrap_or(f64::NAN)).collect();
        curve.push((f[step_c].parse()?, mean.parse()?, per_class));
    }
    Ok((classes, curve))
}

fn finetune(args: &Args, seed: u64, init_from: Option<&Path>) -> Result<(Vec<String>, Curve)> {
    let origin = Path::new("experiments/label_scarce/finetune.toml");
    let mut cfg = TrainConfig::from_toml(FINETUNE, origin)?;
    cfg.data.datalist = args.data.join("finetune.json");
    cfg.seed = seed;
    cfg.train.init_from = init_from.map(Path::to_path_buf);
    cfg.name = format!(
        "{}-seed{seed}-{}",
        cfg.name,
        if init_from.is_some() { "pretrained" } else { "scratch" }
    );
    cfg.output.dir = args.out.clone();
    if let Some(n) = args.finetune_steps {
        cfg.train.max_steps = n;
    }
    if let Some(lr) = args.lr {
        cfg.optim.lr = lr;
    }
    if let Some(scale) = args.encoder_lr_scale {
        cfg.optim.encoder_lr_scale = scale;
    }
    let device = device_from_str(&cfg.device)?;
    let plan = cfg.resolve()?;
    eprintln!("fine-tuning: {}", plan.run_dir.display());
    let outcome = Trainer::new(plan, device)?.run(&Default::default())?;
    read_curve(&outcome.run_dir)
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

fn summary(
    args: &Args,
    (lr, encoder_lr_scale): (f64, f64),
    ckpt: &Path,
    classes: &[String],
    runs: &[(u64, Curve, Curve)],
) -> String {
    let steps: Vec<u64> = runs[0].1.iter().map(|r| r.0).collect();
    let mut s = format!(
        "# Label-scarce fine-tuning: pretrained encoder vs scratch\n\npretrained encoder: `{}`; fine-tuning lr {lr:e}, encoder lr × {encoder_lr_scale}\n\n",
        ckpt.display()
    );
    s.push_str(
        "Validation mean Dice (8 unseen phantom cases) after each number of fine-tuning steps:\n\n",
    );
    let head: String = steps.iter().map(|st| format!(" step {st} |")).collect();
    let _ = writeln!(s, "| seed | init |{head}");
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(steps.len()));
    let row = |c: &Curve| c.iter().map(|r| format!(" {:.4} |", r.1)).collect::<String>();
    for (seed, scratch, pre) in runs {
        let _ = writeln!(s, "| {seed} | scratch |{}", row(scratch));
        let _ = writeln!(s, "| {seed} | pretrained |{}", row(pre));
    }
    for (name, pick) in [("scratch", 1usize), ("pretrained", 2)] {
        let cells: String = (0..steps.len())
            .map(|i| {
                let m = mean(runs.iter().map(|r| if pick == 1 { &r.1 } else { &r.2 }[i].1));
                format!(" **{m:.4}** |")
            })
            .collect();
        let _ = writeln!(s, "| mean of {} | {name} |{cells}", runs.len());
    }
    let _ = writeln!(s, "\nFinal per-class Dice, mean over seeds:\n");
    let _ =
        writeln!(s, "| init |{}", classes.iter().map(|c| format!(" {c} |")).collect::<String>());
    let _ = writeln!(s, "|---|{}", "---|".repeat(classes.len()));
    for (name, pick) in [("scratch", 1usize), ("pretrained", 2)] {
        let cells: String = (0..classes.len())
            .map(|k| {
                let m = mean(runs.iter().filter_map(|r| {
                    let c = if pick == 1 { &r.1 } else { &r.2 };
                    c.last().map(|l| l.2[k])
                }));
                format!(" {m:.3} |")
            })
            .collect();
        let _ = writeln!(s, "| {name} |{cells}");
    }
    let _ = writeln!(
        s,
        "\nseeds {:?}; data {} (organ contrast {:?})",
        args.seeds,
        args.data.display(),
        args.contrast
    );
    s
}

fn main() -> Result<()> {
    medseg_ops::tune_allocator();
    let args = parse_args()?;
    write_data(&args.data, args.contrast)?;
    let ckpt = match &args.pretrained {
        Some(p) => p.clone(),
        None => pretrain(&args)?,
    };
    let mut runs = Vec::new();
    let mut classes = Vec::new();
    for &seed in &args.seeds {
        let (c, scratch) = finetune(&args, seed, None)?;
        let (_, pre) = finetune(&args, seed, Some(&ckpt))?;
        if scratch.is_empty() || scratch.len() != pre.len() {
            bail!("seed {seed}: the runs have no or unequal validation steps");
        }
        classes = c;
        runs.push((seed, scratch, pre));
    }
    let origin = Path::new("experiments/label_scarce/finetune.toml");
    let optim = TrainConfig::from_toml(FINETUNE, origin)?.optim;
    let lrs =
        (args.lr.unwrap_or(optim.lr), args.encoder_lr_scale.unwrap_or(optim.encoder_lr_scale));
    let text = summary(&args, lrs, &ckpt, &classes, &runs);
    let path = args.out.join("summary.md");
    medseg_run::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{text}");
    eprintln!("wrote {}", path.display());
    Ok(())
}
