//! `medseg prepare`: turns a public data set into a folder and a `dataset.json` that `medseg
//! train` reads, and prints the `data.datalist` line to put in a config. `msd TASK` downloads a
//! Medical Segmentation Decathlon task (or takes an already downloaded `.tar`), checks MONAI's md5
//! and unpacks it; `totalseg SRC` merges a TotalSegmentator v2 download (`.zip` or unpacked
//! folder) into the 117-class label maps with the official split. The work is
//! `medseg_data::prepare`'s.
use std::path::PathBuf;

use anyhow::{Context, Result};
use medseg_data::prepare;

/// Arguments of `medseg prepare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub data_set: DataSet,
}

/// The data sets `medseg prepare` knows.
#[derive(Debug, clap::Subcommand)]
pub enum DataSet {
    /// A Medical Segmentation Decathlon task (e.g. Task09_Spleen, or just spleen): download
    /// with a progress bar (curl), md5 check, unpack.
    Msd {
        /// Task name: Task01_BrainTumour … Task10_Colon (case-insensitive; `spleen` works too).
        task: String,
        /// Folder that receives `<task>/` (and the downloaded `.tar`).
        #[arg(long, default_value = "data")]
        dest: PathBuf,
        /// An already downloaded `<task>.tar`: verified and unpacked, nothing is downloaded.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// A TotalSegmentator v2 download (`.zip` or unpacked folder): 117-class labels, official
    /// train/val/test split.
    Totalseg {
        /// The `.zip` or the folder holding `meta.csv` and the `s0000/` cases.
        src: PathBuf,
        /// Folder that receives `labels/` and `dataset.json`.
        #[arg(long, default_value = "data/totalseg")]
        dest: PathBuf,
    },
}

/// Prepares the data set and prints the datalist line.
pub fn run(args: &Args) -> Result<()> {
    let json = match &args.data_set {
        DataSet::Msd { task, dest, archive } => {
            let names: Vec<&str> = prepare::MSD_TASKS.iter().map(|t| t.name).collect();
            let task = prepare::msd_task(task).with_context(|| {
                format!("unknown MSD task {task:?}; known: {}", names.join(", "))
            })?;
            match archive {
                Some(a) => prepare::prepare_msd_from_archive(&task, a, dest, true),
                None => prepare::prepare_msd(&task, dest, true),
            }
            .with_context(|| format!("preparing {}", task.name))?
        }
        DataSet::Totalseg { src, dest } => prepare::prepare_totalseg(src, dest)
            .with_context(|| format!("preparing TotalSegmentator from {}", src.display()))?,
    };
    println!("data.datalist = {:?}", json.display().to_string());
    Ok(())
}
