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
///
/// On the CPU with f32 logits this is one graph node ([`DiceCeOp`]) that keeps only the logits
/// and the labels for the backward pass, which recomputes the softmax: the composed form
/// ([`dice_ce_loss_reference`]) keeps about a dozen logits-sized maps (softmax, log-softmax,
/// one-hot targets, products) alive until the loss is dropped. Elsewhere it is the composed form.
pub fn dice_ce_loss(logits: &Tensor, labels: &Tensor, cfg: &DiceCeConfig) -> Result<Tensor> {
    let (_b, c) = check(logits, labels)?;
    if !logits.device().is_cpu() || logits.dtype() != DType::F32 {
        return dice_ce_loss_reference(logits, labels, cfg);
    }
    let labels = labels.to_dtype(DType::F32)?.contiguous()?;
    let op = DiceCeOp { cfg: cfg.clone(), classes: c };
    Ok(logits.contiguous()?.apply_op2(&labels, op)?)
}

/// The composed reference of [`dice_ce_loss`] (candle ops, differentiable through autograd).
pub fn dice_ce_loss_reference(
    logits: &Tensor,
    labels: &Tensor,
    cfg: &DiceCeConfig,
) -> Result<Tensor> {
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

/// [`dice_ce_loss`] as one custom op on (logits `[B, C, N…]` f32, labels `[B, 1, N…]` as f32
/// class indices); a label outside `0..C` has an all-zero one-hot row, as in [`one_hot`].
///
/// Sums run in f64 in index order, so the result does not depend on threads.
struct DiceCeOp {
    cfg: DiceCeConfig,
    classes: usize,
}

/// Per-(b, c) Dice sums and the cross-entropy sum of one pass over the voxels.
struct DiceCeSums {
    /// Σ p·g per (b, c), row-major.
    inter: Vec<f64>,
    /// Σ p (or Σ p² with `squared_pred`) per (b, c).
    pred: Vec<f64>,
    /// Σ g per (b, c).
    truth: Vec<f64>,
    /// −Σ g·log p over everything.
    ce: f64,
}

impl DiceCeOp {
    /// The softmax of voxel `i` of sample `b` into `p`; returns log Σ exp(z − max) and max.
    fn softmax_at(&self, z: &[f32], b: usize, i: usize, n: usize, p: &mut [f64]) -> (f64, f64) {
        let c = self.classes;
        let base = b * c * n + i;
        let mut max = f64::NEG_INFINITY;
        for k in 0..c {
            max = max.max(z[base + k * n] as f64);
        }
        let mut sum = 0.0;
        for (k, pk) in p.iter_mut().enumerate() {
            *pk = (z[base + k * n] as f64 - max).exp();
            sum += *pk;
        }
        for pk in p.iter_mut() {
            *pk /= sum;
        }
        (sum.ln(), max)
    }

    /// The class of voxel `i` of sample `b`, `None` when the label is not one of `0..C`.
    fn class_at(&self, y: &[f32], b: usize, i: usize, n: usize) -> Option<usize> {
        let l = y[b * n + i];
        (0..self.classes).find(|&k| l == k as f32)
    }

    fn sums(&self, z: &[f32], y: &[f32], bsz: usize, n: usize) -> DiceCeSums {
        let c = self.classes;
        let mut s = DiceCeSums {
            inter: vec![0.0; bsz * c],
            pred: vec![0.0; bsz * c],
            truth: vec![0.0; bsz * c],
            ce: 0.0,
        };
        let mut p = vec![0.0; c];
        for b in 0..bsz {
            for i in 0..n {
                let (lse, max) = self.softmax_at(z, b, i, n, &mut p);
                for (k, &pk) in p.iter().enumerate() {
                    s.pred[b * c + k] += if self.cfg.squared_pred { pk * pk } else { pk };
                }
                if let Some(k) = self.class_at(y, b, i, n) {
                    s.inter[b * c + k] += p[k];
                    s.truth[b * c + k] += 1.0;
                    // −log p_k = lse − (z_k − max)
                    s.ce += lse - (z[b * c * n + k * n + i] as f64 - max);
                }
            }
        }
        s
    }

    /// The Dice terms' (b, c) cells: all classes, or all but the background; with `batch` the
    /// sums are first added over the batch.
    fn first_class(&self) -> usize {
        if self.cfg.include_background || self.classes == 1 { 0 } else { 1 }
    }

    /// (numerator, denominator) of the Dice term of class `k` for sample `b`.
    fn dice_parts(&self, s: &DiceCeSums, bsz: usize, b: usize, k: usize) -> (f64, f64) {
        let c = self.classes;
        let (inter, pred, truth) = if self.cfg.batch {
            (0..bsz).fold((0.0, 0.0, 0.0), |(i, p, t), b| {
                (i + s.inter[b * c + k], p + s.pred[b * c + k], t + s.truth[b * c + k])
            })
        } else {
            (s.inter[b * c + k], s.pred[b * c + k], s.truth[b * c + k])
        };
        (2.0 * inter + self.cfg.smooth_nr, pred + truth + self.cfg.smooth_dr)
    }

    /// Number of Dice terms the mean runs over.
    fn dice_terms(&self, bsz: usize) -> usize {
        let kept = self.classes - self.first_class();
        if self.cfg.batch { kept } else { bsz * kept }
    }
}

fn f32_slice<'a>(s: &'a candle::CpuStorage, l: &candle::Layout) -> candle::Result<&'a [f32]> {
    let candle::CpuStorage::F32(v) = s else { candle::bail!("dice_ce: expected f32") };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle::bail!("dice_ce: non-contiguous input {:?}", l.shape())
    };
    Ok(&v[a..b])
}

