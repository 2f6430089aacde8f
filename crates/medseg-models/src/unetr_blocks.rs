//! The CNN blocks of Swin UNETR: MONAI `UnetResBlock`, `UnetOutBlock`
//! (`monai/networks/blocks/dynunet_block.py`) and `UnetrBasicBlock`, `UnetrUpBlock`
//! (`monai/networks/blocks/unetr_block.py`), MONAI 1.6.1, 3-D, instance norm, res blocks.
//! Convs have no bias except the output 1×1; InstanceNorm has no affine and no running stats.
//!
//! Memory: candle keeps every input of every graph node until the loss is dropped, so the
//! blocks build as few full-resolution nodes as the convolutions allow. The norm–LeakyReLU tails
//! (with the residual, normalised or not) are one op each, and `UnetrUpBlock`'s transposed
//! convolution and concatenation are one node ([`up_cat`]) whose backward needs only its inputs,
//! so only the concatenation (the next convolutions' input) is kept.
use candle::{CpuStorage, CustomOp3, Layout, Module, Result, Shape, Storage, Tensor};
use candle_nn::VarBuilder;
use medseg_ops::{
    Conv3dConfig, ConvTranspose3dConfig, conv_transpose3d, conv3d,
    instance_norm_add_norm_leaky_relu, instance_norm_leaky_relu,
};

use crate::layers::{Params, kaiming_uniform, next};

const IN_EPS: f64 = 1e-5;
const LEAKY_SLOPE: f64 = 0.01;

/// A bias-free `Convolution` of MONAI (`<name>.conv.weight`), 3-D, cubic kernel.
#[derive(Debug, Clone)]
pub struct ConvNoBias {
    weight: Tensor,
    cfg: Conv3dConfig,
}

impl ConvNoBias {
    /// `Conv3d(cin, cout, k, stride 1, padding (k−1)/2, bias=False)` under `vb.pp("conv")`.
    pub fn new(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.pp("conv").get_with_hints(
            (cout, cin, k, k, k),
            "weight",
            kaiming_uniform(cin * k * k * k),
        )?;
        Ok(Self { weight, cfg: Conv3dConfig::uniform(1, (k - 1) / 2) })
    }
}

impl Module for ConvNoBias {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        conv3d(xs, &self.weight, None, &self.cfg)
    }
}

/// MONAI `UnetResBlock` (kernel 3, stride 1, instance norm, LeakyReLU 0.01).
#[derive(Debug, Clone)]
pub struct UnetResBlock {
    conv1: ConvNoBias,
    conv2: ConvNoBias,
    conv3: Option<ConvNoBias>,
}

impl UnetResBlock {
    /// `conv3` (1×1×1) exists iff `cin != cout`.
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let conv1 = ConvNoBias::new(cin, cout, 3, vb.pp("conv1"))?;
        let conv2 = ConvNoBias::new(cout, cout, 3, vb.pp("conv2"))?;
        let conv3 =
            if cin != cout { Some(ConvNoBias::new(cin, cout, 1, vb.pp("conv3"))?) } else { None };
        Ok(Self { conv1, conv2, conv3 })
    }
}

impl Module for UnetResBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // conv1 → norm1 → lrelu → conv2 → norm2 → (+ residual) → lrelu, the norm–lrelu tails fused
        // (`instance_norm_leaky_relu`) so their intermediate maps are not kept for backward.
        let out = self.conv1.forward(xs)?;
        let out = instance_norm_leaky_relu(&out, None, IN_EPS, LEAKY_SLOPE)?;
        let out = self.conv2.forward(&out)?;
        match &self.conv3 {
            // norm3(conv3(x)) is normalised inside the op, never kept.
            Some(c) => {
                instance_norm_add_norm_leaky_relu(&out, &c.forward(xs)?, IN_EPS, LEAKY_SLOPE)
            }
            None => instance_norm_leaky_relu(&out, Some(xs), IN_EPS, LEAKY_SLOPE),
        }
    }
}

/// MONAI `UnetrBasicBlock` with `res_block=True` (`<name>.layer.*`).
#[derive(Debug, Clone)]
pub struct UnetrBasicBlock {
    layer: UnetResBlock,
}

impl UnetrBasicBlock {
    /// `UnetrBasicBlock(cin → cout, k3, s1, "instance", res_block=True)`.
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { layer: UnetResBlock::new(cin, cout, vb.pp("layer"))? })
    }
}

