//! The model boundary of inference and training: [`SegModel`] (logits from a batch), the model
//! configs a run can name (`[model]` of a run's `config.toml`), and [`TinyUnet`], a small 3-D U-Net
//! built from medseg-ops that serves as the fast test model.
use candle::{Result as CResult, Tensor};
use candle_nn::VarBuilder;
use medseg_ops::{Conv3dConfig, ConvTranspose3dConfig, conv_transpose3d, conv3d, instance_norm3d};

use medseg_models::{SwinUnetr, SwinUnetrConfig};

use crate::{Error, Result};

/// A segmentation network that inference and the trainer can drive.
///
/// # Shapes
/// `forward_t`: `[B, in_channels, D, H, W] → [B, out_channels, D, H, W]` logits.
pub trait SegModel: Send + Sync {
    /// The forward pass; `train` enables train-only behaviour (dropout, drop path).
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor>;
    /// Every spatial input dim must be a multiple of this.
    fn size_divisor(&self) -> usize;
}

/// The network of a run (`[model]` table, `kind` selects the variant).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    /// [`TinyUnet`].
    TinyUnet(TinyUnetConfig),
    /// MONAI `SwinUNETR` (v1/v2) or Swin SMT from medseg-models; fields are MONAI's arguments.
    SwinUnetr(Box<SwinUnetrConfig>),
}

impl ModelConfig {
    /// Input channels.
    pub fn in_channels(&self) -> usize {
        match self {
            ModelConfig::TinyUnet(c) => c.in_channels,
            ModelConfig::SwinUnetr(c) => c.in_channels,
        }
    }
    /// Output channels (classes including background).
    pub fn out_channels(&self) -> usize {
        match self {
            ModelConfig::TinyUnet(c) => c.out_channels,
            ModelConfig::SwinUnetr(c) => c.out_channels,
        }
    }
    /// Spatial divisor of inputs.
    pub fn size_divisor(&self) -> usize {
        match self {
            ModelConfig::TinyUnet(c) => 1 << (c.levels.clamp(1, 7) - 1),
            ModelConfig::SwinUnetr(c) => c.patch_size.pow(5),
        }
    }
    /// Checks the model's own fields.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::TinyUnet(c) => {
                if c.levels == 0 || c.levels > 6 || c.features == 0 || c.in_channels == 0 {
                    return Err(Error::Config(format!(
                        "model: tiny_unet needs 1 ≤ levels ≤ 6, features ≥ 1, in_channels ≥ 1; \
                         got levels {}, features {}, in_channels {}",
                        c.levels, c.features, c.in_channels
                    )));
                }
                Ok(())
            }
            ModelConfig::SwinUnetr(c) => {
                c.validate().map_err(|e| Error::Config(format!("model (swin_unetr): {e}")))
            }
        }
    }
    /// Short name of the variant (`tiny_unet`, `swin_unetr`).
    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::TinyUnet(_) => "tiny_unet",
            ModelConfig::SwinUnetr(_) => "swin_unetr",
        }
    }
    /// Builds the network, creating its variables through `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Box<dyn SegModel>> {
        self.validate()?;
        match self {
            ModelConfig::TinyUnet(c) => Ok(Box::new(TinyUnet::new(c, vb)?)),
            ModelConfig::SwinUnetr(c) => Ok(Box::new(SwinUnetr::new(c.as_ref(), vb)?)),
        }
    }
}

/// Settings of [`TinyUnet`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyUnetConfig {
    /// Image channels.
    pub in_channels: usize,
    /// Classes including background.
    pub out_channels: usize,
    /// Channels of the first level; level `i` has `features·2^i`.
    pub features: usize,
    /// Resolution levels (inputs must be divisible by `2^(levels−1)`).
    pub levels: usize,
}

