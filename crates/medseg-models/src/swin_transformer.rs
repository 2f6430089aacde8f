//! Swin Transformer encoder of Swin UNETR (Liu et al. 2021 arXiv:2103.14030, 3-D variant of
//! Hatamizadeh et al. 2022). Port of MONAI 1.6.1 `monai/networks/nets/swin_unetr.py`:
//! `WindowAttention`, `SwinTransformerBlock`, `PatchMerging`/`PatchMergingV2`, `BasicLayer`,
//! `SwinTransformer`, and `monai/networks/blocks/patchembedding.py` `PatchEmbed`.
//! Keys equal MONAI's (`swinViT.` prefix added by the caller). `LayerNorm` and `Mlp` live in
//! [`crate::layers`], the Soft MoE FFN of Swin SMT in [`crate::soft_moe`].
use candle::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use medseg_ops::{
    Conv3dConfig, conv3d, pad_to_windows, relative_position_index_sliced, roll3d,
    shifted_window_mask, window_and_shift, window_attention_qkv, window_partition, window_reverse,
};

use crate::checkpoint::CheckpointBlock;
use crate::config::{MergeOrder, SwinUnetrConfig};
use crate::layers::{
    LN_EPS, LayerNorm, Params, apply_linear, drop_path, dropout, kaiming_uniform, linear, next,
};
use crate::soft_moe::Ffn;
use crate::unetr_blocks::UnetrBasicBlock;

/// MONAI `WindowAttention` (3-D): qkv projection, relative-position bias sliced from the
/// configured window's index (MONAI's `[:n, :n]` quirk), optional shifted-window mask.
#[derive(Debug, Clone)]
pub struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    relative_position_bias_table: Tensor,
    window: [usize; 3],
    num_heads: usize,
    scale: f64,
    attn_drop: f64,
    proj_drop: f64,
}

impl WindowAttention {
    /// Keys `qkv.*`, `proj.*`, `relative_position_bias_table` `[(2wd−1)(2wh−1)(2ww−1), heads]`.
    /// The `relative_position_index` buffer is recomputed (the loader checks a stored one).
    pub fn new(
        dim: usize,
        num_heads: usize,
        window: [usize; 3],
        qkv_bias: bool,
        attn_drop: f64,
        proj_drop: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let table_len: usize = window.iter().map(|w| 2 * w - 1).product();
        let relative_position_bias_table = vb.get_with_hints(
            (table_len, num_heads),
            "relative_position_bias_table",
            candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        )?;
        Ok(Self {
            qkv: linear(dim, 3 * dim, qkv_bias, vb.pp("qkv"))?,
            proj: linear(dim, dim, true, vb.pp("proj"))?,
            relative_position_bias_table,
            window,
            num_heads,
            scale: ((dim / num_heads) as f64).powf(-0.5),
            attn_drop,
            proj_drop,
        })
    }

