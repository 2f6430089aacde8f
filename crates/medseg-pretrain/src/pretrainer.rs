//! The pretraining loop of research `main.py` (swin-reference §3.2–3.5): per step, a batch of
//! crops `x` → two views `(x1, k1) = rot_rand(x)`, `(x2, k2) = rot_rand(x)` → `aug_rand` of each →
//! `SSLHead` on both augmented views (one batch of `2N`) → rotation CE on `cat(k1, k2)`, NT-Xent on
//! the two contrastive embeddings, L1 of the reconstructions against `cat(x1, x2)` → clip →
//! AdamW / SGD with the research warm-up cosine schedule. Validation tracks the losses on fixed
//! validation crops with fixed pretext draws; `best` is the lowest validation reconstruction loss
//! (research `model_bestValRMSE.pt`).
//!
//! Determinism: weights from `(seed, variable name)`, batches from `(seed, epoch, index)`, the
//! pretext draws of step `t` from `(seed, t)`, parameters updated in name order: a resumed run
//! reproduces the uninterrupted loss sequence exactly.
//!
//! Run folder (created exclusively and locked through medseg-run): `config.toml`, `metrics.csv`,
//! `loss.png`, `recon/step_NNNNNN.png`, checkpoint generations `checkpoints/step-NNNNNN/`
//! (weights with SSLHead keys: `swinViT.*`, `rotation_head.*`, `contrastive_head.*`, `conv.*`;
//! `merge_order` metadata; optimiser state; manifest) with `checkpoints/last.safetensors` /
//! `last.state.safetensors` linked to the newest, and `checkpoints/best.safetensors`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle::{DType, Device, Tensor};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use medseg_data::{Batch, Loader, sample_rng};
use medseg_models::{SslHead, frozen_var_builder};
use medseg_run::checkpoint::{
    Fault, read_metadata, resume_point, safetensors_bytes, varmap_tensors,
};
use medseg_run::{RunLock, SeededVarMap, write_atomic};
use medseg_train::optim::Grads;

use crate::config::{PretrainConfig, PretrainPlan};
use crate::features::{foreground_cells, participation_ratio};
use crate::loss::{SslLoss, scalar, ssl_loss};
use crate::ops::{RngDraws, aug_rand, rot_rand};
use crate::optim::Optimizer;
use crate::output::{self, LogRow};
use crate::{Error, Result, data};

/// Stream tags mixed into the seed of the pretext draws.
const TRAIN_DRAWS: u64 = 0x5353_4c5f_5452_4149;
const VAL_DRAWS: u64 = 0x5353_4c5f_5641_4c5f;

/// Knobs of one [`Pretrainer::run`] call that are not part of the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Set (e.g. by Ctrl-C) to save a checkpoint and return after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Save and return after this step (tests of resume).
    pub stop_after: Option<u64>,
}

/// One validation pass ([`Pretrainer::validate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    /// Mean total loss.
    pub loss: f64,
    /// Mean reconstruction loss.
    pub recon: f64,
    /// Mean participation ratio of the encoder's hidden states inside the body, stages 0–4
    /// (NaN for a stage with fewer than 2 cells inside the body).
    pub feature_pr: [f64; 5],
    /// Wall time of the whole validation, seconds.
    pub seconds: f64,
    /// Of which the collapse check (the extra encoder pass and the participation ratios).
    pub feature_pr_seconds: f64,
}

/// Scaled intensity above which a voxel counts as body for the collapse check (air is 0 after
/// `ScaleIntensityRange(a_min, a_max → 0, 1, clip)`).
pub const BODY_THRESHOLD: f64 = 0.01;

/// What a [`Pretrainer::run`] call did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// `(total, rot, contrast, recon)` of the steps done by this call.
    pub losses: Vec<[f64; 4]>,
    /// True when the run stopped before `max_steps`.
    pub interrupted: bool,
    /// Steps done in total.
    pub step: u64,
}

/// Position of the run (saved with the optimiser state).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PretrainState {
    /// Steps done.
    pub step: u64,
    /// Current epoch of the training loader.
    pub epoch: u64,
    /// Batches of `epoch` consumed.
    pub batch_in_epoch: usize,
    /// Lowest validation reconstruction loss so far.
    pub best_val_recon: Option<f64>,
    /// Step of `best`.
    pub best_step: Option<u64>,
    /// Every logged step.
    pub history: Vec<LogRow>,
    /// Seconds of training before this process.
    pub elapsed_s: f64,
}

