//! The predict API: a [`Predictor`] holds a loaded model and turns one image file into a label map
//! (and optionally per-class probabilities) on the input's exact grid.
//!
//! Per case: read → the run's validation transforms ([`crate::preprocess`]) → sliding window
//! ([`crate::sliding_window`], streamed) → softmax (averaged over the 8 flips with TTA,
//! [`crate::tta`]) → argmax ([`crate::postprocess`]) → back to the input's grid
//! ([`crate::resample`]). Every file is written atomically; probabilities before the label map.
use std::time::Instant;

use candle::{Device, Tensor};
use medseg_data::dataset::case_id;
use medseg_data::transforms::Compose;
use medseg_data::write_prediction;
use medseg_models::MergeOrder;
use rayon::prelude::*;

use crate::config::InferenceConfig;
use crate::jobs::Job;
use crate::model::SegModel;
use crate::postprocess::{argmax_labels, softmax_channels};
use crate::preprocess::{InputGeometry, prepare};
use crate::resample::write_probabilities;
use crate::sliding_window::{sliding_window_argmax, sliding_window_stream, window_starts};
use crate::source::LoadedModel;
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
}

/// A loaded model ready to predict case after case.
pub struct Predictor {
    config: InferenceConfig,
    model: Box<dyn SegModel>,
    transforms: Compose,
    device: Device,
    opts: PredictOptions,
}

impl Predictor {
    /// Wraps a loaded model; `device` must be the one it was loaded on.
    pub fn new(loaded: LoadedModel, device: Device, opts: PredictOptions) -> Self {
        let transforms = loaded.config.preprocessing.transforms();
        Predictor { config: loaded.config, model: loaded.model, transforms, device, opts }
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
            "sliding window roi {:?}, overlap {}, {:?} blending, sw_batch_size {}{}",
            sw.roi,
            sw.overlap,
            sw.mode,
            sw.sw_batch_size,
            if self.opts.tta { "; TTA over 8 flips" } else { "" }
        )
    }

    /// Predicts one case and writes its outputs (probabilities first, the label map last).
    pub fn predict(&self, job: &Job, obs: &dyn Observer) -> Result<()> {
        let start = Instant::now();
        let id = case_id(&job.input);
        let (prep, geometry) = prepare(&job.input, &self.transforms)?;
        for w in &prep.meta.warnings {
            obs.log(&format!("warning: {}: {w}", job.input.display()));
        }
        self.log_geometry(&id, &geometry, obs);
        let shape = prep.shape;
        // [X·Y·Z] -> [1, 1, D, H, W]
        let x = Tensor::from_vec(prep.data, (1, 1, shape[0], shape[1], shape[2]), &self.device)?;
        obs.windows_start(self.window_count(shape));
        let labels = if self.opts.tta || job.probabilities.is_some() {
            let k = self.config.model.out_channels();
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
        write_prediction(&job.output, labels, shape, prep.affine, &prep.meta)?;
        obs.log(&format!(
            "{id}: {:?} → network grid {:?} → {} in {:.2} s",
            prep.meta.original_shape,
            shape,
            job.output.display(),
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// The network on a batch of windows.
    fn forward(&self, windows: &Tensor, obs: &dyn Observer) -> Result<Tensor> {
        let out = self.model.forward_t(windows, false)?;
        obs.windows_done(windows.dim(0)?);
        Ok(out)
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
