//! Scanning an input: every file's header is read once (pixel data skipped, files in parallel),
//! images are grouped by SeriesInstanceUID, each series is summarised, and one is chosen by a
//! documented rule.
use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::geometry::{SliceKey, build_grid};
use crate::input::{Input, Limits};
use crate::instance::{Instance, Parsed, parse_header};

/// Bytes read from the start of each file in the header pass: a CT slice's header is a few KiB;
/// longer headers (enhanced multi-frame files) are read whole.
pub(crate) const HEADER_BYTES: u64 = 64 << 10;

/// One series of the input, as `medseg convert --list` prints it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesSummary {
    /// SeriesInstanceUID (0020,000E).
    pub series_instance_uid: String,
    /// Modality (0008,0060), e.g. `CT`.
    pub modality: String,
    /// SeriesDescription (0008,103E).
    pub description: String,
    /// SeriesNumber (0020,0011), when present.
    pub series_number: Option<i64>,
    /// ImageType (0008,0008) of the first image.
    pub image_type: Vec<String>,
    /// True when some image's ImageType says LOCALIZER or SCOUT.
    pub localizer: bool,
    /// Number of image files.
    pub files: usize,
    /// Number of slices (frames of all files).
    pub slices: usize,
    /// `[columns, rows, slices]`.
    pub dims: [usize; 3],
    /// `[column spacing, row spacing, slice spacing]` in mm; the slice spacing is `None` when the
    /// slices do not form a grid.
    pub spacing: [Option<f64>; 3],
    /// Transfer syntax UIDs of the files.
    pub transfer_syntaxes: Vec<String>,
    /// `None` when the slices form one regular grid, else why not (the error `load` would give).
    pub geometry_problem: Option<String>,
}

/// The headers of every image in an input, grouped by series.
#[derive(Debug)]
pub struct Scan {
    pub(crate) input: Input,
    pub(crate) instances: Vec<Instance>,
    /// Series UID → indices into `instances`, in file order.
    pub(crate) by_series: BTreeMap<String, Vec<usize>>,
    summaries: Vec<SeriesSummary>,
    files: usize,
    skipped: usize,
}