impl Module for UnetrBasicBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.layer.forward(xs)
    }
}

impl Params for ConvNoBias {
    fn params(&self, out: &mut Vec<Tensor>) {
        out.push(self.weight.clone());
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(Self { weight: next(it)?, cfg: self.cfg })
    }
}

impl Params for UnetResBlock {
    fn params(&self, out: &mut Vec<Tensor>) {
        self.conv1.params(out);
        self.conv2.params(out);
        if let Some(c) = &self.conv3 {
            c.params(out);
        }
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        let conv1 = self.conv1.with_params(it)?;
        let conv2 = self.conv2.with_params(it)?;
        let conv3 = self.conv3.as_ref().map(|c| c.with_params(it)).transpose()?;
        Ok(Self { conv1, conv2, conv3 })
    }
}

impl Params for UnetrBasicBlock {
    fn params(&self, out: &mut Vec<Tensor>) {
        self.layer.params(out);
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(Self { layer: self.layer.with_params(it)? })
    }
}

/// MONAI `UnetrUpBlock`: ConvTranspose k2 s2 (no bias) → cat(up, skip) → `UnetResBlock`.
#[derive(Debug, Clone)]
pub struct UnetrUpBlock {
    transp_conv: Tensor,
    conv_block: UnetResBlock,
}

impl UnetrUpBlock {
    /// `transp_conv.conv.weight` is `[cin, cout, 2, 2, 2]` (PyTorch ConvTranspose layout).
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        // PyTorch computes ConvTranspose fan_in from weight.size(1)·k³ = cout·8.
        let transp_conv = vb.pp("transp_conv").pp("conv").get_with_hints(
            (cin, cout, 2, 2, 2),
            "weight",
            kaiming_uniform(cout * 8),
        )?;
        let conv_block = UnetResBlock::new(2 * cout, cout, vb.pp("conv_block"))?;
        Ok(Self { transp_conv, conv_block })
    }

    /// # Shapes
    /// `x` `[B, cin, D, H, W]`, `skip` `[B, cout, 2D, 2H, 2W]` → `[B, cout, 2D, 2H, 2W]`.
    pub fn forward(&self, xs: &Tensor, skip: &Tensor) -> Result<Tensor> {
        // [B, cout, ..] ++ [B, cout, ..] -> [B, 2·cout, ..]
        let cat = up_cat(xs, &self.transp_conv, skip, &ConvTranspose3dConfig::uniform(2))?;
        self.conv_block.forward(&cat)
    }
}

/// MONAI `UnetOutBlock`: 1×1×1 conv with bias (`out.conv.conv.{weight,bias}`).
#[derive(Debug, Clone)]
pub struct UnetOutBlock {
    weight: Tensor,
    bias: Tensor,
}

impl UnetOutBlock {
    /// `Conv3d(cin, cout, 1, bias=True)`.
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv").pp("conv");
        let weight = vb.get_with_hints((cout, cin, 1, 1, 1), "weight", kaiming_uniform(cin))?;
        let bias = vb.get_with_hints(cout, "bias", kaiming_uniform(cin))?;
        Ok(Self { weight, bias })
    }
}

impl Module for UnetOutBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        conv3d(xs, &self.weight, Some(&self.bias), &Conv3dConfig::default())
    }
}

/// `cat([conv_transpose3d(x, w), skip], 1)` as one graph node (on the CPU in f32, for a
/// transposed convolution whose kernel equals its stride: the UNETR up-sampling), so the
/// up-sampled map is not kept for backward. Its backward needs only `x`, `w` and the gradient:
/// `dx` is the stride-k convolution of the gradient with `w`, `dw` one matrix product (the
/// kernel's taps do not overlap). Elsewhere, and as the reference, [`up_cat_reference`].
///
/// # Shapes
/// `x` `[B, Ci, D, H, W]`, `w` `[Ci, Co, k, k, k]`, `skip` `[B, Cs, k·D, k·H, k·W]` →
/// `[B, Co + Cs, k·D, k·H, k·W]`.
pub fn up_cat(
    x: &Tensor,
    w: &Tensor,
    skip: &Tensor,
    cfg: &ConvTranspose3dConfig,
) -> Result<Tensor> {
    let f32s = [x, w, skip].iter().all(|t| t.dtype() == candle::DType::F32);
    let plain = ConvTranspose3dConfig { stride: cfg.stride, ..Default::default() };
    let k_is_stride = w.rank() == 5 && w.dims()[2..] == cfg.stride;
    if !x.device().is_cpu() || !f32s || *cfg != plain || !k_is_stride || w.dim(0)? != x.dim(1)? {
        return up_cat_reference(x, w, skip, cfg);
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &skip.contiguous()?, UpCat { cfg: *cfg })
}

