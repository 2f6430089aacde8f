//! The CNN blocks of Swin UNETR: MONAI `UnetResBlock`, `UnetOutBlock`
//! (`monai/networks/blocks/dynunet_block.py`) and `UnetrBasicBlock`, `UnetrUpBlock`
//! (`monai/networks/blocks/unetr_block.py`), MONAI 1.6.1, 3-D, instance norm, res blocks.
//! Convs have no bias except the output 1×1; InstanceNorm has no affine and no running stats.
use candle::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use medseg_ops::{
    Conv3dConfig, ConvTranspose3dConfig, conv_transpose3d, conv3d, instance_norm_leaky_relu,
    instance_norm3d,
};

use crate::layers::kaiming_uniform;

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
        let residual = match &self.conv3 {
            Some(c) => instance_norm3d(&c.forward(xs)?, None, None, IN_EPS)?,
            None => xs.clone(),
        };
        instance_norm_leaky_relu(&out, Some(&residual), IN_EPS, LEAKY_SLOPE)
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
        let up = conv_transpose3d(xs, &self.transp_conv, None, &ConvTranspose3dConfig::uniform(2))?;
        // [B, cout, ..] ++ [B, cout, ..] -> [B, 2·cout, ..]
        let cat = Tensor::cat(&[&up, skip], 1)?;
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