    /// # Shapes
    /// `x` `[B·nW, N, C]`, `mask` `[nW, N, N]` → `[B·nW, N, C]`.
    pub fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (bw, n, c) = xs.dims3()?;
        let h = self.num_heads;
        let hd = c / h;
        let qkv = apply_linear(&self.qkv, xs)?;
        let idx = relative_position_index_sliced(self.window, n)?;
        let idx = Tensor::from_vec(idx, n * n, xs.device())?;
        // table[index[:n, :n]]: [N·N, h] -> [N, N, h] -> [h, N, N]
        let bias = self
            .relative_position_bias_table
            .index_select(&idx, 0)?
            .reshape((n, n, h))?
            .permute((2, 0, 1))?
            .contiguous()?
            .to_dtype(qkv.dtype())?;
        let out = if train && self.attn_drop > 0.0 {
            // Composed path so attention dropout can be applied to the weights.
            // [Bw, N, 3C] -> [Bw, N, 3, h, hd] -> [3, Bw, h, N, hd]
            let qkv = qkv.reshape((bw, n, 3, h, hd))?.permute((2, 0, 3, 1, 4))?;
            let q = qkv.get(0)?.contiguous()?;
            let k = qkv.get(1)?.contiguous()?;
            let v = qkv.get(2)?.contiguous()?;
            let mut attn = (q * self.scale)?.matmul(&k.t()?)?.broadcast_add(&bias.unsqueeze(0)?)?;
            if let Some(m) = mask {
                let nw = m.dim(0)?;
                // [Bw, h, N, N] -> [B, nW, h, N, N] + [1, nW, 1, N, N]
                attn = attn
                    .reshape((bw / nw, nw, h, n, n))?
                    .broadcast_add(&m.unsqueeze(1)?.unsqueeze(0)?)?
                    .reshape((bw, h, n, n))?;
            }
            let attn = dropout(&medseg_ops::softmax_last_dim(&attn)?, self.attn_drop, train)?;
            // [Bw, h, N, hd] -> [Bw, N, h, hd] -> [Bw, N, C]
            attn.matmul(&v)?.transpose(1, 2)?.reshape((bw, n, c))?
        } else {
            // Fused: never materialises the [Bw, h, N, N] attention matrix.
            window_attention_qkv(&qkv, h, self.scale, Some(&bias), mask)?
        };
        dropout(&apply_linear(&self.proj, &out)?, self.proj_drop, train)
    }
}

/// MONAI `SwinTransformerBlock` (pre-norm, residual), 3-D; the FFN is an [`Ffn`].
#[derive(Debug, Clone)]
pub struct SwinTransformerBlock {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    mlp: Ffn,
    window: [usize; 3],
    shift: [usize; 3],
    drop_path: f64,
}

impl SwinTransformerBlock {
    /// `shift` is `[0; 3]` for even blocks and `window / 2` for odd blocks (before shrinking).
    pub fn new(
        cfg: &SwinUnetrConfig,
        stage: usize,
        dim: usize,
        shift: [usize; 3],
        drop_path: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let window = cfg.window();
        Ok(Self {
            norm1: LayerNorm::new(dim, vb.pp("norm1"))?,
            attn: WindowAttention::new(
                dim,
                cfg.num_heads[stage],
                window,
                cfg.qkv_bias,
                cfg.attn_drop_rate,
                cfg.drop_rate,
                vb.pp("attn"),
            )?,
            norm2: LayerNorm::new(dim, vb.pp("norm2"))?,
            mlp: Ffn::new(cfg, stage, dim, vb.pp("mlp"))?,
            window,
            shift,
            drop_path,
        })
    }

    /// `forward_part1`: norm1, pad, roll, window attention, un-roll, crop.
    fn forward_part1(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (b, d, h, w, _c) = xs.dims5()?;
        let (window, shift) = window_and_shift([d, h, w], self.window, self.shift);
        let x = self.norm1.forward(xs)?;
        // Zeros at the end of D, H, W *after* norm1; padded tokens are not masked (MONAI).
        let (x, [dp, hp, wp]) = pad_to_windows(&x, window)?;
        let shifted = shift.iter().any(|&s| s > 0);
        let x = if shifted {
            roll3d(&x, [-(shift[0] as isize), -(shift[1] as isize), -(shift[2] as isize)])?
        } else {
            x
        };
        // [B, Dp, Hp, Wp, C] -> [B·nW, N, C]
        let windows = window_partition(&x, window)?;
        let attn = self.attn.forward_t(&windows, if shifted { mask } else { None }, train)?;
        // [B·nW, N, C] -> [B, Dp, Hp, Wp, C]
        let x = window_reverse(&attn, window, [b, dp, hp, wp])?;
        let x = if shifted {
            roll3d(&x, [shift[0] as isize, shift[1] as isize, shift[2] as isize])?
        } else {
            x
        };
        if (dp, hp, wp) != (d, h, w) {
            x.narrow(1, 0, d)?.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()
        } else {
            Ok(x)
        }
    }

