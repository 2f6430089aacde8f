//! Gradient checkpointing of Swin blocks (MONAI `use_checkpoint`, non-reentrant semantics) and
//! of the CNN encoder blocks (`checkpoint_encoders`).
//!
//! A block becomes one `CustomOp2` of (input, all block parameters flattened and concatenated).
//! Its forward runs the block on plain tensors, so no activation is kept; its backward rebuilds
//! the block from fresh `Var`s, re-runs the forward with autograd and returns the gradients of
//! `Σ y·grad_y` for the input and the flat parameters; `Tensor::cat`'s backward routes the
//! latter to the real parameters. CPU only (other devices fall back to the plain forward).
//! Dropout / stochastic depth in training are re-sampled in the recomputation (MONAI restores
//! the RNG state), so use it with rate-0 dropouts for exact gradients.
//!
//! Generic over [`CheckpointBlock`], so it depends only on [`crate::layers`]; the Swin block
//! implements the trait in `swin_transformer.rs`, `UnetrBasicBlock` in `swin_unetr.rs`.
use candle::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, Var};

use crate::layers::Params;

/// A block that can be checkpointed: its parameters in a fixed order ([`Params`]) and its
/// forward on `(x, optional attention mask)`.
pub(crate) trait CheckpointBlock: Params + Clone + Send + Sync + 'static {
    /// The block's forward pass.
    fn forward_block(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor>;
}

struct BlockOp<B> {
    blk: B,
    mask: Option<Tensor>,
    train: bool,
    shapes: Vec<Shape>,
}

impl<B: CheckpointBlock> BlockOp<B> {
    fn rebuild(&self, flat: &Tensor) -> Result<B> {
        let mut parts = Vec::with_capacity(self.shapes.len());
        let mut off = 0;
        for s in &self.shapes {
            let n = s.elem_count();
            parts.push(flat.narrow(0, off, n)?.reshape(s)?);
            off += n;
        }
        self.blk.with_params(&mut parts.into_iter())
    }
}

fn tensor_of(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let CpuStorage::F32(v) = s else { candle::bail!("checkpoint: only f32 is supported") };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle::bail!("checkpoint: non-contiguous input {:?}", l.shape())
    };
    Tensor::from_slice(&v[a..b], l.shape(), &candle::Device::Cpu)
}

impl<B: CheckpointBlock> CustomOp2 for BlockOp<B> {
    fn name(&self) -> &'static str {
        "swin-block-checkpoint"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = tensor_of(s1, l1)?;
        let blk = self.rebuild(&tensor_of(s2, l2)?)?;
        let y = blk.forward_block(&x, self.mask.as_ref(), self.train)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let x = Var::from_tensor(&arg1.detach())?;
        let flat = Var::from_tensor(&arg2.detach())?;
        let blk = self.rebuild(flat.as_tensor())?;
        let y = blk.forward_block(x.as_tensor(), self.mask.as_ref(), self.train)?;
        // Backward from y with y's gradient given (no y·grad product is materialised).
        let grads = y.apply_op1(Seed(grad_res.detach()))?.backward()?;
        Ok((grads.get(x.as_tensor()).cloned(), grads.get(flat.as_tensor()).cloned()))
    }
}

/// Runs `blk` so that its activations are recomputed in backward.
pub(crate) fn checkpointed_block<B: CheckpointBlock>(
    blk: &B,
    x: &Tensor,
    mask: Option<&Tensor>,
    train: bool,
) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle::DType::F32 {
        return blk.forward_block(x, mask, train);
    }
    let mut params = Vec::new();
    blk.params(&mut params);
    let shapes = params.iter().map(|p| p.shape().clone()).collect();
    let flat: Vec<Tensor> = params.iter().map(|p| p.flatten_all()).collect::<Result<_>>()?;
    // [Σ numel] (differentiable: cat's backward splits the gradient back to each parameter)
    let flat = Tensor::cat(&flat, 0)?;
    let op = BlockOp { blk: blk.clone(), mask: mask.map(Tensor::detach), train, shapes };
    x.contiguous()?.apply_op2(&flat, op)
}

/// A scalar node whose backward hands `self.0` to its input as that input's gradient.
struct Seed(Tensor);

impl CustomOp1 for Seed {
    fn name(&self) -> &'static str {
        "gradient_seed"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(())))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, _grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.0.clone()))
    }
}