/// conv 3×3×3 → instance norm (affine) → leaky ReLU 0.01.
#[derive(Debug, Clone)]
struct ConvBlock {
    w: Tensor,
    b: Tensor,
    gamma: Tensor,
    beta: Tensor,
    stride: usize,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> CResult<Self> {
        let fan_in = (cin * 27) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let init = candle_nn::Init::Uniform { lo: -bound, up: bound };
        let w = vb.pp("conv").get_with_hints((cout, cin, 3, 3, 3), "weight", init)?;
        let b = vb.pp("conv").get_with_hints(cout, "bias", init)?;
        let gamma = vb.pp("norm").get_with_hints(cout, "weight", candle_nn::Init::Const(1.0))?;
        let beta = vb.pp("norm").get_with_hints(cout, "bias", candle_nn::Init::Const(0.0))?;
        Ok(ConvBlock { w, b, gamma, beta, stride })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let y = conv3d(x, &self.w, Some(&self.b), &Conv3dConfig::uniform(self.stride, 1))?;
        let y = instance_norm3d(&y, Some(&self.gamma), Some(&self.beta), 1e-5)?;
        medseg_ops::leaky_relu(&y, 0.01)
    }
}

/// A small 3-D U-Net: per level two [`ConvBlock`]s (the first strided below level 0), transposed
/// convolutions k2 s2 up, skip concatenation, a 1×1×1 output convolution.
#[derive(Debug, Clone)]
pub struct TinyUnet {
    down: Vec<(ConvBlock, ConvBlock)>,
    up: Vec<(Tensor, Tensor, ConvBlock)>,
    out_w: Tensor,
    out_b: Tensor,
    levels: usize,
}

impl TinyUnet {
    /// Creates the variables under `down_<i>`, `up_<i>` and `out`.
    pub fn new(cfg: &TinyUnetConfig, vb: VarBuilder) -> CResult<Self> {
        let ch = |i: usize| cfg.features << i;
        let mut down = Vec::new();
        for i in 0..cfg.levels {
            let vbi = vb.pp(format!("down_{i}"));
            let cin = if i == 0 { cfg.in_channels } else { ch(i - 1) };
            let stride = if i == 0 { 1 } else { 2 };
            down.push((
                ConvBlock::new(cin, ch(i), stride, vbi.pp("block1"))?,
                ConvBlock::new(ch(i), ch(i), 1, vbi.pp("block2"))?,
            ));
        }
        let mut up = Vec::new();
        for i in (0..cfg.levels.saturating_sub(1)).rev() {
            let vbi = vb.pp(format!("up_{i}"));
            let bound = 1.0 / ((ch(i + 1) * 8) as f64).sqrt();
            let init = candle_nn::Init::Uniform { lo: -bound, up: bound };
            let tw = vbi.pp("transp_conv").get_with_hints(
                (ch(i + 1), ch(i), 2, 2, 2),
                "weight",
                init,
            )?;
            let tb = vbi.pp("transp_conv").get_with_hints(ch(i), "bias", init)?;
            up.push((tw, tb, ConvBlock::new(2 * ch(i), ch(i), 1, vbi.pp("block"))?));
        }
        let bound = 1.0 / (cfg.features as f64).sqrt();
        let init = candle_nn::Init::Uniform { lo: -bound, up: bound };
        let out_w = vb.pp("out").pp("conv").get_with_hints(
            (cfg.out_channels, cfg.features, 1, 1, 1),
            "weight",
            init,
        )?;
        let out_b = vb.pp("out").pp("conv").get_with_hints(cfg.out_channels, "bias", init)?;
        Ok(TinyUnet { down, up, out_w, out_b, levels: cfg.levels })
    }
}

impl SegModel for TinyUnet {
    fn forward_t(&self, x: &Tensor, _train: bool) -> CResult<Tensor> {
        let mut skips = Vec::with_capacity(self.levels);
        let mut h = x.clone();
        for (a, b) in &self.down {
            h = b.forward(&a.forward(&h)?)?;
            skips.push(h.clone());
        }
        skips.pop();
        for (tw, tb, block) in &self.up {
            let u = conv_transpose3d(&h, tw, Some(tb), &ConvTranspose3dConfig::uniform(2))?;
            let skip =
                skips.pop().ok_or_else(|| candle::Error::Msg("unet skip underflow".into()))?;
            // [B, c, D, H, W] ++ [B, c, D, H, W] -> [B, 2c, D, H, W]
            h = block.forward(&Tensor::cat(&[&u, &skip], 1)?)?;
        }
        conv3d(&h, &self.out_w, Some(&self.out_b), &Conv3dConfig::default())
    }

    fn size_divisor(&self) -> usize {
        1 << (self.levels - 1)
    }
}

impl SegModel for SwinUnetr {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        SwinUnetr::forward_t(self, x, train)
    }

    fn size_divisor(&self) -> usize {
        32
    }
}
