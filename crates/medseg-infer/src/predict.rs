//! The predict API: a [`Predictor`] holds a loaded model and turns one image file into a label map
//! (and optionally per-class probabilities) on the input's exact grid.
//!
//! Per case: read → the preprocessing steps, their grids recorded ([`crate::steps`]) → sliding
//! window ([`crate::sliding_window`], streamed) → softmax (averaged over the 8 flips with TTA,
//! [`crate::tta`]) → back to the input's grid ([`Resample`]: `labels` arg-maxes on the network
//! grid ([`crate::postprocess`]) and maps the labels back by nearest neighbour; `probabilities`
//! interpolates the softmax back through the recorded steps and arg-maxes there,
//! [`crate::invert`]) → the clean-up of [`crate::classes`] (subset, largest component, small
//! components) → the label map (NIfTI, or a DICOM SEG for a DICOM input) → its statistics and
//! preview. Every file is written atomically; probabilities before the label map.
use std::time::Instant;

use candle::{Device, Tensor};
use medseg_data::dataset::case_id;
use medseg_data::nifti_io::write_volume;
use medseg_data::spatial::labels_to_original_grid;
use medseg_data::{Sample, Volume};
use medseg_dicom::{Limits, SegOptions, SeriesInfo, read_dicom, write_seg};
use medseg_models::MergeOrder;
use rayon::prelude::*;

use crate::classes::Cleanup;
use crate::config::InferenceConfig;
use crate::invert::{Inverter, Resample};
use crate::jobs::{InputKind, Job, OutputType};
use crate::model::SegModel;
use crate::postprocess::{argmax_labels, softmax_channels};
use crate::preprocess::{InputGeometry, Pipeline, prepare_steps, read_sample};
use crate::resample::{write_channels, write_probabilities};
use crate::sliding_window::{sliding_window_argmax, sliding_window_stream, window_starts};
use crate::source::LoadedModel;
use crate::statistics::{class_statistics, to_csv, to_json};
use crate::steps::Step;
use crate::tta::{add_slice, flip_sets, unflip};
use crate::{Error, Result};

/// What a caller sees of a prediction in progress (all methods default to doing nothing).
pub trait Observer {
    /// A message for the user (geometry notes, the per-case summary).
    fn log(&self, _msg: &str) {}
    /// The sliding windows of the case about to run (all passes of TTA together).
    fn windows_start(&self, _total: usize) {}
    /// `n` more windows went through the network.
    fn windows_done(&self, _n: usize) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// Prediction settings beyond the model's configuration.
#[derive(Debug, Clone, Default)]
pub struct PredictOptions {
    /// Average the softmax over the 8 flips of the three spatial axes (8× the time).
    pub tta: bool,
    /// Class names by label (background first), for statistics, previews and DICOM SEG
    /// segments; empty: `class_<n>`.
    pub class_names: Vec<String>,
    /// Clean-up of the label map on the input grid, before it is written.
    pub cleanup: Cleanup,
    /// The SeriesInstanceUID to read from a DICOM input (default: medseg-dicom's choice).
    pub series: Option<String>,
    /// How predictions return to the input grid (default: the model source's,
    /// [`LoadedModel::resample`]).
    pub resample: Option<Resample>,
}

/// A loaded model ready to predict case after case.
pub struct Predictor {
    config: InferenceConfig,
    model: Box<dyn SegModel>,
    steps: Vec<Step>,
    device: Device,
    opts: PredictOptions,
    resample: Resample,
}

impl Predictor {
    /// Wraps a loaded model; `device` must be the one it was loaded on.
    pub fn new(loaded: LoadedModel, device: Device, opts: PredictOptions) -> Self {
        let steps = loaded.config.preprocessing.steps();
        let resample = opts.resample.unwrap_or(loaded.resample);
        Predictor { config: loaded.config, model: loaded.model, steps, device, opts, resample }
    }

    /// How predictions return to the input grid.
    pub fn resample(&self) -> Resample {
        self.resample
    }

    /// The configuration in use (merge order resolved from the weights when they record it).
    pub fn config(&self) -> &InferenceConfig {
        &self.config
    }

    /// The patch-merging order of a Swin UNETR / Swin SMT model.
    pub fn merge_order(&self) -> Option<MergeOrder> {
        self.config.merge_order()
    }

    /// One line describing the sliding window (and TTA).
    pub fn window_summary(&self) -> String {
        let sw = &self.config.window;
        format!(
            "sliding window roi {:?}, overlap {}, {:?} blending, sw_batch_size {}{}; resample {}",
            sw.roi,
            sw.overlap,
            sw.mode,
            sw.sw_batch_size,
            if self.opts.tta { "; TTA over 8 flips" } else { "" },
            self.resample.as_str()
        )
    }

    /// Class names by label: the options' names, completed with `class_<n>`.
    pub fn class_names(&self) -> Vec<String> {
        (0..self.config.model.out_channels())
            .map(|c| self.opts.class_names.get(c).cloned().unwrap_or(format!("class_{c}")))
            .collect()
    }