    /// `forward_part2`: `mlp(norm2(x))` (Swin SMT: over the flattened stage volume).
    fn forward_part2(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm2.forward(xs)?;
        let y = self.mlp.forward_t(&y, train)?;
        drop_path(&y, self.drop_path, train)
    }

    /// # Shapes
    /// `x` `[B, D, H, W, C]`, `mask` `[nW, N, N]` of the stage (used only when shifted).
    pub fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let x = (xs + drop_path(&self.forward_part1(xs, mask, train)?, self.drop_path, train)?)?;
        &x + self.forward_part2(&x, train)?
    }
}

/// MONAI `PatchMerging` / `PatchMergingV2` (3-D): pad odd dims, concatenate the 8
/// sub-lattices in the chosen [`MergeOrder`], LayerNorm(8C), Linear(8C → 2C, no bias).
#[derive(Debug, Clone)]
pub struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
    order: MergeOrder,
}

impl PatchMerging {
    /// Keys `reduction.weight` `[2C, 8C]`, `norm.{weight,bias}` `[8C]`.
    pub fn new(dim: usize, order: MergeOrder, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            reduction: linear(8 * dim, 2 * dim, false, vb.pp("reduction"))?,
            norm: LayerNorm::new(8 * dim, vb.pp("norm"))?,
            order,
        })
    }
}

impl Module for PatchMerging {
    /// `[B, D, H, W, C]` → `[B, ⌈D/2⌉, ⌈H/2⌉, ⌈W/2⌉, 2C]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut x = xs.clone();
        for axis in 1..4 {
            if x.dim(axis)? % 2 == 1 {
                x = x.pad_with_zeros(axis, 0, 1)?;
            }
        }
        let (b, d, h, w, c) = x.dims5()?;
        let (d2, h2, w2) = (d / 2, h / 2, w / 2);
        // [B, D, H, W, C] -> [B, D/2, 2, H/2, 2, W/2, 2, C]
        let x = x.reshape(vec![b, d2, 2, h2, 2, w2, 2, c])?;
        // -> [B, D/2, H/2, W/2, 2(a), 2(b), 2(c), C]
        let x = x.permute(vec![0, 1, 3, 5, 2, 4, 6, 7])?.contiguous()?;
        // -> [B·D/2·H/2·W/2, 8 (a·4 + b·2 + c), C]
        let x = x.reshape((b * d2 * h2 * w2, 8, c))?;
        let idx = Tensor::new(&self.order.sublattices(), x.device())?;
        // gather in concatenation order, [M, 8, C] -> [M, 8C] -> [B, D/2, H/2, W/2, 8C]
        let x = x.index_select(&idx, 1)?.reshape((b, d2, h2, w2, 8 * c))?;
        apply_linear(&self.reduction, &self.norm.forward(&x)?)
    }
}

/// MONAI `PatchEmbed` (3-D): Conv3d(k = s = patch) with bias, optional LayerNorm.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    proj_w: Tensor,
    proj_b: Tensor,
    norm: Option<LayerNorm>,
    patch: usize,
}

impl PatchEmbed {
    /// Keys `proj.{weight,bias}`, `norm.*` when `patch_norm`.
    pub fn new(cin: usize, dim: usize, patch: usize, norm: bool, vb: VarBuilder) -> Result<Self> {
        let fan_in = cin * patch * patch * patch;
        let proj = vb.pp("proj");
        Ok(Self {
            proj_w: proj.get_with_hints(
                (dim, cin, patch, patch, patch),
                "weight",
                kaiming_uniform(fan_in),
            )?,
            proj_b: proj.get_with_hints(dim, "bias", kaiming_uniform(fan_in))?,
            norm: if norm { Some(LayerNorm::new(dim, vb.pp("norm"))?) } else { None },
            patch,
        })
    }
}

