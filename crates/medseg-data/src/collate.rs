//! The batch boundary: samples → candle tensors `[B, 1, D, H, W]`.
use candle::{Device, Tensor};

use crate::affine::Affine;
use crate::transforms::{Meta, Sample};
use crate::volume::Volume;
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
    /// Per-sample voxel-to-world affine of the (transformed) grid, for mapping predictions back.
    pub affines: Vec<Affine>,
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
    Ok(Batch {
        image,
        label,
        meta: samples.iter().map(|s| s.meta.clone()).collect(),
        affines: samples.iter().map(|s| s.image.affine).collect(),
    })
}

/// [`collate`] on the CPU (the loader's batches; the trainer moves them to its device).
pub fn collate_cpu(samples: &[Sample]) -> Result<Batch> {
    collate(samples, &Device::Cpu)
}

/// Writes a label prediction made on a preprocessed grid (`labels` in C order over `shape`, with that
/// grid's `affine`, e.g. `Batch::affines[b]`) as a NIfTI on the original image grid of `meta`
/// (same shape and affine as the input file; nearest neighbour in world space, 0 outside).
pub fn write_prediction(
    path: impl AsRef<std::path::Path>,
    labels: Vec<u8>,
    shape: [usize; 3],
    affine: Affine,
    meta: &Meta,
) -> Result<Volume<u8>> {
    let pred = Volume::new(labels, shape, affine).ok_or_else(|| {
        Error::InvalidArgument(format!("prediction length does not match shape {shape:?}"))
    })?;
    let out =
        crate::spatial::labels_to_original_grid(&pred, &meta.original_affine, meta.original_shape)?;
    crate::nifti_io::write_volume(path, &out)?;
    Ok(out)
}