/// The composed form of [`up_cat`]: the transposed convolution, then `Tensor::cat`.
pub fn up_cat_reference(
    x: &Tensor,
    w: &Tensor,
    skip: &Tensor,
    cfg: &ConvTranspose3dConfig,
) -> Result<Tensor> {
    let up = conv_transpose3d(x, w, None, cfg)?;
    Tensor::cat(&[&up, skip], 1)
}

/// [`up_cat`]'s op: kernel = stride, no padding, one group (checked by `up_cat`).
struct UpCat {
    cfg: ConvTranspose3dConfig,
}

/// A contiguous f32 slice of a CPU storage.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle::bail!("up_cat: expected f32") };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle::bail!("up_cat: non-contiguous input {:?}", l.shape())
    };
    Ok(&v[a..b])
}

impl CustomOp3 for UpCat {
    fn name(&self) -> &'static str {
        "up_cat"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let cpu = &candle::Device::Cpu;
        let x = Tensor::from_slice(f32_slice(s1, l1)?, l1.shape(), cpu)?;
        let w = Tensor::from_slice(f32_slice(s2, l2)?, l2.shape(), cpu)?;
        let skip = f32_slice(s3, l3)?;
        let up = conv_transpose3d(&x, &w, None, &self.cfg)?.contiguous()?;
        let (ud, sd) = (up.dims(), l3.dims());
        if sd.len() != 5 || ud[0] != sd[0] || ud[2..] != sd[2..] {
            candle::bail!("up_cat: up-sampled {ud:?} and skip {sd:?} do not concatenate on dim 1")
        }
        let (st, ul) = up.storage_and_layout();
        let Storage::Cpu(us) = &*st else { candle::bail!("up_cat: expected a CPU tensor") };
        let u = f32_slice(us, ul)?;
        let b = ud[0];
        let (un, sn) = (u.len() / b, skip.len() / b);
        let mut out = Vec::with_capacity(u.len() + skip.len());
        for i in 0..b {
            // [Co, …] then [Cs, …] of sample i
            out.extend_from_slice(&u[i * un..(i + 1) * un]);
            out.extend_from_slice(&skip[i * sn..(i + 1) * sn]);
        }
        let shape = Shape::from(vec![b, ud[1] + sd[1], ud[2], ud[3], ud[4]]);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        skip: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, ci, d, h, wd) = x.dims5()?;
        let co = w.dim(1)?;
        let [k0, k1, k2] = self.cfg.stride;
        let d_up = grad.narrow(1, 0, co)?.contiguous()?;
        let d_skip = grad.narrow(1, co, skip.dim(1)?)?;
        // The adjoint of a transposed convolution is the convolution with the same weight
        // ([Ci, Co, k…] read as [out, in, k…]).
        let conv = Conv3dConfig { stride: self.cfg.stride, ..Default::default() };
        let dx = conv3d(&d_up, &w.detach(), None, &conv)?;
        // dw[ci, co, a, b, c] = Σ_p x[ci, p] · dy[co, k·p + (a, b, c)]:
        // [B, Co, D, k, H, k, W, k] -> [B, Co, k, k, k, D, H, W] -> [B, Co·k³, P]
        let dy = d_up
            .reshape(vec![b, co, d, k0, h, k1, wd, k2])?
            .permute(vec![0, 1, 3, 5, 7, 2, 4, 6])?
            .contiguous()?
            .reshape((b, co * k0 * k1 * k2, d * h * wd))?;
        drop(d_up);
        // [B, Ci, P] @ [B, P, Co·k³] -> Σ_B -> [Ci, Co, k, k, k]
        let dw = x
            .detach()
            .reshape((b, ci, d * h * wd))?
            .matmul(&dy.transpose(1, 2)?)?
            .sum(0)?
            .reshape((ci, co, k0, k1, k2))?;
        Ok((Some(dx), Some(dw), Some(d_skip)))
    }
}