impl Module for PatchEmbed {
    /// `[B, Cin, D, H, W]` → `[B, dim, D/p, H/p, W/p]` (zero-padding non-divisible dims).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut x = xs.clone();
        for axis in (2..5).rev() {
            let r = x.dim(axis)? % self.patch;
            if r != 0 {
                x = x.pad_with_zeros(axis, 0, self.patch - r)?;
            }
        }
        let cfg = Conv3dConfig::uniform(self.patch, 0);
        let x = conv3d(&x, &self.proj_w, Some(&self.proj_b), &cfg)?;
        match &self.norm {
            None => Ok(x),
            Some(n) => {
                // [B, C, D, H, W] -> [B, D, H, W, C] -> LN -> back
                n.forward(&x.permute((0, 2, 3, 4, 1))?)?.permute((0, 4, 1, 2, 3))?.contiguous()
            }
        }
    }
}

/// MONAI `BasicLayer`: the Swin blocks of one stage, then patch merging.
#[derive(Debug, Clone)]
pub struct BasicLayer {
    blocks: Vec<SwinTransformerBlock>,
    downsample: PatchMerging,
    window: [usize; 3],
    use_checkpoint: bool,
}

impl BasicLayer {
    /// Keys `blocks.{j}.*`, `downsample.*`; `dpr` are the per-block drop-path rates.
    pub fn new(cfg: &SwinUnetrConfig, stage: usize, dpr: &[f64], vb: VarBuilder) -> Result<Self> {
        let dim = cfg.feature_size << stage;
        let window = cfg.window();
        let shift = window.map(|w| w / 2);
        let mut blocks = Vec::with_capacity(cfg.depths[stage]);
        for (j, &rate) in dpr.iter().enumerate() {
            let s = if j % 2 == 0 { [0; 3] } else { shift };
            let vbj = vb.pp("blocks").pp(j);
            blocks.push(SwinTransformerBlock::new(cfg, stage, dim, s, rate, vbj)?);
        }
        let downsample = PatchMerging::new(dim, cfg.resolved_merge_order(), vb.pp("downsample"))?;
        Ok(Self { blocks, downsample, window, use_checkpoint: cfg.use_checkpoint })
    }

    /// `[B, C, D, H, W]` → `[B, 2C, D/2, H/2, W/2]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (_b, _c, d, h, w) = xs.dims5()?;
        let (window, shift) = window_and_shift([d, h, w], self.window, self.window.map(|v| v / 2));
        let size = [d, h, w];
        let padded = [0, 1, 2].map(|a| size[a].div_ceil(window[a]) * window[a]);
        let mask = shifted_window_mask(padded, window, shift, xs.device())?;
        // [B, C, D, H, W] -> [B, D, H, W, C]
        let mut x = xs.permute((0, 2, 3, 4, 1))?.contiguous()?;
        for blk in &self.blocks {
            x = if self.use_checkpoint && train_or_grad(&x) {
                crate::checkpoint::checkpointed_block(blk, &x, Some(&mask), train)?
            } else {
                blk.forward_t(&x, Some(&mask), train)?
            };
        }
        let x = self.downsample.forward(&x)?;
        // [B, D', H', W', C'] -> [B, C', D', H', W']
        x.permute((0, 4, 1, 2, 3))?.contiguous()
    }

    /// The blocks (for checkpointing and inspection).
    pub fn blocks(&self) -> &[SwinTransformerBlock] {
        &self.blocks
    }
}

/// Checkpointing only pays off when a graph is being recorded.
fn train_or_grad(x: &Tensor) -> bool {
    x.track_op()
}

/// MONAI `SwinTransformer` (`swinViT`): patch embedding, 4 stages (`layers1`…`layers4`), and
/// the v2 residual blocks (`layers1c`…`layers4c`).
#[derive(Debug, Clone)]
pub struct SwinTransformer {
    patch_embed: PatchEmbed,
    layers: Vec<BasicLayer>,
    layers_c: Vec<UnetrBasicBlock>,
    pos_drop: f64,
}