impl candle::CustomOp2 for DiceCeOp {
    fn name(&self) -> &'static str {
        "dice_ce_loss"
    }

    fn cpu_fwd(
        &self,
        s1: &candle::CpuStorage,
        l1: &candle::Layout,
        s2: &candle::CpuStorage,
        l2: &candle::Layout,
    ) -> candle::Result<(candle::CpuStorage, candle::Shape)> {
        let (z, y) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let bsz = l1.dims()[0];
        let n = z.len() / (bsz * self.classes);
        let s = self.sums(z, y, bsz, n);
        let bs = if self.cfg.batch { 1 } else { bsz };
        let mut dice = 0.0;
        for b in 0..bs {
            for k in self.first_class()..self.classes {
                let (num, den) = self.dice_parts(&s, bsz, b, k);
                dice += 1.0 - num / den;
            }
        }
        let dice = dice / self.dice_terms(bsz) as f64;
        let ce = s.ce / (bsz * n) as f64;
        let loss = self.cfg.lambda_dice * dice + self.cfg.lambda_ce * ce;
        Ok((candle::CpuStorage::F32(vec![loss as f32]), candle::Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = logits.dims().to_vec();
        let z = logits.flatten_all()?.to_vec1::<f32>()?;
        let y = labels.flatten_all()?.to_vec1::<f32>()?;
        let g = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (bsz, c) = (dims[0], self.classes);
        let n = z.len() / (bsz * c);
        let s = self.sums(&z, &y, bsz, n);
        // ∂Dice/∂p_k = −(λ/T)·(2·g_k·den − num·∂den/∂p_k)/den², per (b, k).
        let scale_d = g * self.cfg.lambda_dice / self.dice_terms(bsz) as f64;
        let scale_ce = g * self.cfg.lambda_ce / (bsz * n) as f64;
        let mut parts = vec![(0.0, 0.0); bsz * c];
        for b in 0..bsz {
            for k in self.first_class()..c {
                let (num, den) = self.dice_parts(&s, bsz, b, k);
                parts[b * c + k] = (num, den);
            }
        }
        let first = self.first_class();
        let mut dz = vec![0f32; z.len()];
        let (mut p, mut dp) = (vec![0.0; c], vec![0.0; c]);
        for b in 0..bsz {
            for i in 0..n {
                self.softmax_at(&z, b, i, n, &mut p);
                let cls = self.class_at(&y, b, i, n);
                let mut dot = 0.0;
                for k in 0..c {
                    dp[k] = 0.0;
                    if k >= first {
                        let (num, den) = parts[b * c + k];
                        let gk = if cls == Some(k) { 1.0 } else { 0.0 };
                        let dden = if self.cfg.squared_pred { 2.0 * p[k] } else { 1.0 };
                        dp[k] = -scale_d * (2.0 * gk * den - num * dden) / (den * den);
                    }
                    dot += p[k] * dp[k];
                }
                for k in 0..c {
                    // softmax chain rule, then the cross-entropy term p_k·Σg − g_k
                    let gk = if cls == Some(k) { 1.0 } else { 0.0 };
                    let has = if cls.is_some() { 1.0 } else { 0.0 };
                    let v = p[k] * (dp[k] - dot) + scale_ce * (p[k] * has - gk);
                    dz[b * c * n + k * n + i] = v as f32;
                }
            }
        }
        Ok((Some(Tensor::from_vec(dz, dims, logits.device())?), None))
    }
}
