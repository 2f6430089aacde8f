//! `medseg check-data --config …`: the pre-flight data check that `medseg train` runs before
//! step 1, alone (`medseg_train::check_data`; one error listing every bad item). Header warnings
//! are printed as `warning: …` lines.
use std::time::Instant;

use anyhow::{Context, Result, bail};
use medseg_data::Datalist;
use medseg_train::TrainConfig;

/// Arguments of `medseg check-data`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML config file, or a preset name (as for `medseg train --config`).
    #[arg(long, default_value = "phantom")]
    pub config: String,
}

/// Runs the check; prints a summary line on success.
pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    let cfg = TrainConfig::load(&args.config)
        .with_context(|| format!("loading config {}", args.config))?;
    let plan = cfg.resolve()?;
    if !plan.datalist.exists() {
        bail!(
            "data.datalist {} does not exist{}",
            plan.datalist.display(),
            if plan.config.data.generate_phantom {
                " (medseg train generates the synthetic phantom there first)"
            } else {
                ""
            }
        );
    }
    let dl = Datalist::from_json(&plan.datalist)?;
    let report = medseg_train::check_data(&plan, &dl)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(note) = &report.cache_note {
        eprintln!("note: {note}");
    }
    println!(
        "{}: {} items OK ({} label files read, {} from the cache) in {:.1} s",
        plan.datalist.display(),
        report.items,
        report.labels_read,
        report.labels_cached,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
