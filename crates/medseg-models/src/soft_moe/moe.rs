//! The Soft MoE modules and their composed (candle-primitive) path. Ports of lucidrains
//! soft-moe-pytorch 0.1.9 `soft_moe_pytorch/soft_moe_with_dynamic_slots.py`
//! (`DynamicSlotsSoftMoE`) with the padding semantics of the copy bundled by MI2DataLab/SwinSMT
//! @ f36f1fc `src/models/soft_moe/soft_moe_with_dynamic_slots.py` ([`MoePadding`]), and
//! `soft_moe_pytorch/soft_moe.py` (`SoftMoE`, fixed learned slots, Puigcerver et al. ICLR 2024).
//! Keys equal the PyTorch modules' `state_dict()` keys under the block's `mlp.` prefix.
use candle::{D, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::{MoeKind, MoePadding, SwinUnetrConfig};
use crate::layers::{Mlp, Params, apply_linear, dropout, linear, next};

/// The FFN of a `SwinTransformerBlock`, always under `vb.pp("mlp")`.
#[derive(Debug, Clone)]
pub enum Ffn {
    /// MONAI `MLPBlock` (`mlp.linear1`, `mlp.linear2`).
    Mlp(Mlp),
    /// Swin SMT's `DynamicSlotsSoftMoE`.
    DynamicSlots(DynamicSlotsSoftMoe),
    /// Fixed-slot `SoftMoE`.
    SoftMoe(SoftMoe),
}

impl Ffn {
    /// Picks the variant from the config (`use_moe`, `num_layers_with_moe`, `moe_kind`).
    pub fn new(cfg: &SwinUnetrConfig, stage: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        if !cfg.stage_uses_moe(stage) {
            let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
            return Ok(Ffn::Mlp(Mlp::new(dim, hidden, cfg.drop_rate, vb)?));
        }
        match cfg.moe_kind {
            MoeKind::DynamicSlots => Ok(Ffn::DynamicSlots(DynamicSlotsSoftMoe::new(
                dim,
                cfg.num_experts,
                4,
                cfg.moe_padding,
                vb,
            )?)),
            MoeKind::FixedSlots => {
                let s = cfg.slots_per_expert.unwrap_or(1);
                Ok(Ffn::SoftMoe(SoftMoe::new(dim, cfg.num_experts, s, 4, vb)?))
            }
        }
    }

    /// `x` `[B, D, H, W, C]`. The MLP is position-wise; the MoE variants see the whole
    /// (unpadded) stage volume as one raster sequence `[B, D·H·W, C]` (Swin SMT
    /// `forward_part2`).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Ffn::Mlp(m) => m.forward_t(xs, train),
            Ffn::DynamicSlots(m) => {
                let (b, d, h, w, c) = xs.dims5()?;
                // [B, D, H, W, C] -> [B, D·H·W, C]
                let y = m.forward(&xs.reshape((b, d * h * w, c))?)?;
                // [B, D·H·W, C] -> [B, D, H, W, C]
                y.reshape((b, d, h, w, c))
            }
            Ffn::SoftMoe(m) => {
                let (b, d, h, w, c) = xs.dims5()?;
                // [B, D, H, W, C] -> [B, D·H·W, C]
                let y = m.forward(&xs.reshape((b, d * h * w, c))?)?;
                // [B, D·H·W, C] -> [B, D, H, W, C]
                y.reshape((b, d, h, w, c))
            }
        }
    }
}

/// lucidrains `RMSNorm`: `F.normalize(x, dim=-1) · √d · γ` (key `gamma`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    /// `gamma` `[dim]`, init 1.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let gamma = vb.get_with_hints(dim, "gamma", candle_nn::Init::Const(1.0))?;
        Ok(Self { gamma, scale: (dim as f64).sqrt() })
    }

    /// On the last dim of any tensor.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        l2norm(xs)?.affine(self.scale, 0.0)?.broadcast_mul(&self.gamma)
    }
}