impl SwinTransformer {
    /// Builds from the SwinUNETR config; `vb` is the `swinViT` prefix.
    pub fn new(cfg: &SwinUnetrConfig, vb: VarBuilder) -> Result<Self> {
        let fs = cfg.feature_size;
        let patch_embed = PatchEmbed::new(
            cfg.in_channels,
            fs,
            cfg.patch_size,
            cfg.patch_norm,
            vb.pp("patch_embed"),
        )?;
        // torch.linspace(0, dropout_path_rate, sum(depths))
        let total: usize = cfg.depths.iter().sum();
        let dpr: Vec<f64> = (0..total)
            .map(|i| {
                if total > 1 { cfg.dropout_path_rate * i as f64 / (total - 1) as f64 } else { 0.0 }
            })
            .collect();
        let mut layers = Vec::with_capacity(4);
        let mut layers_c = Vec::new();
        let mut start = 0;
        for i in 0..4 {
            let rates = &dpr[start..start + cfg.depths[i]];
            start += cfg.depths[i];
            layers.push(BasicLayer::new(cfg, i, rates, vb.pp(format!("layers{}", i + 1)).pp(0))?);
            if cfg.use_v2 {
                let d = fs << i;
                layers_c.push(UnetrBasicBlock::new(
                    d,
                    d,
                    vb.pp(format!("layers{}c", i + 1)).pp(0),
                )?);
            }
        }
        Ok(Self { patch_embed, layers, layers_c, pos_drop: cfg.drop_rate })
    }

    /// The 5 hidden states `[B, fs·2^i, D/2^(i+1), H/2^(i+1), W/2^(i+1)]`, i = 0..4, each
    /// layer-normalised over channels (no affine) when `normalize`.
    pub fn forward_t(&self, xs: &Tensor, normalize: bool, train: bool) -> Result<Vec<Tensor>> {
        let mut x = dropout(&self.patch_embed.forward(xs)?, self.pos_drop, train)?;
        let mut outs = Vec::with_capacity(5);
        outs.push(proj_out(&x, normalize)?);
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(c) = self.layers_c.get(i) {
                x = c.forward(&x)?;
            }
            x = layer.forward_t(&x, train)?;
            outs.push(proj_out(&x, normalize)?);
        }
        Ok(outs)
    }

    /// The four stages.
    pub fn layers(&self) -> &[BasicLayer] {
        &self.layers
    }
}

/// MONAI `SwinTransformer.proj_out`: parameter-free LayerNorm over channels.
pub fn proj_out(xs: &Tensor, normalize: bool) -> Result<Tensor> {
    if !normalize {
        return Ok(xs.clone());
    }
    // [B, C, D, H, W] -> [B, D, H, W, C]
    let x = xs.permute((0, 2, 3, 4, 1))?;
    let x = medseg_ops::layer_norm(&x, None, None, LN_EPS)?;
    // [B, D, H, W, C] -> [B, C, D, H, W]
    x.permute((0, 4, 1, 2, 3))?.contiguous()
}

impl Params for WindowAttention {
    fn params(&self, out: &mut Vec<Tensor>) {
        self.qkv.params(out);
        self.proj.params(out);
        out.push(self.relative_position_bias_table.clone());
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        let qkv = self.qkv.with_params(it)?;
        let proj = self.proj.with_params(it)?;
        Ok(Self { qkv, proj, relative_position_bias_table: next(it)?, ..self.clone() })
    }
}

impl CheckpointBlock for SwinTransformerBlock {
    fn forward_block(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        self.forward_t(xs, mask, train)
    }
}

impl Params for SwinTransformerBlock {
    fn params(&self, out: &mut Vec<Tensor>) {
        self.norm1.params(out);
        self.attn.params(out);
        self.norm2.params(out);
        self.mlp.params(out);
    }

    fn with_params(&self, it: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(Self {
            norm1: self.norm1.with_params(it)?,
            attn: self.attn.with_params(it)?,
            norm2: self.norm2.with_params(it)?,
            mlp: self.mlp.with_params(it)?,
            ..self.clone()
        })
    }
}
