//! Linear warm-up + cosine annealing, as `LinearWarmupCosineAnnealingLR` of the research code
//! (`research-contributions/SwinUNETR/BTCV/optimizers/lr_scheduler.py`), in closed form.
//!
//! At counter `t` (epoch or optimiser step, see [`ScheduleUnit`]):
//! `t == 0 → start`; `t < w → start + t·(base − start)/(w − 1)`;
//! otherwise `eta_min + ½(base − eta_min)(1 + cos(π(t − w)/(T − w)))`.
//! The research class computes the same values recursively (equal up to rounding, tested).

/// What the schedule counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleUnit {
    /// Completed epochs (the research code steps the scheduler once per epoch).
    Epoch,
    /// Completed optimiser steps.
    Step,
}

/// Schedule settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `constant` keeps the base rate; `warmup_cosine` is the research schedule.
    pub kind: ScheduleKind,
    /// What `warmup` and `max` count.
    pub unit: ScheduleUnit,
    /// Warm-up length (`warmup_epochs`).
    pub warmup: u64,
    /// Length of the cosine period end (`max_epochs`).
    pub max: u64,
    /// First learning rate of the warm-up (`warmup_start_lr`).
    pub warmup_start_lr: f64,
    /// Floor of the cosine (`eta_min`).
    pub eta_min: f64,
}

/// Schedule shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The base learning rate throughout.
    Constant,
    /// Linear warm-up then cosine annealing.
    WarmupCosine,
}

impl ScheduleConfig {
    /// Checks `warmup < max` for the cosine schedule.
    pub fn validate(&self) -> crate::Result<()> {
        if self.kind == ScheduleKind::WarmupCosine && self.warmup >= self.max {
            return Err(crate::Error::Config(format!(
                "schedule.warmup ({}) must be below schedule.max ({})",
                self.warmup, self.max
            )));
        }
        Ok(())
    }

    /// The learning rate at counter `t` for base rate `base`.
    pub fn lr(&self, base: f64, t: u64) -> f64 {
        match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::WarmupCosine => {
                warmup_cosine(base, t, self.warmup, self.max, self.warmup_start_lr, self.eta_min)
            }
        }
    }
}

/// Closed form of `LinearWarmupCosineAnnealingLR` at counter `t`.
pub fn warmup_cosine(base: f64, t: u64, warmup: u64, max: u64, start: f64, eta_min: f64) -> f64 {
    if t == 0 {
        return start;
    }
    if t < warmup {
        return start + t as f64 * (base - start) / (warmup - 1) as f64;
    }
    let span = max.saturating_sub(warmup).max(1) as f64;
    let x = std::f64::consts::PI * (t - warmup) as f64 / span;
    eta_min + 0.5 * (base - eta_min) * (1.0 + x.cos())
}