/// `F.normalize(x, dim=-1)` = `x / max(‖x‖, 1e-12)`, written as `x / √max(Σx², 1e-24)` so the
/// gradient stays finite at zero vectors.
fn l2norm(xs: &Tensor) -> Result<Tensor> {
    let n = xs.sqr()?.sum_keepdim(D::Minus1)?.maximum(1e-24)?.sqrt()?;
    xs.broadcast_div(&n)
}

/// One expert: `Linear(d, 4d)` (`.0`) → GELU (`.1`) → Dropout (`.2`) → `Linear(4d, d)` (`.3`).
#[derive(Debug, Clone)]
pub struct FeedForward {
    l0: Linear,
    l3: Linear,
}

impl FeedForward {
    /// Keys `0.{weight,bias}`, `3.{weight,bias}`.
    pub fn new(dim: usize, mult: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            l0: linear(dim, dim * mult, true, vb.pp("0"))?,
            l3: linear(dim * mult, dim, true, vb.pp("3"))?,
        })
    }

    /// Position-wise on `[.., d]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = medseg_ops::gelu(&apply_linear(&self.l0, xs)?)?;
        apply_linear(&self.l3, &h)
    }
}

/// Runs expert `e` on its slots: `slots` `[B, E, S, d]` → `[B, E·S, d]`.
fn run_experts(experts: &[FeedForward], slots: &Tensor) -> Result<Tensor> {
    let (b, e, s, d) = slots.dims4()?;
    let mut outs = Vec::with_capacity(e);
    for (i, ex) in experts.iter().enumerate() {
        // [B, E, S, d] -> [B, S, d]
        outs.push(ex.forward(&slots.narrow(1, i, 1)?.squeeze(1)?.contiguous()?)?);
    }
    // E × [B, S, d] -> [B, E, S, d] -> [B, E·S, d]
    Tensor::stack(&outs, 1)?.reshape((b, e * s, d))
}

/// Runs the experts and combines: `slots` `[B, E, S, d]`, `combine` `[B, n, E·S]` → `[B, n, d]`.
fn experts_and_combine(
    experts: &[FeedForward],
    slots: &Tensor,
    combine: &Tensor,
) -> Result<Tensor> {
    // [B, n, E·S] x [B, E·S, d] -> [B, n, d]
    combine.matmul(&run_experts(experts, slots)?)
}

/// Dispatch (softmax over tokens) and combine (softmax over all slots) weights from
/// `logits` `[B, n, E·S]`: returns (`dispatchᵀ` `[B, E·S, n]`, `combine` `[B, n, E·S]`).
fn dispatch_combine(logits: &Tensor) -> Result<(Tensor, Tensor)> {
    // [B, n, E·S] -> [B, E·S, n]
    let dispatch_t = medseg_ops::softmax_last_dim(&logits.transpose(1, 2)?.contiguous()?)?;
    let combine = medseg_ops::softmax_last_dim(logits)?;
    Ok((dispatch_t, combine))
}

/// `DynamicSlotsSoftMoE(dim, num_experts=E, expert_mult=4)`: slots are the RMS-normalised
/// projections of the means of E consecutive tokens (swin-reference §2.3). When the sequence
/// length is not a multiple of E it is padded with zero tokens (after the norm, as upstream);
/// [`MoePadding`] says whether they are masked out or take part.
#[derive(Debug, Clone)]
pub struct DynamicSlotsSoftMoe {
    norm: RmsNorm,
    to_slot_embeds: Linear,
    slot_norm: RmsNorm,
    experts: Vec<FeedForward>,
    num_experts: usize,
    padding: MoePadding,
}

/// The normalised, padded tokens and the slots of one forward pass.
struct Prepared {
    /// `[B, n', d]`, n' = n rounded up to a multiple of E, zero rows at the end.
    x: Tensor,
    /// `[B, E·S, d]`, S = n' / E.
    slots: Tensor,
    /// Real tokens n.
    n: usize,
}

