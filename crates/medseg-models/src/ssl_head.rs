//! `SSLHead` of the Swin UNETR self-supervised pretraining (Tang et al., CVPR 2022,
//! arXiv:2111.14791). Port of Project-MONAI/research-contributions
//! `SwinUNETR/Pretrain/models/ssl_head.py` @ 21ed8e5 (default `upsample="vae"`).
//! Keys: `swinViT.*`, `rotation_head.*`, `contrastive_head.*`, `conv.{0,4,8,12,16,20}.*`.
use candle::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use medseg_ops::{
    Conv3dConfig, InterpolationMode, Resize, conv3d, instance_norm_leaky_relu, interpolate3d,
};
use serde::{Deserialize, Serialize};

use crate::config::{MergeOrder, SwinUnetrConfig};
use crate::layers::{kaiming_uniform, linear};
use crate::swin_transformer::SwinTransformer;

/// Arguments of the pretraining script that shape `SSLHead`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslHeadConfig {
    /// `--in_channels` (default 1).
    pub in_channels: usize,
    /// `--feature_size` (default 48; the heads assume `dim = 16·feature_size`).
    pub feature_size: usize,
    /// `--dropout_path_rate`.
    #[serde(default)]
    pub dropout_path_rate: f64,
    /// Merge order of the backbone (the released `model_swinvit.pt` is Legacy).
    pub merge_order: MergeOrder,
}

impl SslHeadConfig {
    /// The published pretraining setting: fs 48, one channel, legacy merge order.
    pub fn pretrain() -> Self {
        Self {
            in_channels: 1,
            feature_size: 48,
            dropout_path_rate: 0.0,
            merge_order: MergeOrder::Legacy,
        }
    }

    /// The backbone config (`SwinTransformer` arguments of `SSLHead.__init__`).
    pub fn backbone(&self) -> SwinUnetrConfig {
        SwinUnetrConfig {
            feature_size: self.feature_size,
            dropout_path_rate: self.dropout_path_rate,
            merge_order: Some(self.merge_order),
            ..SwinUnetrConfig::monai_default(self.in_channels, 1)
        }
    }
}

/// Convolution with bias (`conv.{idx}.{weight,bias}`).
#[derive(Debug, Clone)]
struct ConvBias {
    w: Tensor,
    b: Tensor,
    pad: usize,
}

impl ConvBias {
    fn new(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        let init = kaiming_uniform(cin * k * k * k);
        Ok(Self {
            w: vb.get_with_hints((cout, cin, k, k, k), "weight", init)?,
            b: vb.get_with_hints(cout, "bias", init)?,
            pad: (k - 1) / 2,
        })
    }
}

impl Module for ConvBias {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        conv3d(xs, &self.w, Some(&self.b), &Conv3dConfig::uniform(1, self.pad))
    }
}

/// `SSLHead`: rotation (token 0), contrastive (token 1) and reconstruction heads on the
/// normalised bottleneck of the Swin encoder.
#[derive(Debug, Clone)]
pub struct SslHead {
    swin_vit: SwinTransformer,
    rotation_head: Linear,
    contrastive_head: Linear,
    convs: Vec<ConvBias>,
}

impl SslHead {
    /// Builds the head; `dim = 16·feature_size`.
    pub fn new(cfg: &SslHeadConfig, vb: VarBuilder) -> Result<Self> {
        let bcfg = cfg.backbone();
        bcfg.validate()?;
        let dim = 16 * cfg.feature_size;
        let swin_vit = SwinTransformer::new(&bcfg, vb.pp("swinViT"))?;
        let rotation_head = linear(dim, 4, true, vb.pp("rotation_head"))?;
        let contrastive_head = linear(dim, 512, true, vb.pp("contrastive_head"))?;
        let chans = [dim, dim / 2, dim / 4, dim / 8, dim / 16, dim / 16];
        let mut convs = Vec::with_capacity(6);
        for i in 0..5 {
            convs.push(ConvBias::new(chans[i], chans[i + 1], 3, vb.pp("conv").pp(4 * i))?);
        }
        convs.push(ConvBias::new(dim / 16, cfg.in_channels, 1, vb.pp("conv").pp(20))?);
        Ok(Self { swin_vit, rotation_head, contrastive_head, convs })
    }

    /// The Swin encoder (`swinViT.*`), e.g. for statistics of its hidden states.
    pub fn encoder(&self) -> &SwinTransformer {
        &self.swin_vit
    }

    /// # Shapes
    /// `[B, in, D, H, W]` (D, H, W divisible by 32) → (`x_rot` `[B, 4]`,
    /// `x_contrastive` `[B, 512]`, `x_rec` `[B, in, D, H, W]`).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let hs = self.swin_vit.forward_t(xs, true, train)?;
        let x_out = &hs[4];
        let (b, c, d, h, w) = x_out.dims5()?;
        if d * h * w < 2 {
            candle::bail!("SSLHead needs ≥ 2 bottleneck tokens, got {:?}", (d, h, w))
        }
        // [B, C, d, h, w] -> [B, C, n] -> [B, n, C]
        let tokens = x_out.reshape((b, c, d * h * w))?.transpose(1, 2)?;
        let x_rot = self.rotation_head.forward(&tokens.narrow(1, 0, 1)?.squeeze(1)?)?;
        let x_con = self.contrastive_head.forward(&tokens.narrow(1, 1, 1)?.squeeze(1)?)?;
        let mut x = x_out.clone();
        for conv in &self.convs[..5] {
            x = conv.forward(&x)?;
            x = instance_norm_leaky_relu(&x, None, 1e-5, 0.01)?;
            x = interpolate3d(&x, Resize::Scale([2.0; 3]), InterpolationMode::Trilinear)?;
        }
        let x_rec = self.convs[5].forward(&x)?;
        Ok((x_rot, x_con, x_rec))
    }
}
