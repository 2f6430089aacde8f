//! `medseg convert`: a DICOM series (folder, `.zip` or multi-frame file) to NIfTI on the grid that
//! `predict` works on (`medseg_dicom::convert`); `--list` prints the series of the input instead.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use medseg_dicom::{Limits, Scan};

/// Arguments of `medseg convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// DICOM input: a folder (searched recursively), a `.zip` of one, or a single (multi-frame) file.
    #[arg(short, long)]
    pub input: PathBuf,
    /// Output NIfTI (`.nii` or `.nii.gz`); int16 when the HU values fit, else float32.
    #[arg(short, long, required_unless_present = "list")]
    pub output: Option<PathBuf>,
    /// SeriesInstanceUID to convert. Default: the CT series with the most slices that is not a
    /// localiser (see `--list`).
    #[arg(long)]
    pub series: Option<String>,
    /// List the series of the input (UID, modality, description, slices, size, spacing, whether
    /// it forms a regular grid) and mark the one chosen by default; writes nothing.
    #[arg(long)]
    pub list: bool,
}

/// Runs `medseg convert`.
pub fn run(args: &Args) -> Result<()> {
    if args.list {
        let scan = Scan::open(&args.input, Limits::default())
            .with_context(|| format!("listing {}", args.input.display()))?;
        print!("{}", medseg_dicom::listing(&scan));
        return Ok(());
    }
    let Some(output) = &args.output else { bail!("--output is required unless --list is given") };
    let done =
        medseg_dicom::convert(&args.input, output, args.series.as_deref(), Limits::default())
            .with_context(|| format!("converting {}", args.input.display()))?;
    let s = done.spacing;
    println!(
        "{} → {}: series {} ({} \"{}\"), {}×{}×{} {} {}, spacing {:.3}×{:.3}×{:.3} mm ({} files, {} skipped)",
        args.input.display(),
        output.display(),
        done.info.series_instance_uid,
        done.info.modality,
        done.info.series_description,
        done.shape[0],
        done.shape[1],
        done.shape[2],
        done.axcodes,
        done.dtype,
        s[0],
        s[1],
        s[2],
        done.files,
        done.skipped,
    );
    Ok(())
}