impl DynamicSlotsSoftMoe {
    /// Keys `norm.gamma`, `to_slot_embeds.0.weight` `[E·d, d]`, `to_slot_embeds.2.gamma`,
    /// `experts.{e}.{0,3}.{weight,bias}`.
    pub fn new(
        dim: usize,
        num_experts: usize,
        mult: usize,
        padding: MoePadding,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_experts == 0 {
            candle::bail!("DynamicSlotsSoftMoe: num_experts must be ≥ 1")
        }
        let experts = (0..num_experts)
            .map(|e| FeedForward::new(dim, mult, vb.pp("experts").pp(e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: RmsNorm::new(dim, vb.pp("norm"))?,
            to_slot_embeds: linear(dim, dim * num_experts, false, vb.pp("to_slot_embeds").pp("0"))?,
            slot_norm: RmsNorm::new(dim, vb.pp("to_slot_embeds").pp("2"))?,
            experts,
            num_experts,
            padding,
        })
    }

    /// The padding semantics this module was built with.
    pub fn padding(&self) -> MoePadding {
        self.padding
    }

    /// Tokens taking part in the dispatch softmax of a padded sequence of `padded` tokens, `n`
    /// of them real: all of them for [`MoePadding::Official`], the real ones for `Masked`.
    fn n_valid(&self, n: usize, padded: usize) -> usize {
        match self.padding {
            MoePadding::Official => padded,
            MoePadding::Masked => n,
        }
    }

    /// Norm, zero padding to a multiple of E, group means and slots.
    fn prepare(&self, xs: &Tensor) -> Result<Prepared> {
        let (b, n, d) = xs.dims3()?;
        let e = self.num_experts;
        let x = self.norm.forward(xs)?;
        let np = n.div_ceil(e) * e;
        let pad = np - n;
        let x = if pad > 0 { x.pad_with_zeros(1, 0, pad)? } else { x };
        let s = np / e;
        // [B, n', d] -> [B, S, E, d] -> sum over the E tokens of each group -> [B, S, d]
        let sums = x.reshape((b, s, e, d))?.sum(2)?;
        let means = if self.n_valid(n, np) == np {
            // Official (or no padding): every group divides by E, padding zeros included.
            (sums / e as f64)?
        } else {
            // Masked mean: the last group divides by its real tokens (upstream clamps at 1e-5).
            let counts: Vec<f32> =
                (0..s).map(|g| ((n.saturating_sub(g * e)).min(e) as f32).max(1e-5)).collect();
            let counts = Tensor::from_vec(counts, (1, s, 1), xs.device())?.to_dtype(xs.dtype())?;
            sums.broadcast_div(&counts)?
        };
        // [B, S, d] -> [B, S, E·d] -> [B, S, E, d] -> [B, E, S, d]
        let slots = apply_linear(&self.to_slot_embeds, &means)?
            .reshape((b, s, e, d))?
            .permute((0, 2, 1, 3))?
            .contiguous()?;
        // [B, E, S, d] -> [B, E·S, d]
        let slots = self.slot_norm.forward(&slots)?.reshape((b, e * s, d))?;
        Ok(Prepared { x, slots, n })
    }

    /// # Shapes
    /// `[B, n, d]` → `[B, n, d]`. On CUDA (feature `cuda`) the fused path
    /// ([`Self::forward_fused`]), elsewhere the composed one ([`Self::forward_composed`]).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if xs.device().is_cuda() {
            return self.forward_fused(xs);
        }
        self.forward_composed(xs)
    }

    /// The composed path: the `[B, n', E·S]` logits are materialised and softmaxed twice.
    ///
    /// # Shapes
    /// `[B, n, d]` → `[B, n, d]`.
    pub fn forward_composed(&self, xs: &Tensor) -> Result<Tensor> {
        let Prepared { x, slots, n } = self.prepare(xs)?;
        let (b, np, d) = x.dims3()?;
        let (e, s) = (self.num_experts, np / self.num_experts);
        // logits[b, t, (e, s)] = <x[b, t], slot[b, e, s]>: [B, n', d] x [B, d, E·S]
        let mut logits = x.matmul(&slots.t()?)?;
        let n_valid = self.n_valid(n, np);
        if n_valid < np {
            // Masked: padded token rows -> −finfo(f32).max (their logits are exactly 0 before).
            let m: Vec<f32> = (0..np).map(|t| if t < n_valid { 0.0 } else { -f32::MAX }).collect();
            let m = Tensor::from_vec(m, (1, np, 1), xs.device())?.to_dtype(logits.dtype())?;
            logits = logits.broadcast_add(&m)?;
        }
        let (dispatch_t, combine) = dispatch_combine(&logits)?;
        // slots_in = dispatchᵀ·x: [B, E·S, n'] x [B, n', d] -> [B, E·S, d] -> [B, E, S, d]
        let slots_in = dispatch_t.matmul(&x)?.reshape((b, e, s, d))?;
        let out = experts_and_combine(&self.experts, &slots_in, &combine)?;
        out.narrow(1, 0, n)
    }

    /// The fused path (medseg-ops `soft_moe_dispatch` / `soft_moe_combine`): the logits are
    /// never stored; padding is handled by the dispatch's `n_valid` (all padded tokens for
    /// `Official`, the real ones for `Masked`). Runs on any device; on the CPU it executes the
    /// kernels' reference twin, which is how the tests check it without a GPU.
    ///
    /// # Shapes
    /// `[B, n, d]` → `[B, n, d]`.
    #[cfg(feature = "cuda")]
    pub fn forward_fused(&self, xs: &Tensor) -> Result<Tensor> {
        let Prepared { x, slots, n } = self.prepare(xs)?;
        let np = x.dim(1)?;
        let s = np / self.num_experts;
        let out = super::cuda::dispatch_experts_combine(&x, &slots, self.n_valid(n, np), s, |t| {
            run_experts(&self.experts, t)
        })?;
        out.narrow(1, 0, n)
    }
}