/// One evaluated pair of views.
#[derive(Debug, Clone)]
pub struct Views {
    /// The losses.
    pub loss: SslLoss,
    /// Rotated, un-augmented views `cat(x1, x2)` (`[2N, C, X, Y, Z]`, CPU f32).
    pub target: Vec<f32>,
    /// Augmented views fed to the network.
    pub input: Vec<f32>,
    /// Reconstructions (graph node).
    pub rec: Tensor,
}

/// The research step on a batch `x` (`[N, C, X, Y, Z]`) with pretext draws from `rng`.
pub fn ssl_step(
    model: &SslHead,
    x: &Tensor,
    cfg: &PretrainConfig,
    rng: &mut rand_chacha::ChaCha8Rng,
    train: bool,
    device: &Device,
) -> Result<Views> {
    let (n, c, dx, dy, dz) = x.dims5()?;
    let dims = [dx, dy, dz];
    let flat = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut draws = RngDraws(rng);
    let (x1, k1) = rot_rand(&flat, n, c, dims, &mut draws)?;
    let (x2, k2) = rot_rand(&flat, n, c, dims, &mut draws)?;
    let x1a = aug_rand(&x1, n, c, dims, &cfg.ssl.cutout, &mut draws)?;
    let x2a = aug_rand(&x2, n, c, dims, &cfg.ssl.cutout, &mut draws)?;
    let input = [x1a, x2a].concat();
    let target = [x1, x2].concat();
    let shape = (2 * n, c, dx, dy, dz);
    let inp = Tensor::from_slice(&input, shape, device)?;
    let tgt = Tensor::from_slice(&target, shape, device)?;
    // Both views in one batch: SSLHead has no batch statistics, so this equals two calls.
    let (rot, con, rec) = model.forward_t(&inp, train)?;
    let labels: Vec<u32> = k1.into_iter().chain(k2).collect();
    let (z1, z2) = (con.narrow(0, 0, n)?, con.narrow(0, n, n)?);
    let loss =
        ssl_loss(&rot, &labels, &z1, &z2, &rec, &tgt, cfg.ssl.temperature, &cfg.ssl.weights)?;
    Ok(Views { loss, target, input, rec })
}

/// The state of a pretraining run.
pub struct Pretrainer {
    plan: PretrainPlan,
    device: Device,
    varmap: VarMap,
    model: SslHead,
    opt: Optimizer,
    state: PretrainState,
    train_loader: Loader,
    val_loader: Option<Loader>,
    epoch_iter: Option<medseg_data::loader::EpochIter>,
    /// The run folder's lock, held from construction until [`Pretrainer::run`] returns.
    lock: Option<RunLock>,
    /// A fault injected into checkpoint saves (fault tests only).
    checkpoint_fault: Option<Fault>,
}

impl std::fmt::Debug for Pretrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pretrainer")
            .field("run_dir", &self.plan.run_dir)
            .field("step", &self.state.step)
            .finish()
    }
}

fn merge_order_name(cfg: &PretrainConfig) -> &'static str {
    match cfg.model.merge_order {
        medseg_models::MergeOrder::Legacy => "legacy",
        medseg_models::MergeOrder::Fixed => "fixed",
        medseg_models::MergeOrder::V2 => "v2",
    }
}

impl Pretrainer {
    /// Starts a new run: creates the run folder, writes `config.toml`, builds model and optimiser.
    pub fn new(mut plan: PretrainPlan, device: Device) -> Result<Pretrainer> {
        plan.run_dir = medseg_run::create_fresh(&plan.run_dir)?;
        let lock = take_lock(&plan.run_dir)?;
        let text = medseg_run::config::resolved_config_text(
            "pretraining run",
            &plan.run_dir,
            &plan.config.to_toml()?,
        );
        write_atomic(&plan.run_dir.join("config.toml"), text.as_bytes())?;
        let mut p = Pretrainer::build(plan, device, PretrainState::default())?;
        p.lock = Some(lock);
        Ok(p)
    }

