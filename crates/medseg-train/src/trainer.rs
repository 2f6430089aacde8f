//! The training loop: patches from the medseg-data loader, DiceCE, AdamW with the warm-up +
//! cosine schedule, clipping and accumulation, validation by sliding-window inference scored
//! with medseg-metrics, checkpoints, resume, NaN detection and the run outputs.
//!
//! Determinism: weights are initialised from `(seed, variable name)`; batches depend only on
//! `(seed, epoch, index)`; parameters update in name order. Resuming from a checkpoint therefore
//! reproduces the uninterrupted run's losses exactly on the same machine and thread count.
//!
//! Precision (`precision = "bf16"`, docs/cuda.md §4): each step builds the model from bf16 casts
//! of the f32 variables (`precision::precision_var_builder`), casts the logits to f32 before
//! the loss; AdamW, the checkpoints and the loss stay f32.
//!
//! Data parallel (docs/cuda.md §5): with a [`GradientReducer`] ([`Trainer::new_in_world`]) each
//! rank draws its shard of every epoch's order (`distributed::shard`, equal lengths), and after
//! the backward passes the gradients, the loss and the stop flag are averaged over the ranks in
//! one all-reduce before clipping and the AdamW step, so every rank applies the same update. Only
//! rank 0 writes (`config.toml`, checkpoints, metrics, plots) and validates.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use medseg_data::{Batch, CacheMode, Datalist, Loader, LoaderConfig, NiftiDataset, phantom};
use medseg_metrics::{MetricsConfig, Report, SegmentationMetric};
use medseg_models::loader::ENCODER_PREFIX;
use medseg_run::checkpoint::Fault;
use medseg_run::{RunLock, SeededVarMap};

use crate::checkpoint::{self, LogRow, TrainState};
use crate::config::{CacheKind, TrainConfig, TrainPlan};
use crate::distributed::{GradientReducer, World, all_reduce_mean, shard};
use crate::model::SegModel;
use crate::optim::{AdamW, Grads};
use crate::precision::{Precision, precision_var_builder};
use crate::schedule::ScheduleUnit;
use crate::sliding_window::sliding_window_argmax;
use crate::{Error, Result, loss, output};

/// Knobs of one [`Trainer::run`] call that are not part of the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Set (for example by a Ctrl-C handler) to save a checkpoint and return after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Save and return after this optimiser step (tests of resume).
    pub stop_after: Option<u64>,
}

/// What a [`Trainer::run`] call did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Losses of the steps done by this call, in order.
    pub losses: Vec<f64>,
    /// True when the run stopped before `max_steps` (stop flag or `stop_after`).
    pub interrupted: bool,
    /// The final validation report (complete runs only).
    pub report: Option<Report>,
    /// Optimiser steps done in total.
    pub step: u64,
}

/// The state of a training run.
pub struct Trainer {
    plan: TrainPlan,
    device: Device,
    varmap: VarMap,
    model: Box<dyn SegModel>,
    opt: AdamW,
    state: TrainState,
    train_loader: Loader,
    val_loader: Loader,
    class_names: Vec<String>,
    epoch_iter: Option<medseg_data::loader::EpochIter>,
    world: World,
    reducer: Option<Box<dyn GradientReducer>>,
    /// The run folder's lock, held by the writing rank from construction until [`Trainer::run`]
    /// returns.
    lock: Option<RunLock>,
    /// A fault injected into checkpoint saves (the fault tests; `None` in real runs).
    checkpoint_fault: Option<Fault>,
}

/// What one optimiser step computed.
struct StepResult {
    /// Mean loss over the micro-batches (and over the ranks).
    loss: f64,
    lr: f64,
    /// Gradient norm before clipping.
    grad_norm: f64,
    /// Some rank's stop flag was raised (every rank sees the same value).
    stop: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run_dir", &self.plan.run_dir)
            .field("state", &self.state.step)
            .field("world", &self.world)
            .finish()
    }
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn device_from_str(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(i) => Ok(Device::new_cuda(i)?),
            None => Err(Error::Config(format!("device must be cpu, cuda or cuda:N, got {s:?}"))),
        },
    }
}

