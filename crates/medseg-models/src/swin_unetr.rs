//! Swin UNETR (Hatamizadeh et al. 2022, arXiv:2201.01266), Swin UNETR-v2 (He et al. 2023,
//! arXiv:2307.09828) and Swin SMT (Płotka et al., MICCAI 2024, arXiv:2407.07514).
//! Port of MONAI 1.6.1 `monai/networks/nets/swin_unetr.py` (`SwinUNETR`) and of
//! MI2DataLab/SwinSMT `src/models/swin_smt.py` @ f36f1fc (the MoE hook, a config switch here).
//! Weight names equal MONAI `state_dict()` keys; see `tests/golden/swin_unetr_fs12_keys.txt`.
//! The configuration lives in [`crate::config`].
use candle::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::{CheckpointBlock, checkpointed_block};
use crate::config::SwinUnetrConfig;
use crate::swin_transformer::SwinTransformer;
use crate::unetr_blocks::{UnetOutBlock, UnetrBasicBlock, UnetrUpBlock};

/// MONAI `SwinUNETR`: Swin encoder + CNN skip encoders + UNETR decoder.
#[derive(Debug, Clone)]
pub struct SwinUnetr {
    /// `swinViT`.
    pub swin_vit: SwinTransformer,
    encoder1: UnetrBasicBlock,
    encoder2: UnetrBasicBlock,
    encoder3: UnetrBasicBlock,
    encoder4: UnetrBasicBlock,
    encoder10: UnetrBasicBlock,
    decoder5: UnetrUpBlock,
    decoder4: UnetrUpBlock,
    decoder3: UnetrUpBlock,
    decoder2: UnetrUpBlock,
    decoder1: UnetrUpBlock,
    out: UnetOutBlock,
    normalize: bool,
    patch_size: usize,
    checkpoint_encoders: bool,
}

impl SwinUnetr {
    /// Builds the model; `vb` keys are MONAI's `state_dict()` keys.
    pub fn new(cfg: &SwinUnetrConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let fs = cfg.feature_size;
        let swin_vit = SwinTransformer::new(cfg, vb.pp("swinViT"))?;
        let enc = |i: usize, o: usize, name: &str| UnetrBasicBlock::new(i, o, vb.pp(name));
        let dec = |i: usize, o: usize, name: &str| UnetrUpBlock::new(i, o, vb.pp(name));
        Ok(Self {
            swin_vit,
            encoder1: enc(cfg.in_channels, fs, "encoder1")?,
            encoder2: enc(fs, fs, "encoder2")?,
            encoder3: enc(2 * fs, 2 * fs, "encoder3")?,
            encoder4: enc(4 * fs, 4 * fs, "encoder4")?,
            encoder10: enc(16 * fs, 16 * fs, "encoder10")?,
            decoder5: dec(16 * fs, 8 * fs, "decoder5")?,
            decoder4: dec(8 * fs, 4 * fs, "decoder4")?,
            decoder3: dec(4 * fs, 2 * fs, "decoder3")?,
            decoder2: dec(2 * fs, fs, "decoder2")?,
            decoder1: dec(fs, fs, "decoder1")?,
            out: UnetOutBlock::new(fs, cfg.out_channels, vb.pp("out"))?,
            normalize: cfg.normalize,
            patch_size: cfg.patch_size,
            checkpoint_encoders: cfg.checkpoint_encoders,
        })
    }

    /// MONAI `_check_input_size`: every spatial dim divisible by `patch_size**5`.
    pub fn check_input_size(&self, xs: &Tensor) -> Result<()> {
        let (_b, _c, d, h, w) = xs.dims5()?;
        let m = self.patch_size.pow(5);
        if [d, h, w].iter().any(|s| s % m != 0) {
            candle::bail!("spatial dims {:?} must be divisible by {m} (patch_size**5)", (d, h, w))
        }
        Ok(())
    }

    /// Forward pass; `train` enables dropout and stochastic depth (no-ops at rate 0).
    ///
    /// # Shapes
    /// `[B, in_channels, D, H, W]` → `[B, out_channels, D, H, W]`, D/H/W divisible by 32.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input_size(xs)?;
        let hs = self.swin_vit.forward_t(xs, self.normalize, train)?;
        let enc0 = self.encode(&self.encoder1, xs, train)?;
        let enc1 = self.encode(&self.encoder2, &hs[0], train)?;
        let enc2 = self.encode(&self.encoder3, &hs[1], train)?;
        let enc3 = self.encode(&self.encoder4, &hs[2], train)?;
        let dec4 = self.encode(&self.encoder10, &hs[4], train)?;
        let dec3 = self.decoder5.forward(&dec4, &hs[3])?;
        let dec2 = self.decoder4.forward(&dec3, &enc3)?;
        let dec1 = self.decoder3.forward(&dec2, &enc2)?;
        let dec0 = self.decoder2.forward(&dec1, &enc1)?;
        let out = self.decoder1.forward(&dec0, &enc0)?;
        self.out.forward(&out)
    }
}

impl SwinUnetr {
    /// An encoder block, recomputed in backward with `checkpoint_encoders` when training or
    /// when its input is part of a recorded graph (`encoder1`'s input, the image, never is).
    fn encode(&self, blk: &UnetrBasicBlock, xs: &Tensor, train: bool) -> Result<Tensor> {
        if self.checkpoint_encoders && (train || xs.track_op()) {
            checkpointed_block(blk, xs, None, train)
        } else {
            blk.forward(xs)
        }
    }
}

impl CheckpointBlock for UnetrBasicBlock {
    fn forward_block(&self, xs: &Tensor, _mask: Option<&Tensor>, _train: bool) -> Result<Tensor> {
        self.forward(xs)
    }
}

impl Module for SwinUnetr {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_t(xs, false)
    }
}