    /// Continues the run in `run_dir` from `checkpoints/last.*` with its saved `config.toml`.
    pub fn resume(run_dir: &Path, device: Device) -> Result<Pretrainer> {
        let cfg_path = run_dir.join("config.toml");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let mut plan = PretrainConfig::from_toml(&text, &cfg_path)?.resolve()?;
        plan.run_dir = run_dir.to_path_buf();
        let lock = take_lock(run_dir)?;
        let point = resume_point(run_dir)?;
        let (wpath, spath) = (point.weights, point.state);
        let bad = |path: &Path, reason: String| medseg_run::Error::checkpoint(path, reason);
        let smeta = read_metadata(&spath)?;
        let json = smeta
            .get("medseg_pretrain_state")
            .ok_or_else(|| bad(&spath, "no medseg_pretrain_state metadata".into()))?;
        let state: PretrainState =
            serde_json::from_str(json).map_err(|e| bad(&spath, e.to_string()))?;
        let wstep = medseg_run::checkpoint::read_step(&wpath)?;
        if wstep != Some(state.step) {
            let why = format!("weights are from step {wstep:?}, state from step {}", state.step);
            return Err(bad(&wpath, why).into());
        }
        let mut t = Pretrainer::build(plan, device, state)?;
        t.lock = Some(lock);
        medseg_run::checkpoint::load_weights(&t.varmap, &wpath)?;
        let moments = medseg_run::checkpoint::load_tensors(&spath, &t.device)?;
        let step = t.state.step;
        t.opt.load_state(&moments, step, &spath)?;
        Ok(t)
    }

    fn build(plan: PretrainPlan, device: Device, state: PretrainState) -> Result<Pretrainer> {
        let varmap = VarMap::new();
        let vb = SeededVarMap::var_builder(&varmap, plan.config.seed, DType::F32, &device);
        let model = SslHead::new(&plan.config.model, vb)?;
        let opt = Optimizer::new(&varmap, &plan.config.optim)?;
        let list = data::gather(&plan)?;
        let (train_loader, val_loader) = data::loaders(&plan, &list)?;
        Ok(Pretrainer {
            plan,
            device,
            varmap,
            model,
            opt,
            state,
            train_loader,
            val_loader,
            epoch_iter: None,
            lock: None,
            checkpoint_fault: None,
        })
    }

    /// Injects `fault` into every later checkpoint save (the fault tests; never real runs).
    pub fn set_checkpoint_fault(&mut self, fault: Option<Fault>) {
        self.checkpoint_fault = fault;
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.plan.run_dir
    }

    /// The variables of the SSL head.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Position and history.
    pub fn state(&self) -> &PretrainState {
        &self.state
    }

    fn next_batch(&mut self) -> Result<Batch> {
        Ok(self.train_loader.next_resumable(
            &mut self.epoch_iter,
            &mut self.state.epoch,
            &mut self.state.batch_in_epoch,
        )?)
    }

