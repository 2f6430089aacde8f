//! Segmentation losses with MONAI semantics: `DiceCELoss`, `DiceLoss` (softmax, one-hot target)
//! and cross entropy, all differentiable through candle's autograd.
//!
//! Port of MONAI 1.6 `monai/losses/dice.py` (`DiceLoss`, `DiceCELoss`) with `to_onehot_y=True`,
//! `softmax=True`, `reduction="mean"`, no class weights and no label smoothing.
use candle::{D, DType, Tensor};

use crate::{Error, Result};

/// Mirrors `DiceCELoss(to_onehot_y=True, softmax=True, ...)`; field names are MONAI's arguments.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiceCeConfig {
    /// Keep channel 0 in the Dice term (the CE term always uses every class, as in MONAI).
    pub include_background: bool,
    /// Use Σp² + Σg² in the Dice denominator (`squared_pred`).
    pub squared_pred: bool,
    /// Added to the Dice numerator (`smooth_nr`).
    pub smooth_nr: f64,
    /// Added to the Dice denominator (`smooth_dr`).
    pub smooth_dr: f64,
    /// Reduce the Dice sums over the batch as well as space (`batch`).
    pub batch: bool,
    /// Weight of the Dice term (`lambda_dice`).
    pub lambda_dice: f64,
    /// Weight of the CE term (`lambda_ce`).
    pub lambda_ce: f64,
}

impl DiceCeConfig {
    /// MONAI's defaults (the BTCV recipe): background included, smooth 1e-5, λ's 1.
    pub fn monai() -> Self {
        DiceCeConfig {
            include_background: true,
            squared_pred: false,
            smooth_nr: 1e-5,
            smooth_dr: 1e-5,
            batch: false,
            lambda_dice: 1.0,
            lambda_ce: 1.0,
        }
    }
}

fn check(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let ld = logits.dims().to_vec();
    let yd = labels.dims().to_vec();
    if ld.len() < 3 || yd.len() != ld.len() || yd[0] != ld[0] || yd[1] != 1 || yd[2..] != ld[2..] {
        return Err(Error::Shape {
            what: "loss labels".into(),
            expected: format!("[B, 1, spatial..] matching logits {ld:?}"),
            got: yd,
        });
    }
    Ok((ld[0], ld[1]))
}

/// One-hot encoding of a `[B, 1, ...]` label map (any integer or float dtype) into `[B, C, ...]`
/// in the logits' dtype.
pub fn one_hot(labels: &Tensor, num_classes: usize, dtype: DType) -> Result<Tensor> {
    let y = labels.to_dtype(DType::F32)?;
    let classes: Vec<f32> = (0..num_classes).map(|c| c as f32).collect();
    let mut shape = vec![1, num_classes];
    shape.extend(std::iter::repeat_n(1, labels.rank() - 2));
    let c = Tensor::from_vec(classes, shape, labels.device())?;
    // [B, 1, ...] == [1, C, 1, ...] -> [B, C, ...]
    Ok(y.broadcast_eq(&c)?.to_dtype(dtype)?)
}

/// MONAI `DiceLoss(to_onehot_y=True, softmax=True)`: softmax over channels, one-hot target,
/// `1 − (2Σpg + nr)/(Σp + Σg + dr)` per (b, c) (or per c with `batch`), mean over the rest.
///
/// # Shapes
/// `logits` `[B, C, D, H, W]` (any spatial rank), `labels` `[B, 1, D, H, W]` class indices.
pub fn dice_loss(logits: &Tensor, labels: &Tensor, cfg: &DiceCeConfig) -> Result<Tensor> {
    let (_b, c) = check(logits, labels)?;
    let p = candle_nn::ops::softmax(logits, 1)?;
    let g = one_hot(labels, c, logits.dtype())?;
    let (p, g) = if cfg.include_background || c == 1 {
        (p, g)
    } else {
        (p.narrow(1, 1, c - 1)?, g.narrow(1, 1, c - 1)?)
    };
    let (b, c) = (p.dim(0)?, p.dim(1)?);
    // [B, C, ...] -> [B, C, N]
    let p = p.reshape((b, c, ()))?;
    let g = g.reshape((b, c, ()))?;
    let (inter, p_sum, g_sum) = if cfg.batch {
        // reduce over batch and space: [B, C, N] -> [C]
        let inter = (&p * &g)?.sum(2)?.sum(0)?;
        let (ps, gs) = if cfg.squared_pred { (p.sqr()?, g.sqr()?) } else { (p, g) };
        (inter, ps.sum(2)?.sum(0)?, gs.sum(2)?.sum(0)?)
    } else {
        let inter = (&p * &g)?.sum(D::Minus1)?;
        let (ps, gs) = if cfg.squared_pred { (p.sqr()?, g.sqr()?) } else { (p, g) };
        (inter, ps.sum(D::Minus1)?, gs.sum(D::Minus1)?)
    };
    let num = ((inter * 2.0)? + cfg.smooth_nr)?;
    let den = ((p_sum + g_sum)? + cfg.smooth_dr)?;
    let f = (1.0 - (num / den)?)?;
    Ok(f.mean_all()?)
}

/// `nn.CrossEntropyLoss` on raw logits with a `[B, 1, ...]` class-index target, mean over voxels.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (_b, c) = check(logits, labels)?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let g = one_hot(labels, c, logits.dtype())?;
    let n = (logits.elem_count() / c) as f64;
    Ok(((logp * g)?.sum_all()? / (-n))?)
}

/// MONAI `DiceCELoss(to_onehot_y=True, softmax=True, ...)` = λ_dice·Dice + λ_ce·CE.
pub fn dice_ce_loss(logits: &Tensor, labels: &Tensor, cfg: &DiceCeConfig) -> Result<Tensor> {
    let dice = dice_loss(logits, labels, cfg)?;
    let ce = cross_entropy(logits, labels)?;
    Ok(((dice * cfg.lambda_dice)? + (ce * cfg.lambda_ce)?)?)
}

/// Which loss the trainer minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// [`dice_ce_loss`].
    DiceCe,
    /// [`dice_loss`] alone.
    Dice,
    /// [`cross_entropy`] alone.
    Ce,
}

/// Evaluates the configured loss.
pub fn segmentation_loss(
    kind: LossKind,
    logits: &Tensor,
    labels: &Tensor,
    cfg: &DiceCeConfig,
) -> Result<Tensor> {
    match kind {
        LossKind::DiceCe => dice_ce_loss(logits, labels, cfg),
        LossKind::Dice => dice_loss(logits, labels, cfg),
        LossKind::Ce => cross_entropy(logits, labels),
    }
}