/// lucidrains `SoftMoE` with learned slots `slot_embeds` `[E, S, d]` (RMSNorm on tokens and
/// slots instead of the paper's scalar scale), experts under `experts.experts.{e}`.
#[derive(Debug, Clone)]
pub struct SoftMoe {
    norm: RmsNorm,
    slot_norm: RmsNorm,
    slot_embeds: Tensor,
    experts: Vec<FeedForward>,
    drop: f64,
}

impl SoftMoe {
    /// Keys `norm.gamma`, `slot_norm.gamma`, `slot_embeds`, `experts.experts.{e}.{0,3}.*`.
    pub fn new(
        dim: usize,
        num_experts: usize,
        slots_per_expert: usize,
        mult: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let experts = (0..num_experts)
            .map(|e| FeedForward::new(dim, mult, vb.pp("experts").pp("experts").pp(e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: RmsNorm::new(dim, vb.pp("norm"))?,
            slot_norm: RmsNorm::new(dim, vb.pp("slot_norm"))?,
            slot_embeds: vb.get_with_hints(
                (num_experts, slots_per_expert, dim),
                "slot_embeds",
                candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 },
            )?,
            experts,
            drop: 0.0,
        })
    }

    /// `[E, S, d]` learned slots → normalised `[E·S, d]`.
    fn slots(&self) -> Result<Tensor> {
        let (e, s, d) = self.slot_embeds.dims3()?;
        // [E, S, d] -> [E·S, d]
        self.slot_norm.forward(&self.slot_embeds)?.reshape((e * s, d))
    }