    /// One optimiser step; returns the row to log (without validation).
    pub fn train_step(&mut self) -> Result<LogRow> {
        let cfg = self.plan.config.clone();
        let lr = cfg.schedule.lr(cfg.optim.lr, self.state.step, cfg.train.max_steps);
        let batch = self.next_batch()?;
        let mut rng = sample_rng(cfg.seed ^ TRAIN_DRAWS, 0, self.state.step);
        let v = ssl_step(&self.model, &batch.image, &cfg, &mut rng, true, &self.device)?;
        let vals = [&v.loss.total, &v.loss.rot, &v.loss.contrast, &v.loss.recon]
            .map(|t| scalar(t).unwrap_or(f64::NAN));
        if vals.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFiniteLoss {
                value: vals[0],
                step: self.state.step + 1,
                rot: vals[1],
                contrast: vals[2],
                recon: vals[3],
            });
        }
        let g = v.loss.total.backward()?;
        let vars = self.opt.vars();
        let mut grads = Grads::new();
        grads.accumulate(&g, vars.iter(), 1.0)?;
        let clip = cfg.train.grad_clip;
        let norm = if clip > 0.0 { grads.clip_norm(clip)? } else { grads.global_norm()? };
        self.opt.set_learning_rate(lr);
        self.opt.step(&grads)?;
        self.state.step += 1;
        Ok(LogRow {
            step: self.state.step,
            epoch: self.state.epoch,
            loss: vals[0],
            rot: vals[1],
            contrast: vals[2],
            recon: vals[3],
            lr,
            grad_norm: norm,
            elapsed_s: 0.0,
            val_loss: None,
            val_recon: None,
            val_feature_pr: None,
        })
    }

    /// Mean (total, reconstruction) loss over the validation crops with fixed pretext draws, and
    /// the mean [`participation_ratio`] of the encoder's five normalised hidden states on the
    /// clean crops, over the stage cells inside the body ([`foreground_cells`] above
    /// [`BODY_THRESHOLD`]); writes the reconstruction panels of the first crop to `png` when given.
    /// `None` without validation data.
    pub fn validate(&self, png: Option<&Path>) -> Result<Option<Validation>> {
        let Some(val) = &self.val_loader else { return Ok(None) };
        let start = Instant::now();
        let mut pr_time = 0f64;
        let cfg = &self.plan.config;
        let frozen =
            SslHead::new(&cfg.model, frozen_var_builder(&self.varmap).map_err(candle_err)?)?;
        let (mut tot, mut rec, mut n) = (0f64, 0f64, 0usize);
        let (mut pr, mut pr_n) = ([0f64; 5], [0usize; 5]);
        for (i, batch) in val.epoch(0).enumerate() {
            if cfg.train.val_batches > 0 && i >= cfg.train.val_batches {
                break;
            }
            let batch = batch?;
            let mut rng = sample_rng(cfg.seed ^ VAL_DRAWS, 0, i as u64);
            let v = ssl_step(&frozen, &batch.image, cfg, &mut rng, false, &self.device)?;
            tot += scalar(&v.loss.total)?;
            rec += scalar(&v.loss.recon)?;
            let t = Instant::now();
            let hidden = frozen.encoder().forward_t(&batch.image, true, false)?;
            let size = batch.image.dim(2)?;
            for ((acc, cnt), h) in pr.iter_mut().zip(pr_n.iter_mut()).zip(&hidden) {
                let body = foreground_cells(&batch.image, size / h.dim(2)?, BODY_THRESHOLD)?;
                let p = participation_ratio(h, Some(&body))?;
                if p.is_finite() {
                    *acc += p;
                    *cnt += 1;
                }
            }
            pr_time += t.elapsed().as_secs_f64();
            n += 1;
            if i == 0
                && let Some(p) = png
            {
                let (_, _, dx, dy, dz) = batch.image.dims5()?;
                let per = dx * dy * dz;
                let r = v.rec.narrow(0, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
                output::recon_png(p, &v.target[..per], &v.input[..per], &r[..per], [dx, dy, dz])?;
            }
        }
        let k = n as f64;
        Ok((n > 0).then(|| Validation {
            loss: tot / k,
            recon: rec / k,
            feature_pr: std::array::from_fn(|s| {
                if pr_n[s] > 0 { pr[s] / pr_n[s] as f64 } else { f64::NAN }
            }),
            seconds: start.elapsed().as_secs_f64(),
            feature_pr_seconds: pr_time,
        }))
    }

    fn weights_bytes(&self) -> Result<Vec<u8>> {
        let meta = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("medseg_step".to_string(), self.state.step.to_string()),
            ("merge_order".to_string(), merge_order_name(&self.plan.config).to_string()),
            ("medseg_model".to_string(), "ssl_head".to_string()),
        ]);
        Ok(safetensors_bytes(&varmap_tensors(&self.varmap)?, meta)?)
    }

    /// Saves weights, optimiser state and run position as one checkpoint generation.
    fn save_last(&self) -> Result<()> {
        let dir = self.plan.run_dir.join("checkpoints");
        let json = serde_json::to_string(&self.state)
            .map_err(|e| medseg_run::Error::checkpoint(&dir, e.to_string()))?;
        let meta = HashMap::from([
            ("medseg_step".to_string(), self.state.step.to_string()),
            ("medseg_pretrain_state".to_string(), json),
        ]);
        let state = safetensors_bytes(&self.opt.state_tensors(), meta)?;
        let weights = self.weights_bytes()?;
        let fault = self.checkpoint_fault;
        medseg_run::checkpoint::save(&dir, self.state.step, &weights, &state, fault)?;
        Ok(())
    }

    fn write_outputs(&self) -> Result<()> {
        let d = &self.plan.run_dir;
        write_atomic(&d.join("metrics.csv"), output::metrics_csv(&self.state.history).as_bytes())?;
        output::loss_plot(&d.join("loss.png"), &self.state.history)?;
        Ok(())
    }

    /// Pretrains until `train.max_steps` or a stop request, validating, checkpointing and
    /// writing the outputs. Holds the run folder's lock until it returns.
    pub fn run(&mut self, opts: &RunOptions) -> Result<RunOutcome> {
        if self.lock.is_none() {
            self.lock = Some(take_lock(&self.plan.run_dir)?);
        }
        let out = self.run_locked(opts);
        self.lock = None;
        out
    }

    fn run_locked(&mut self, opts: &RunOptions) -> Result<RunOutcome> {
        let cfg = self.plan.config.clone();
        let max = cfg.train.max_steps;
        let start = Instant::now();
        let elapsed0 = self.state.elapsed_s;
        let pb = if cfg.output.progress { ProgressBar::new(max) } else { ProgressBar::hidden() };
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({per_sec}, ETA {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_position(self.state.step);
        let first = self.state.step;
        let mut losses = Vec::new();
        let mut interrupted = false;
        while self.state.step < max {
            let mut row = self.train_step()?;
            let step = row.step;
            row.elapsed_s = elapsed0 + start.elapsed().as_secs_f64();
            losses.push([row.loss, row.rot, row.contrast, row.recon]);
            pb.set_position(step);
            pb.set_message(format!(
                "loss {:.4} (rot {:.3} con {:.3} rec {:.4}) lr {:.2e}",
                row.loss, row.rot, row.contrast, row.recon, row.lr
            ));
            if pb.is_hidden() && cfg.output.progress && step.is_multiple_of((max / 20).max(1)) {
                let el = start.elapsed().as_secs_f64();
                let done = (step - first).max(1) as f64;
                eprintln!(
                    "step {step}/{max} loss {:.4} (rot {:.3} con {:.3} rec {:.4}) lr {:.2e} {:.2} s/step",
                    row.loss,
                    row.rot,
                    row.contrast,
                    row.recon,
                    row.lr,
                    el / done
                );
            }
            let validate_now = step.is_multiple_of(cfg.train.val_every) || step == max;
            if validate_now {
                let png = cfg
                    .output
                    .recon_png
                    .then(|| self.plan.run_dir.join(format!("recon/step_{step:06}.png")));
                if let Some(v) = pb.suspend(|| self.validate(png.as_deref()))? {
                    let (vl, vr) = (v.loss, v.recon);
                    row.val_loss = Some(vl);
                    row.val_recon = Some(vr);
                    row.val_feature_pr = Some(v.feature_pr);
                    let pr = v
                        .feature_pr
                        .map(|p| if p.is_finite() { format!("{p:.1}") } else { "–".into() })
                        .join(" / ");
                    log(
                        &pb,
                        format!(
                            "step {step}: validation loss {vl:.4}, reconstruction {vr:.4}, \
                             feature participation ratio inside the body (stages 0–4) {pr} ({:.1} s, of which \
                             the collapse check {:.1} s)",
                            v.seconds, v.feature_pr_seconds
                        ),
                    );
                    if self.state.best_val_recon.is_none_or(|b| vr < b) {
                        self.state.best_val_recon = Some(vr);
                        self.state.best_step = Some(step);
                        let ckpt = self.plan.run_dir.join("checkpoints");
                        medseg_run::checkpoint::save_best(&ckpt, &self.weights_bytes()?)?;
                    }
                }
            }
            self.state.history.push(row);
            self.state.elapsed_s = elapsed0 + start.elapsed().as_secs_f64();
            let stop = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
                || opts.stop_after.is_some_and(|k| step >= k);
            if stop
                || validate_now
                || step.is_multiple_of(cfg.train.checkpoint_every)
                || step == max
            {
                self.save_last()?;
                self.write_outputs()?;
            }
            if stop && step < max {
                interrupted = true;
                break;
            }
        }
        pb.finish_and_clear();
        Ok(RunOutcome {
            run_dir: self.plan.run_dir.clone(),
            losses,
            interrupted,
            step: self.state.step,
        })
    }
}

fn candle_err(e: medseg_models::loader::Error) -> Error {
    Error::Candle(candle::Error::Msg(e.to_string()))
}

/// Takes the run folder's lock, reporting a stale lock taken over and temporaries removed.
fn take_lock(dir: &Path) -> Result<RunLock> {
    let lock = RunLock::acquire(dir)?;
    if let Some(pid) = lock.stale_pid() {
        eprintln!(
            "{}: took over the lock of process {pid}, which is no longer running",
            dir.display()
        );
    }
    if !lock.cleaned().is_empty() {
        let n = lock.cleaned().len();
        eprintln!("{}: removed {n} temporary file(s) left by an interrupted run", dir.display());
    }
    Ok(lock)
}

/// A line above the progress bar, or on stderr when it is hidden.
fn log(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() { eprintln!("{msg}") } else { pb.println(msg) }
}
