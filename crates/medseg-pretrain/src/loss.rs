//! The SSL losses of research-contributions `SwinUNETR/Pretrain/losses/loss.py`
//! (swin-reference §3.3), composed from differentiable candle ops:
//! `L = w_rot·CE(rot_logits, k) + w_con·Contrast(z1, z2) + w_rec·L1(rec, target)`.
//!
//! `Contrast` (NT-Xent, τ = 0.5): `z = normalize(cat(z1, z2))` (`2N × D`), `S` the cosine
//! similarity matrix, positive of row `i` the other view of the same crop (`i ± N`), denominator
//! `Σ_{k≠i} exp(S_ik/τ)` (the positive included), loss `mean_i −log(exp(S_i,pos/τ)/denominator)`.
use candle::{D, DType, Tensor};

use crate::{Error, Result};

/// Weights of the three terms (`alpha1..3` of `Loss`, all 1 in the research code).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    /// Rotation cross-entropy (`alpha1`).
    pub rot: f64,
    /// Contrastive term (`alpha2`).
    pub contrast: f64,
    /// L1 reconstruction (`alpha3`).
    pub recon: f64,
}

impl LossWeights {
    /// All 1.
    pub fn research() -> Self {
        LossWeights { rot: 1.0, contrast: 1.0, recon: 1.0 }
    }
}

/// The total loss (a graph node) and its three weighted terms.
#[derive(Debug, Clone)]
pub struct SslLoss {
    /// `rot + contrast + recon` (scalar, differentiable).
    pub total: Tensor,
    /// Weighted rotation term.
    pub rot: Tensor,
    /// Weighted contrastive term.
    pub contrast: Tensor,
    /// Weighted reconstruction term.
    pub recon: Tensor,
}

/// `torch.nn.L1Loss()`: mean absolute difference.
pub fn l1_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if pred.dims() != target.dims() {
        return Err(Error::InvalidArgument(format!(
            "l1_loss: prediction {:?} and target {:?} differ",
            pred.dims(),
            target.dims()
        )));
    }
    Ok((pred - target)?.abs()?.mean_all()?)
}

/// Row-wise `log_softmax` of `[N, C]` logits (max subtracted as a constant).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let s = x.broadcast_sub(&m)?;
    let lse = s.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(s.broadcast_sub(&lse)?)
}

/// `torch.nn.CrossEntropyLoss()` of `[N, C]` logits against class indices (`u32`, length N).
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    if labels.len() != n || n == 0 || labels.iter().any(|&l| l as usize >= c) {
        return Err(Error::InvalidArgument(format!(
            "cross_entropy: {n}×{c} logits need {n} labels below {c}, got {labels:?}"
        )));
    }
    let mut onehot = vec![0f32; n * c];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * c + l as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, c), logits.device())?.to_dtype(logits.dtype())?;
    let picked = (log_softmax(logits)? * onehot)?.sum_all()?;
    Ok((picked.neg()? / n as f64)?)
}

/// `F.normalize(x, dim=1)`: rows divided by `max(‖row‖₂, 1e-12)`.
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
    let floor = Tensor::full(1e-12f64, norm.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&norm.maximum(&floor)?)?)
}

/// `Contrast(z1, z2)` with temperature `tau` (research: 0.5): NT-Xent over the `2N` embeddings
/// of two views of `N` crops (`z1`, `z2`: `[N, D]`).
pub fn contrastive_loss(z1: &Tensor, z2: &Tensor, tau: f64) -> Result<Tensor> {
    let (n, d) = z1.dims2()?;
    if z2.dims() != [n, d] || n == 0 || tau <= 0.0 || !tau.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "contrastive_loss: views {:?} and {:?} must both be [N ≥ 1, D], τ > 0 (got {tau})",
            z1.dims(),
            z2.dims()
        )));
    }
    let z = Tensor::cat(&[l2_normalize(z1)?, l2_normalize(z2)?], 0)?; // [2N, D]
    // cosine similarity of the (already unit) rows: F.cosine_similarity re-normalises them
    let zn = l2_normalize(&z)?;
    let sim = zn.matmul(&zn.t()?)?; // [2N, 2N]
    let two_n = 2 * n;
    let mut pos_mask = vec![0f32; two_n * two_n];
    let mut neg_mask = vec![1f32; two_n * two_n];
    for i in 0..two_n {
        pos_mask[i * two_n + (i + n) % two_n] = 1.0;
        neg_mask[i * two_n + i] = 0.0;
    }
    let dev = z1.device();
    let pos_mask = Tensor::from_vec(pos_mask, (two_n, two_n), dev)?.to_dtype(z.dtype())?;
    let neg_mask = Tensor::from_vec(neg_mask, (two_n, two_n), dev)?.to_dtype(z.dtype())?;
    let pos = (&sim * &pos_mask)?.sum(1)?; // [2N]: S[i, i ± N]
    let denom = ((&sim / tau)?.exp()? * &neg_mask)?.sum(1)?; // [2N]
    // −log(exp(pos/τ)/denom) = log(denom) − pos/τ
    let per_row = (denom.log()? - (pos / tau)?)?;
    Ok(per_row.mean_all()?)
}

/// The research `Loss`: `rot_logits` `[2N, 4]` with labels `rot_labels` (both views), `z1`/`z2`
/// `[N, D]` contrastive embeddings of view 1 and 2, reconstructions `rec` against `target`
/// (the rotated, un-augmented views, `[2N, C, X, Y, Z]`).
#[allow(clippy::too_many_arguments)] // the research `Loss.__call__` inputs, one by one
pub fn ssl_loss(
    rot_logits: &Tensor,
    rot_labels: &[u32],
    z1: &Tensor,
    z2: &Tensor,
    rec: &Tensor,
    target: &Tensor,
    tau: f64,
    w: &LossWeights,
) -> Result<SslLoss> {
    let rot = (cross_entropy(rot_logits, rot_labels)? * w.rot)?;
    let contrast = (contrastive_loss(z1, z2, tau)? * w.contrast)?;
    let recon = (l1_loss(rec, target)? * w.recon)?;
    let total = ((&rot + &contrast)? + &recon)?;
    Ok(SslLoss { total, rot, contrast, recon })
}

/// A scalar tensor as `f64`.
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