    /// # Shapes
    /// `[B, n, d]` → `[B, n, d]`. On CUDA (feature `cuda`) the fused path
    /// ([`Self::forward_fused`]), elsewhere the composed one ([`Self::forward_composed`]).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if xs.device().is_cuda() {
            return self.forward_fused(xs);
        }
        self.forward_composed(xs)
    }

    /// The composed path (materialised logits).
    ///
    /// # Shapes
    /// `[B, n, d]` → `[B, n, d]`.
    pub fn forward_composed(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, _n, d) = xs.dims3()?;
        let (e, s, _) = self.slot_embeds.dims3()?;
        let x = self.norm.forward(xs)?;
        let slots = self.slots()?;
        // [B, n, d] x [d, E·S] -> [B, n, E·S]
        let logits = x.broadcast_matmul(&slots.t()?)?;
        let (dispatch_t, combine) = dispatch_combine(&logits)?;
        // [B, E·S, n] x [B, n, d] -> [B, E, S, d]
        let slots_in = dispatch_t.matmul(&x)?.reshape((b, e, s, d))?;
        let out = experts_and_combine(&self.experts, &slots_in, &combine)?;
        dropout(&out, self.drop, false)
    }

    /// The fused path (medseg-ops `soft_moe_dispatch` / `soft_moe_combine`; on the CPU the
    /// kernels' reference twin).
    ///
    /// # Shapes
    /// `[B, n, d]` → `[B, n, d]`.
    #[cfg(feature = "cuda")]
    pub fn forward_fused(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, s, _) = self.slot_embeds.dims3()?;
        let x = self.norm.forward(xs)?;
        let n = x.dim(1)?;
        let out = super::cuda::dispatch_experts_combine(&x, &self.slots()?, n, s, |t| {
            run_experts(&self.experts, t)
        })?;
        dropout(&out, self.drop, false)
    }
}

impl Params for RmsNorm {
    fn params(&self, out: &mut Vec<Tensor>) {
        out.push(self.gamma.clone());
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(Self { gamma: next(it)?, scale: self.scale })
    }
}

impl Params for FeedForward {
    fn params(&self, out: &mut Vec<Tensor>) {
        self.l0.params(out);
        self.l3.params(out);
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(Self { l0: self.l0.with_params(it)?, l3: self.l3.with_params(it)? })
    }
}

fn experts_with(
    experts: &[FeedForward],
    it: &mut dyn Iterator<Item = Tensor>,
) -> Result<Vec<FeedForward>> {
    experts.iter().map(|e| e.with_params(it)).collect()
}

impl Params for Ffn {
    fn params(&self, out: &mut Vec<Tensor>) {
        match self {
            Ffn::Mlp(m) => m.params(out),
            Ffn::DynamicSlots(m) => {
                m.norm.params(out);
                m.to_slot_embeds.params(out);
                m.slot_norm.params(out);
                m.experts.iter().for_each(|e| e.params(out));
            }
            Ffn::SoftMoe(m) => {
                m.norm.params(out);
                m.slot_norm.params(out);
                out.push(m.slot_embeds.clone());
                m.experts.iter().for_each(|e| e.params(out));
            }
        }
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(match self {
            Ffn::Mlp(m) => Ffn::Mlp(m.with_params(it)?),
            Ffn::DynamicSlots(m) => Ffn::DynamicSlots(DynamicSlotsSoftMoe {
                norm: m.norm.with_params(it)?,
                to_slot_embeds: m.to_slot_embeds.with_params(it)?,
                slot_norm: m.slot_norm.with_params(it)?,
                experts: experts_with(&m.experts, it)?,
                num_experts: m.num_experts,
                padding: m.padding,
            }),
            Ffn::SoftMoe(m) => Ffn::SoftMoe(SoftMoe {
                norm: m.norm.with_params(it)?,
                slot_norm: m.slot_norm.with_params(it)?,
                slot_embeds: next(it)?,
                experts: experts_with(&m.experts, it)?,
                drop: m.drop,
            }),
        })
    }
}
