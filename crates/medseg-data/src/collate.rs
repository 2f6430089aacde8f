//! The batch boundary: samples → candle tensors `[B, 1, D, H, W]`.
use candle::{Device, Tensor};

use crate::transforms::{Meta, Sample};
use crate::{Error, Result};

/// A collated batch (CPU tensors; the trainer moves them to its device).
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, 1, D, H, W]` f32 image, `(D, H, W)` = NIfTI `(i, j, k)` of the (transformed) volume.
    pub image: Tensor,
    /// `[B, 1, D, H, W]` u32 labels, when every sample has one.
    pub label: Option<Tensor>,
    /// Per-sample provenance, in batch order.
    pub meta: Vec<Meta>,
}

/// Stacks samples of identical shape into a [`Batch`] on `device`.
///
/// Errors when `samples` is empty, when shapes differ (use batch size 1 for whole volumes of
/// different sizes) or when only some samples carry labels.
pub fn collate(samples: &[Sample], device: &Device) -> Result<Batch> {
    let first = samples
        .first()
        .ok_or_else(|| Error::InvalidArgument("collate of an empty batch".into()))?;
    let shape = first.image.shape();
    let n = first.image.len();
    let mut img = Vec::with_capacity(n * samples.len());
    let with_label = samples.iter().filter(|s| s.label.is_some()).count();
    if with_label != 0 && with_label != samples.len() {
        return Err(Error::InvalidArgument(format!(
            "collate: {with_label} of {} samples have labels; all or none must",
            samples.len()
        )));
    }
    let mut lbl = Vec::with_capacity(if with_label > 0 { n * samples.len() } else { 0 });
    for s in samples {
        if s.image.shape() != shape {
            return Err(Error::InvalidArgument(format!(
                "collate: sample {:?} has shape {:?}, the first has {:?}",
                s.meta.id,
                s.image.shape(),
                shape
            )));
        }
        img.extend_from_slice(s.image.data());
        if let Some(l) = &s.label {
            lbl.extend(l.data().iter().map(|&v| u32::from(v)));
        }
    }
    let dims = (samples.len(), 1, shape[0], shape[1], shape[2]);
    let image = Tensor::from_vec(img, dims, device)?; // [B, 1, D, H, W]
    let label = if with_label > 0 { Some(Tensor::from_vec(lbl, dims, device)?) } else { None };
    Ok(Batch { image, label, meta: samples.iter().map(|s| s.meta.clone()).collect() })
}