    /// Predicts one case and writes its outputs (probabilities first, then the label map, its
    /// statistics and its preview).
    pub fn predict(&self, job: &Job, obs: &dyn Observer) -> Result<()> {
        let start = Instant::now();
        let (sample, series) = self.read(job)?;
        let id = case_id(&job.input);
        for w in &sample.meta.warnings {
            obs.log(&format!("warning: {}: {w}", job.input.display()));
        }
        let original =
            (job.statistics.is_some() || job.preview.is_some()).then(|| sample.image.clone());
        let (prep, geometry, trace) = prepare_steps(sample, &job.input, &self.steps)?;
        self.log_geometry(&id, &geometry, obs);
        let shape = prep.shape;
        let (orig_affine, orig_shape) = (prep.meta.original_affine, prep.meta.original_shape);
        // [X·Y·Z] -> [1, 1, D, H, W]
        let x = Tensor::from_vec(prep.data, (1, 1, shape[0], shape[1], shape[2]), &self.device)?;
        obs.windows_start(self.window_count(shape));
        let k = self.config.model.out_channels();
        let data = match self.resample {
            Resample::Probabilities => {
                // [K·D·H·W] channel-major softmax scores on the network grid; the input grid is
                // computed from them slab by slab (its K maps never exist at once).
                let scores = self.scores(&x, shape, obs)?;
                drop(x);
                let inv = Inverter::new(&trace, orig_shape, shape)?;
                if let Some(dir) = &job.probabilities {
                    write_channels(dir, k, orig_shape, orig_affine, |c| {
                        inv.channel(&scores, k, c)
                    })?;
                }
                inv.argmax(&scores, k)?
            }
            Resample::Labels => {
                let labels = if self.opts.tta || job.probabilities.is_some() {
                    // [K·D·H·W] channel-major softmax scores
                    let scores = self.scores(&x, shape, obs)?;
                    if let Some(dir) = &job.probabilities {
                        write_probabilities(dir, &scores, k, shape, prep.affine, &prep.meta)?;
                    }
                    argmax_labels(&scores, k)?
                } else {
                    // Streamed: the K × voxels scores never exist at once.
                    sliding_window_argmax(&x, &self.config.window, |t| self.forward(t, obs))?
                        .flatten_all()?
                        .to_vec1::<u8>()?
                };
                if self.config.preprocessing.pipeline == Pipeline::Monai {
                    // A bundle's Invertd(nearest_interp=True): nearest through each step.
                    Inverter::new(&trace, orig_shape, shape)?.labels(&labels)?
                } else {
                    let net =
                        Volume::new(labels, shape, prep.affine).ok_or_else(|| Error::Shape {
                            what: "label map".into(),
                            expected: format!("{} voxels", shape.iter().product::<usize>()),
                            got: shape.to_vec(),
                        })?;
                    labels_to_original_grid(&net, &orig_affine, orig_shape)?.into_data()
                }
            }
        };
        let mut labels =
            Volume::new(data, orig_shape, orig_affine).ok_or_else(|| Error::Shape {
                what: "label map on the input grid".into(),
                expected: format!("{} voxels", orig_shape.iter().product::<usize>()),
                got: orig_shape.to_vec(),
            })?;
        if !self.opts.cleanup.is_empty() {
            let r = self.opts.cleanup.apply(&mut labels);
            obs.log(&format!(
                "{id}: clean-up set {} voxels to background (subset {}, largest component {}, \
                 small components {})",
                r.subset + r.largest + r.small,
                r.subset,
                r.largest,
                r.small
            ));
        }
        let names = self.class_names();
        self.write_labels(job, &labels, &names, series.as_ref(), obs)?;
        if let (Some(path), Some(image)) = (&job.statistics, &original) {
            let stats = class_statistics(labels.data(), image.data(), labels.spacing(), &names);
            let text = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
                to_csv(&stats)
            } else {
                let mut t = serde_json::to_string_pretty(&to_json(&stats))
                    .map_err(|e| Error::Path(format!("{}: {e}", path.display())))?;
                t.push('\n');
                t
            };
            medseg_run::files::write_atomic(path, text.as_bytes())?;
        }
        if let (Some(path), Some(image)) = (&job.preview, &original) {
            crate::preview::write_preview(path, image, &labels, &names, &id)?;
        }
        obs.log(&format!(
            "{id}: {:?} → network grid {:?} → {} in {:.2} s",
            prep.meta.original_shape,
            shape,
            job.output.display(),
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Reads the input: a NIfTI file, or the chosen series of a DICOM input (with its
    /// [`SeriesInfo`] for a SEG).
    fn read(&self, job: &Job) -> Result<(Sample, Option<SeriesInfo>)> {
        match job.input_kind {
            InputKind::Nifti => Ok((read_sample(&job.input)?, None)),
            InputKind::Dicom => {
                let d = read_dicom(&job.input, self.opts.series.as_deref(), Limits::default())?;
                let mut sample = Sample::new(d.volume, None)?;
                sample.meta.image_path = Some(job.input.clone());
                Ok((sample, Some(d.info)))
            }
        }
    }

    /// Writes the label map as NIfTI or as a DICOM SEG of the source series.
    fn write_labels(
        &self,
        job: &Job,
        labels: &Volume<u8>,
        names: &[String],
        series: Option<&SeriesInfo>,
        obs: &dyn Observer,
    ) -> Result<()> {
        match (job.output_type, series) {
            (OutputType::Nifti, _) => Ok(write_volume(&job.output, labels)?),
            (OutputType::DicomSeg, Some(info)) => {
                let w = write_seg(&job.output, labels, names, info, &SegOptions::default())?;
                obs.log(&format!(
                    "DICOM SEG {}: {} segments, {} frames, referencing series {}",
                    job.output.display(),
                    w.segments.len(),
                    w.frames,
                    info.series_instance_uid
                ));
                Ok(())
            }
            (OutputType::DicomSeg, None) => Err(Error::Path(format!(
                "{}: a DICOM SEG output needs a DICOM input",
                job.input.display()
            ))),
        }
    }

    /// The network on a batch of windows.
    /// The network on a batch of windows. On the CPU the windows run one at a time and are
    /// concatenated: every kernel computes a batch item on its own (equal up to rounding, tested
    /// in medseg-models), and one window's activations need a quarter of the memory of four —
    /// fewer fresh pages to fault in and zero, which at fs48 with 4 windows per batch cost
    /// ≈ 15 % of a prediction's CPU time. On a GPU the batch runs whole.
    fn forward(&self, windows: &Tensor, obs: &dyn Observer) -> Result<Tensor> {
        let n = windows.dim(0)?;
        if !windows.device().is_cpu() || n == 1 {
            let out = self.model.forward_t(windows, false)?;
            obs.windows_done(n);
            return Ok(out);
        }
        let outs = (0..n)
            .map(|i| {
                let out = self.model.forward_t(&windows.narrow(0, i, 1)?, false)?;
                obs.windows_done(1);
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// Windows of the case on the preprocessed grid `shape` (× 8 with TTA).
    fn window_count(&self, shape: [usize; 3]) -> usize {
        let roi = self.config.window.roi;
        let padded: [usize; 3] = std::array::from_fn(|i| shape[i].max(roi[i]));
        let starts = window_starts(padded, roi, self.config.window.overlap);
        let windows: usize = starts.iter().map(Vec::len).product();
        windows * if self.opts.tta { 8 } else { 1 }
    }

    /// One log line when the input's orientation or spacing differs from the training grid.
    fn log_geometry(&self, id: &str, g: &InputGeometry, obs: &dyn Observer) {
        let pixdim = self.config.preprocessing.target_spacing();
        let spacing_differs = pixdim.is_some_and(|p| {
            g.spacing.iter().zip(&p).any(|(a, b)| (a - b).abs() > 1e-3 * b.max(1.0))
        });
        if g.axcodes != "RAS" || spacing_differs {
            let sp = g.spacing.map(|s| (s * 1000.0).round() / 1000.0);
            let target = match pixdim {
                Some(p) => format!("RAS at {p:?} mm"),
                None => "RAS".to_string(),
            };
            obs.log(&format!(
                "{id}: input orientation {}, spacing {sp:?} mm differs from training \
                 ({target}): resampled to the training grid for the network (safe: the \
                 validation transforms), prediction mapped back to the input grid",
                g.axcodes
            ));
        }
    }

    /// Softmax class scores `[K·D·H·W]` (channel-major) of the preprocessed volume `x`,
    /// averaged over the 8 flips with TTA. Each flip's blended D-slices stream
    /// ([`sliding_window_stream`]) into one accumulator, un-flipped on the way: peak memory ≈
    /// K × voxels f32 plus the stream's `roi[0]` slices.
    fn scores(&self, x: &Tensor, shape: [usize; 3], obs: &dyn Observer) -> Result<Vec<f32>> {
        let k = self.config.model.out_channels();
        let flips: Vec<Vec<usize>> = if self.opts.tta { flip_sets() } else { vec![Vec::new()] };
        let mut acc = vec![0f32; k * shape.iter().product::<usize>()];
        let mut probs: Vec<f32> = Vec::new();
        for f in &flips {
            let xf = if f.is_empty() { x.clone() } else { x.flip(f)? };
            // Spatial dims 2, 3, 4 of the tensor are axes 0, 1, 2 of each channel.
            let axes: Vec<usize> = f.iter().map(|d| d - 2).collect();
            sliding_window_stream(
                &xf,
                &self.config.window,
                |t| self.forward(t, obs),
                |s| {
                    let hw = shape[1] * shape[2];
                    if s.scores.len() != k * hw {
                        return Err(Error::Shape {
                            what: "model output channels".into(),
                            expected: format!("{k} channels (the config's out_channels)"),
                            got: vec![s.scores.len() / hw, shape[1], shape[2]],
                        });
                    }
                    if let Some(i) = s.scores.iter().position(|v| !v.is_finite()) {
                        let v = unflip(shape, &axes, [s.d, i % hw / shape[2], i % shape[2]]);
                        return Err(Error::NonFiniteOutput {
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