/// The pre-flight data check, run before step 1 and by `medseg check-data`: `model.out_channels`
/// against the datalist's `labels`, then every training and validation item (headers, label grid,
/// label values `< out_channels`, the `data.roi` crop against the size limits; see
/// `medseg_data::check`), with one error listing every bad item. The label passes are cached in
/// `.medseg-check-cache.json` beside the datalist.
pub fn check_data(plan: &TrainPlan, dl: &Datalist) -> Result<medseg_data::CheckReport> {
    let cfg = &plan.config;
    let nc = cfg.model.out_channels();
    if let Some(n) = dl.num_classes()
        && n as usize != nc
    {
        return Err(Error::Config(format!(
            "model.out_channels ({nc}) differs from the {n} labels of {}",
            plan.datalist.display()
        )));
    }
    let mut opts = medseg_data::CheckOptions::new(Some(nc as u32));
    opts.roi = Some(cfg.data.roi);
    opts.cache = Some(medseg_data::check::default_cache_path(&plan.datalist));
    Ok(medseg_data::check_datalist(&plan.datalist, dl, &opts)?)
}

fn loaders(
    plan: &TrainPlan,
    run_dir: &Path,
    world: World,
) -> Result<(Loader, Loader, Vec<String>)> {
    let cfg = &plan.config;
    if !plan.datalist.exists() {
        if cfg.data.generate_phantom {
            let dir = plan.datalist.parent().unwrap_or(Path::new("."));
            let written = phantom::generate(dir, &phantom::PhantomConfig::default())?;
            if written != plan.datalist {
                std::fs::rename(&written, &plan.datalist)
                    .map_err(|e| Error::io(&plan.datalist, e))?;
            }
        } else {
            return Err(Error::Config(format!(
                "data.datalist {} does not exist (set data.generate_phantom = true for the phantom)",
                plan.datalist.display()
            )));
        }
    }
    let dl = Datalist::from_json(&plan.datalist)?;
    let nc = cfg.model.out_channels();
    let report = check_data(plan, &dl)?;
    if world.is_writer() {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    if dl.training.is_empty() || dl.validation.is_empty() {
        return Err(Error::Config(format!(
            "{} needs training and validation items (has {} / {})",
            plan.datalist.display(),
            dl.training.len(),
            dl.validation.len()
        )));
    }
    let names: Vec<String> = (0..nc)
        .map(|c| dl.labels.get(&(c as u32)).cloned().unwrap_or(format!("class_{c}")))
        .collect();
    let (train_t, val_t) = (cfg.data.train_transforms(), cfg.data.val_transforms());
    let cache = |sub: &str| match cfg.data.cache {
        CacheKind::None => CacheMode::None,
        CacheKind::Memory => CacheMode::Memory,
        CacheKind::Disk => CacheMode::Disk(run_dir.join("cache").join(sub)),
    };
    let mut tl = LoaderConfig::train(cfg.data.batch_size, cfg.seed);
    tl.num_workers = cfg.data.num_workers;
    tl.cache = cache("train");
    let mut vl = LoaderConfig::val();
    vl.num_workers = cfg.data.num_workers.min(1);
    vl.cache = cache("val");
    let mut train = Loader::new(
        Arc::new(NiftiDataset::new(dl.training.clone(), Some(nc as u32))),
        train_t,
        tl,
    )?;
    if world.world_size > 1 {
        // Rank r takes items r, r + w, … of each epoch's order, wrap-padded to equal lengths.
        train = train.with_order_map(Arc::new(move |order: &[usize]| shard(order, &world)));
    }
    let val = Loader::new(
        Arc::new(NiftiDataset::new(dl.validation.clone(), Some(nc as u32))),
        val_t,
        vl,
    )?;
    Ok((train, val, names))
}

impl Trainer {
    /// Starts a new run: creates the run folder, writes `config.toml`, builds model and optimiser.
    pub fn new(plan: TrainPlan, device: Device) -> Result<Trainer> {
        Trainer::new_in_world(plan, device, None)
    }

    /// [`Trainer::new`] as one rank of a data-parallel world connected by `reducer` (`None`: a
    /// single process). Every rank passes the same plan, including the run folder; only rank 0
    /// writes into it.
    pub fn new_in_world(
        plan: TrainPlan,
        device: Device,
        reducer: Option<Box<dyn GradientReducer>>,
    ) -> Result<Trainer> {
        let world = reducer.as_ref().map_or(World::SINGLE, |r| r.world());
        let mut plan = plan;
        if let Some(p) = plan.config.train.init_from.as_mut()
            && p.is_relative()
        {
            *p = std::env::current_dir().map_err(|e| Error::io(".", e))?.join(&*p);
        }
        let mut lock = None;
        if world.is_writer() {
            if plan.fresh_run_dir {
                plan.run_dir = medseg_run::create_fresh(&plan.run_dir)?;
            } else {
                std::fs::create_dir_all(&plan.run_dir).map_err(|e| Error::io(&plan.run_dir, e))?;
            }
            lock = Some(take_lock(&plan.run_dir)?);
            let text = medseg_run::config::resolved_config_text(
                "run",
                &plan.run_dir,
                &plan.config.to_toml()?,
            );
            checkpoint::write_atomic(&plan.run_dir.join("config.toml"), text.as_bytes())?;
        }
        let mut t = Trainer::build(plan, device, TrainState::new(), reducer)?;
        t.lock = lock;
        t.init_from_pretrained()?;
        Ok(t)
    }

    /// Continues the run in `run_dir` from `checkpoints/last.*` with its saved `config.toml`.
    pub fn resume(run_dir: &Path, device: Device) -> Result<Trainer> {
        Trainer::resume_in_world(run_dir, device, None)
    }

    /// [`Trainer::resume`] as one rank of a data-parallel world (every rank reads rank 0's
    /// checkpoint from the shared run folder).
    pub fn resume_in_world(
        run_dir: &Path,
        device: Device,
        reducer: Option<Box<dyn GradientReducer>>,
    ) -> Result<Trainer> {
        let cfg_path = run_dir.join("config.toml");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg = TrainConfig::from_toml(&text, &cfg_path)?;
        let mut plan = cfg.resolve()?;
        plan.run_dir = run_dir.to_path_buf();
        plan.fresh_run_dir = false;
        let writer = reducer.as_ref().is_none_or(|r| r.world().is_writer());
        // The writer holds the folder before reading it (this also clears a killed run's
        // temporaries).
        let lock = if writer { Some(take_lock(run_dir)?) } else { None };
        let point = medseg_run::checkpoint::resume_point(run_dir)?;
        let (wpath, spath) = (point.weights, point.state);
        let (moments, state) = checkpoint::load_state(&spath, &device)?;
        let wstep = checkpoint::read_step(&wpath)?;
        if wstep != Some(state.step) {
            return Err(Error::Checkpoint {
                path: wpath,
                reason: format!("weights are from step {wstep:?}, state from step {}", state.step),
            });
        }
        let mut t = Trainer::build(plan, device, state, reducer)?;
        t.lock = lock;
        checkpoint::load_weights(&t.varmap, &wpath)?;
        let step = t.state.step;
        t.opt.load_state(&moments, step, &spath)?;
        Ok(t)
    }

    fn build(
        plan: TrainPlan,
        device: Device,
        state: TrainState,
        reducer: Option<Box<dyn GradientReducer>>,
    ) -> Result<Trainer> {
        let world = reducer.as_ref().map_or(World::SINGLE, |r| r.world());
        let varmap = VarMap::new();
        let vb = SeededVarMap::var_builder(&varmap, plan.config.seed, DType::F32, &device);
        let model = plan.config.model.build(vb)?;
        let opt = AdamW::from_varmap(&varmap, plan.config.optim.clone())?;
        let scale = plan.config.optim.encoder_lr_scale;
        if scale != 1.0 && opt.vars().all(|(n, _)| !n.starts_with(ENCODER_PREFIX)) {
            return Err(Error::Config(format!(
                "optim.encoder_lr_scale = {scale} but the model has no `{ENCODER_PREFIX}*` \
                 parameters (only Swin UNETR and Swin SMT have an encoder to scale); remove the \
                 setting"
            )));
        }
        let (train_loader, val_loader, class_names) = loaders(&plan, &plan.run_dir, world)?;
        Ok(Trainer {
            plan,
            device,
            varmap,
            model,
            opt,
            state,
            train_loader,
            val_loader,
            class_names,
            epoch_iter: None,
            world,
            reducer,
            lock: None,
            checkpoint_fault: None,
        })
    }

    /// Injects `fault` into every later checkpoint save: the fault tests cut saves this way (the
    /// `train` binary sets it from a test-only environment variable). Never used by real runs.
    pub fn set_checkpoint_fault(&mut self, fault: Option<Fault>) {
        self.checkpoint_fault = fault;
    }

    /// This process's place in the data-parallel world ([`World::SINGLE`] unless built with a
    /// reducer).
    pub fn world(&self) -> World {
        self.world
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.plan.run_dir
    }

    /// The variables (weights) of the model.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The model.
    pub fn model(&self) -> &dyn SegModel {
        self.model.as_ref()
    }

    /// Position and history of the run.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Class names from the datalist (index = label value).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn next_batch(&mut self) -> Result<Batch> {
        Ok(self.train_loader.next_resumable(
            &mut self.epoch_iter,
            &mut self.state.epoch,
            &mut self.state.batch_in_epoch,
        )?)
    }

    /// One optimiser step over `accumulate` micro-batches; returns (loss, lr, grad norm).
    pub fn train_step(&mut self) -> Result<(f64, f64, f64)> {
        let r = self.step(None)?;
        Ok((r.loss, r.lr, r.grad_norm))
    }

    /// The model the forward passes use: for bf16 a fresh build from differentiable bf16 casts of
    /// the f32 masters (gradients land on the masters), else `None` (use `self.model`).
    fn cast_model(&self) -> Result<Option<Box<dyn SegModel>>> {
        match self.plan.config.precision {
            Precision::F32 => Ok(None),
            p @ Precision::Bf16 => {
                let vb = precision_var_builder(&self.varmap, p, &self.device)?;
                Ok(Some(self.plan.config.model.build(vb)?))
            }
        }
    }

    /// One optimiser step; `stop` is read after the backward passes and, in a world of several
    /// ranks, or-ed over every rank so that all of them stop after the same step.
    fn step(&mut self, stop: Option<&AtomicBool>) -> Result<StepResult> {
        let cfg = &self.plan.config;
        let acc = cfg.train.accumulate;
        let (kind, lcfg) = (cfg.loss.kind, cfg.loss.dice_ce());
        let clip = cfg.train.grad_clip;
        let dtype = cfg.precision.dtype();
        let t = match cfg.schedule.unit {
            ScheduleUnit::Step => self.state.step,
            ScheduleUnit::Epoch => self.state.epoch,
        };
        let lr = cfg.schedule.lr(cfg.optim.lr, t);
        let cast_model = self.cast_model()?;
        let single = self.reducer.is_none();
        let mut grads = Grads::new();
        let mut total = 0f64;
        let mut first_bad: Option<(f32, usize)> = None;
        for micro in 0..acc {
            let batch = self.next_batch()?;
            let x = batch.image.to_device(&self.device)?.to_dtype(dtype)?;
            let y = batch
                .label
                .ok_or_else(|| Error::Config("training batch without labels".into()))?
                .to_device(&self.device)?;
            let model: &dyn SegModel = match &cast_model {
                Some(m) => m.as_ref(),
                None => self.model.as_ref(),
            };
            // The loss is always computed in f32.
            let logits = model.forward_t(&x, true)?.to_dtype(DType::F32)?;
            let l = loss::segmentation_loss(kind, &logits, &y, &lcfg)?;
            let v = l.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !v.is_finite() {
                let e = Error::NonFiniteLoss {
                    value: v,
                    step: self.state.step + 1,
                    epoch: self.state.epoch,
                    micro,
                };
                if single {
                    return Err(e);
                }
                // The other ranks wait in the all-reduce: report after it, on every rank.
                first_bad.get_or_insert((v, micro));
            }
            total += f64::from(v);
            let g = l.backward()?;
            grads.accumulate(&g, self.opt.vars().map(|(_, v)| v), 1.0 / acc as f64)?;
        }
        let mut mean_loss = total / acc as f64;
        let mut stop_any = stop.is_some_and(|s| s.load(Ordering::SeqCst));
        if let Some(reducer) = self.reducer.as_mut() {
            // Parameter-name order: the same buffer layout on every rank.
            let vars: Vec<Var> = self
                .opt
                .vars()
                .filter(|(_, v)| grads.get(v).is_some())
                .map(|(_, v)| v.clone())
                .collect();
            let local: Vec<Tensor> = vars.iter().filter_map(|v| grads.get(v).cloned()).collect();
            let extra = [mean_loss as f32, f32::from(u8::from(stop_any))];
            let (avg, extra) = all_reduce_mean(reducer.as_mut(), &local, &extra)?;
            grads = Grads::new();
            for (v, g) in vars.iter().zip(avg) {
                grads.insert(v, g);
            }
            mean_loss = f64::from(extra[0]);
            stop_any = extra[1] > 0.0;
            if !mean_loss.is_finite() {
                let (value, micro) = first_bad.unwrap_or((extra[0], acc - 1));
                return Err(Error::NonFiniteLoss {
                    value,
                    step: self.state.step + 1,
                    epoch: self.state.epoch,
                    micro,
                });
            }
        }
        let grad_norm = if clip > 0.0 { grads.clip_norm(clip)? } else { grads.global_norm()? };
        self.opt.set_learning_rate(lr);
        self.opt.step(&grads)?;
        self.state.step += 1;
        Ok(StepResult { loss: mean_loss, lr, grad_norm, stop: stop_any })
    }

    /// Sliding-window validation over every validation volume; Dice only unless `distances`.
    /// Writes an overlay of the first case to `overlay` when given.
    pub fn validate(&self, distances: bool, overlay: Option<&Path>) -> Result<Report> {
        let cfg = &self.plan.config;
        let nc = cfg.model.out_channels();
        let mut mcfg = MetricsConfig::new(nc, cfg.output.nsd_tolerance);
        mcfg.distances = distances;
        let mut metric = SegmentationMetric::new(mcfg)?;
        let cast_model = self.cast_model()?;
        let model: &dyn SegModel = match &cast_model {
            Some(m) => m.as_ref(),
            None => self.model.as_ref(),
        };
        let dtype = cfg.precision.dtype();
        for (i, batch) in self.val_loader.epoch(0).enumerate() {
            let batch = batch?;
            let x = batch.image.to_device(&self.device)?;
            let (_, _, d, h, w) = x.dims5()?;
            // [1, D, H, W] class indices, streamed: the scores of the whole volume never exist.
            let pred: Vec<u8> = sliding_window_argmax(&x, &cfg.inference, |t| {
                Ok(model.forward_t(&t.to_dtype(dtype)?, false)?.to_dtype(DType::F32)?)
            })?
            .flatten_all()?
            .to_vec1()?;
            let gt: Vec<u8> = match &batch.label {
                Some(l) => {
                    l.flatten_all()?.to_vec1::<u32>()?.into_iter().map(|v| v as u8).collect()
                }
                None => return Err(Error::Config("validation volume without a label".into())),
            };
            let name = batch.meta.first().map(|m| m.id.clone()).unwrap_or(format!("case_{i}"));
            metric.update_named(&name, &pred, &gt, [d, h, w], cfg.data.pixdim)?;
            if i == 0
                && let Some(p) = overlay
            {
                let img: Vec<f32> = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                output::overlay(p, &img, &pred, &gt, [d, h, w], &self.class_names)?;
            }
        }
        Ok(metric.compute().with_class_names(&self.class_names))
    }

    /// Saves the weights, the optimiser state and the run position as one checkpoint generation.
    fn save_last(&self) -> Result<()> {
        let weights = checkpoint::weights_bytes(&self.varmap, self.state.step)?;
        let state = checkpoint::state_bytes(&self.opt.state_tensors(), &self.state)?;
        let dir = self.plan.run_dir.join("checkpoints");
        medseg_run::checkpoint::save(
            &dir,
            self.state.step,
            &weights,
            &state,
            self.checkpoint_fault,
        )?;
        Ok(())
    }

    /// Writes `checkpoints/best.safetensors` (one atomic file).
    fn save_best(&self, step: u64) -> Result<()> {
        let weights = checkpoint::weights_bytes(&self.varmap, step)?;
        Ok(medseg_run::checkpoint::save_best(&self.plan.run_dir.join("checkpoints"), &weights)?)
    }

    fn write_outputs(&self) -> Result<()> {
        let fg: Vec<String> = self.class_names.iter().skip(1).cloned().collect();
        let dir = &self.plan.run_dir;
        let csv = output::metrics_csv(&self.state.history, &fg);
        checkpoint::write_atomic(&dir.join("metrics.csv"), csv.as_bytes())?;
        output::loss_plot(&dir.join("loss.png"), &self.state.history)?;
        if self.state.history.iter().any(|r| r.val_dice.is_some()) {
            output::dice_plot(&dir.join("dice.png"), &self.state.history, &fg)?;
        }
        Ok(())
    }

    /// Trains until `train.max_steps` (or a stop request), validating, checkpointing and writing
    /// the run outputs; a complete run ends with a full validation and `report.md`. The writing
    /// rank holds the run folder's lock until it returns.
    pub fn run(&mut self, opts: &RunOptions) -> Result<RunOutcome> {
        if self.world.is_writer() && self.lock.is_none() {
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
        let writer = self.world.is_writer();
        let progress = cfg.output.progress && writer;
        let pb = if progress { ProgressBar::new(max) } else { ProgressBar::hidden() };
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({per_sec}, ETA {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_position(self.state.step);
        let mut losses = Vec::new();
        let mut interrupted = false;
        let first_step = self.state.step;
        while self.state.step < max {
            let StepResult { loss: l, lr, grad_norm: norm, stop: stop_flag } =
                self.step(opts.stop.as_deref())?;
            losses.push(l);
            let step = self.state.step;
            let mut row = LogRow {
                step,
                epoch: self.state.epoch,
                loss: l,
                lr,
                grad_norm: norm,
                elapsed_s: elapsed0 + start.elapsed().as_secs_f64(),
                val_dice: None,
                val_mean_dice: None,
            };
            pb.set_position(step);
            pb.set_message(format!("loss {l:.4} lr {lr:.2e}"));
            if pb.is_hidden() && progress && step.is_multiple_of((max / 20).max(1)) {
                let el = start.elapsed().as_secs_f64();
                let done = (step - first_step).max(1) as f64;
                eprintln!(
                    "step {step}/{max} loss {l:.4} lr {lr:.2e} {:.2} s/step, ETA {:.0} s",
                    el / done,
                    el / done * (max - step) as f64
                );
            }
            let validate_now = writer && step.is_multiple_of(cfg.train.val_every) && step < max;
            if validate_now {
                let ov = cfg
                    .output
                    .overlays
                    .then(|| self.plan.run_dir.join(format!("overlays/step_{step:06}.png")));
                let rep = pb.suspend(|| self.validate(false, ov.as_deref()))?;
                let mean = rep.mean.first().map_or(0.0, |r| r.value);
                row.val_dice = Some(rep.per_class.iter().map(|c| c.values[0].value).collect());
                row.val_mean_dice = Some(mean);
                log(&pb, format!("step {step}: validation mean Dice {mean:.4}"));
                if self.state.best_mean_dice.is_none_or(|b| mean > b) {
                    self.state.best_mean_dice = Some(mean);
                    self.state.best_step = Some(step);
                    self.save_best(step)?;
                }
            }
            self.state.history.push(row);
            self.state.elapsed_s = elapsed0 + start.elapsed().as_secs_f64();
            let stop = stop_flag || opts.stop_after.is_some_and(|k| step >= k);
            if writer
                && (stop
                    || validate_now
                    || step.is_multiple_of(cfg.train.checkpoint_every)
                    || step == max)
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
        let mut report = None;
        if !interrupted && writer {
            let ov = cfg.output.overlays.then(|| self.plan.run_dir.join("overlays/final.png"));
            let rep = self.validate(true, ov.as_deref())?;
            let mean = rep.mean.first().map_or(0.0, |r| r.value);
            if let Some(last) = self.state.history.last_mut() {
                last.val_dice = Some(rep.per_class.iter().map(|c| c.values[0].value).collect());
                last.val_mean_dice = Some(mean);
            }
            if self.state.best_mean_dice.is_none_or(|b| mean >= b) {
                self.state.best_mean_dice = Some(mean);
                self.state.best_step = Some(self.state.step);
                self.save_best(self.state.step)?;
            }
            self.state.elapsed_s = elapsed0 + start.elapsed().as_secs_f64();
            self.save_last()?;
            self.write_outputs()?;
            let md = self.report_markdown(&rep);
            checkpoint::write_atomic(&self.plan.run_dir.join("report.md"), md.as_bytes())?;
            report = Some(rep);
        }
        Ok(RunOutcome {
            run_dir: self.plan.run_dir.clone(),
            losses,
            interrupted,
            report,
            step: self.state.step,
        })
    }

    fn report_markdown(&self, rep: &Report) -> String {
        let cfg = &self.plan.config;
        let mut s = format!("# Training report: {}\n\n", cfg.name);
        let first = self.state.history.first().map_or(f64::NAN, |r| r.loss);
        let last = self.state.history.last().map_or(f64::NAN, |r| r.loss);
        s.push_str(&format!(
            "- steps: {} (epoch {}), wall time {:.1} s\n- training loss: {first:.4} (step 1) → {last:.4} (step {})\n",
            self.state.step, self.state.epoch, self.state.elapsed_s, self.state.step
        ));
        s.push_str(&format!(
            "- final validation mean Dice (foreground, MONAI mean): **{:.4}**; best {:.4} at step {}\n",
            rep.mean.first().map_or(0.0, |r| r.value),
            self.state.best_mean_dice.unwrap_or(0.0),
            self.state.best_step.unwrap_or(0)
        ));
        s.push_str(&format!(
            "- model `{}`, patch {:?}, sliding window roi {:?} overlap {} {:?}\n",
            serde_json::to_string(&cfg.model).unwrap_or_default(),
            cfg.data.roi,
            cfg.inference.roi,
            cfg.inference.overlap,
            cfg.inference.mode
        ));
        s.push_str("- curves: `loss.png` (log10 loss vs step), `dice.png` (mean Dice first, then per class, vs step); overlays under `overlays/` (top: ground truth, bottom: prediction; axial, coronal, sagittal)\n\n");
        s.push_str("## Validation (Dice, HD95 in mm, NSD)\n\n");
        s.push_str(&rep.to_markdown());
        s
    }
}

impl Trainer {
    /// `train.init_from`: fills the Swin encoder (`swinViT.*`) from a pretrained checkpoint
    /// (medseg-models `load_encoder`) and writes the report to stderr and `<run>/init_from.txt`.
    fn init_from_pretrained(&self) -> Result<()> {
        let Some(path) = &self.plan.config.train.init_from else { return Ok(()) };
        let crate::model::ModelConfig::SwinUnetr(mcfg) = &self.plan.config.model else {
            return Err(Error::Config(format!(
                "train.init_from ({}) loads a Swin encoder: it needs model.kind = \"swin_unetr\"",
                path.display()
            )));
        };
        let rep = medseg_models::loader::load_encoder(&self.varmap, path)
            .map_err(|e| Error::Checkpoint { path: path.clone(), reason: e.to_string() })?;
        let mut text = format!("init_from {}\n{rep}", path.display());
        if let Some(m) = rep.report.merge_order
            && mcfg.merge_order != Some(m)
        {
            text.push_str(&format!(
                "  warning: the file was trained with merge_order {m:?}, the model uses {:?}\n",
                mcfg.merge_order
            ));
        }
        if !self.world.is_writer() {
            return Ok(());
        }
        eprint!("{text}");
        Ok(checkpoint::write_atomic(&self.plan.run_dir.join("init_from.txt"), text.as_bytes())?)
    }
}

/// A line above the progress bar, or on stderr when the bar is hidden (not a terminal).
fn log(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() { eprintln!("{msg}") } else { pb.println(msg) }
}

/// Takes the run folder's lock, reporting a stale lock taken over and the temporaries removed.
fn take_lock(dir: &Path) -> Result<RunLock> {
    let lock = RunLock::acquire(dir)?;
    if let Some(pid) = lock.stale_pid() {
        eprintln!(
            "{}: took over the lock of process {pid}, which is no longer running",
            dir.display()
        );
    }
    if !lock.cleaned().is_empty() {
        eprintln!(
            "{}: removed {} temporary file(s) left by an interrupted run",
            dir.display(),
            lock.cleaned().len()
        );
    }
    Ok(lock)
}