impl Scan {
    /// Reads the headers of every file under `path` (a folder, a `.zip` or one file).
    /// Files that are not DICOM, DICOMDIR and DICOM objects without pixel data are skipped and
    /// counted; a file with the DICOM signature that does not parse is an error naming it.
    pub fn open(path: impl AsRef<Path>, limits: Limits) -> Result<Scan> {
        let input = Input::open(path, limits)?;
        let origins = input.files().to_vec();
        // Headers are parsed in parallel (each thread reuses one read buffer); the results keep
        // file order, so the first error in file order is the one reported. Only the start of
        // each file is read, unless its header goes on past it.
        let parsed: Vec<Result<Parsed>> = origins
            .par_iter()
            .map_init(Vec::new, |buf, origin| {
                let file = input.display(origin);
                let declared = input.read_head_into(origin, buf, HEADER_BYTES)?;
                let held = buf.len() as u64;
                // Fewer bytes than asked for: the whole file. Else the rest is only read when the
                // header goes on past these bytes, or when the declared length (a zip entry's
                // size) does not even cover them.
                let parsed = if held < HEADER_BYTES {
                    parse_header(buf, held, origin.clone(), &file)?
                } else if declared > held {
                    parse_header(buf, declared, origin.clone(), &file)?
                } else {
                    Parsed::NeedWhole
                };
                match parsed {
                    Parsed::NeedWhole => {
                        input.read_into(origin, buf)?;
                        parse_header(buf, buf.len() as u64, origin.clone(), &file)
                    }
                    parsed => Ok(parsed),
                }
            })
            .collect();
        let mut instances = Vec::new();
        let mut skipped = 0;
        for parsed in parsed {
            match parsed? {
                Parsed::Image(inst) => instances.push(*inst),
                // NeedWhole is not returned for a whole file (above): counted as skipped.
                Parsed::Skipped | Parsed::NeedWhole => skipped += 1,
            }
        }
        if instances.is_empty() {
            return Err(Error::NoImages {
                path: input.path().to_path_buf(),
                files: origins.len(),
                skipped,
            });
        }
        let mut by_series: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, inst) in instances.iter().enumerate() {
            by_series.entry(inst.series_uid.clone()).or_default().push(i);
        }
        let summaries =
            by_series.iter().map(|(uid, idx)| summarise(uid, &instances, idx)).collect();
        Ok(Scan { input, instances, by_series, summaries, files: origins.len(), skipped })
    }

    /// The series found, ordered by SeriesInstanceUID.
    pub fn series(&self) -> &[SeriesSummary] {
        &self.summaries
    }

    /// Number of files looked at.
    pub fn files(&self) -> usize {
        self.files
    }

    /// Number of files skipped (not DICOM, DICOMDIR, no pixel data).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The input path.
    pub fn path(&self) -> &Path {
        self.input.path()
    }

    /// The series to convert: `uid` when given (an error listing the UIDs when absent), else
    /// by the rule: modality CT, not a localiser/scout (ImageType), most slices; ties go to the
    /// lower SeriesNumber, then the lower UID.
    pub fn choose(&self, uid: Option<&str>) -> Result<&SeriesSummary> {
        let listing = || {
            self.summaries
                .iter()
                .map(|s| {
                    format!(
                        "{} ({} {} slices{})",
                        s.series_instance_uid,
                        s.modality,
                        s.slices,
                        if s.localizer { ", localizer" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(uid) = uid {
            return self.summaries.iter().find(|s| s.series_instance_uid == uid).ok_or_else(|| {
                Error::Selection {
                    path: self.path().to_path_buf(),
                    message: format!("no series {uid}; the input holds: {}", listing()),
                }
            });
        }
        self.summaries
            .iter()
            .filter(|s| s.modality.eq_ignore_ascii_case("CT") && !s.localizer)
            .min_by(|a, b| {
                b.slices
                    .cmp(&a.slices)
                    .then(
                        a.series_number
                            .unwrap_or(i64::MAX)
                            .cmp(&b.series_number.unwrap_or(i64::MAX)),
                    )
                    .then(a.series_instance_uid.cmp(&b.series_instance_uid))
            })
            .ok_or_else(|| Error::Selection {
                path: self.path().to_path_buf(),
                message: format!(
                    "no CT series that is not a localiser; choose one with --series: {}",
                    listing()
                ),
            })
    }

    /// The slices of one series, in file order.
    pub(crate) fn slice_keys(&self, uid: &str) -> Vec<SliceKey> {
        self.by_series
            .get(uid)
            .map(|idx| {
                idx.iter()
                    .flat_map(|&inst| {
                        (0..self.instances[inst].frames.len())
                            .map(move |frame| SliceKey { inst, frame })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn summarise(uid: &str, instances: &[Instance], idx: &[usize]) -> SeriesSummary {
    let first = &instances[idx[0]];
    let keys: Vec<SliceKey> = idx
        .iter()
        .flat_map(|&inst| {
            (0..instances[inst].frames.len()).map(move |frame| SliceKey { inst, frame })
        })
        .collect();
    let grid = build_grid(uid, instances, &keys);
    let ps = first.frames[0].spacing;
    let mut ts: Vec<String> = idx.iter().map(|&i| instances[i].transfer_syntax.clone()).collect();
    ts.sort();
    ts.dedup();
    SeriesSummary {
        series_instance_uid: uid.to_string(),
        modality: first.modality.clone(),
        description: first.series_description.clone(),
        series_number: first.series_number,
        image_type: first.image_type.clone(),
        localizer: idx.iter().any(|&i| instances[i].is_localizer()),
        files: idx.len(),
        slices: keys.len(),
        dims: [first.cols as usize, first.rows as usize, keys.len()],
        spacing: [ps.map(|p| p[1]), ps.map(|p| p[0]), grid.as_ref().ok().map(|g| g.slice_spacing)],
        transfer_syntaxes: ts,
        geometry_problem: grid.err().map(|e| e.to_string()),
    }
}
