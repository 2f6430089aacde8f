//! The model configuration: [`SwinUnetrConfig`] (MONAI `SwinUNETR.__init__` and Swin SMT
//! argument names, serde, presets, `validate`) and its enums [`MergeOrder`], [`MoeKind`],
//! [`MoePadding`], [`PerDim`].
//!
//! First in the crate's import order (config → layers → soft_moe → swin_transformer →
//! {swin_unetr, ssl_head}): this module imports no other module of the crate.
use candle::Result;
use serde::{Deserialize, Serialize};

/// Order in which `PatchMerging` concatenates the 8 sub-lattices `x[:, a::2, b::2, c::2]`
/// (swin-reference §1.6). The parameters are identical; only their meaning differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeOrder {
    /// MONAI 0.9 … 1.4 "merging": (0,0,0) (1,0,0) (0,1,0) (0,0,1) (1,0,1) (0,1,0) (0,0,1)
    /// (1,1,1) — two sub-lattices duplicated. All public checkpoints and Swin SMT.
    Legacy,
    /// MONAI ≥ 1.5 "merging": (0,0,0) (1,0,0) (0,1,0) (0,0,1) (1,1,0) (1,0,1) (0,1,1) (1,1,1).
    Fixed,
    /// "mergingv2" (`PatchMergingV2`): itertools.product order (a slowest, c fastest).
    V2,
}

impl MergeOrder {
    /// Offsets `(a, b, c)` along (D, H, W), each encoded `a·4 + b·2 + c`, in concatenation order.
    pub fn sublattices(self) -> [u32; 8] {
        match self {
            MergeOrder::Legacy => [0, 4, 2, 1, 5, 2, 1, 7],
            MergeOrder::Fixed => [0, 4, 2, 1, 6, 5, 3, 7],
            MergeOrder::V2 => [0, 1, 2, 3, 4, 5, 6, 7],
        }
    }

    /// The config spelling: `legacy`, `fixed` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeOrder::Legacy => "legacy",
            MergeOrder::Fixed => "fixed",
            MergeOrder::V2 => "v2",
        }
    }

    /// Parses `legacy`, `fixed` or `v2`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "legacy" => Ok(MergeOrder::Legacy),
            "fixed" => Ok(MergeOrder::Fixed),
            "v2" => Ok(MergeOrder::V2),
            other => candle::bail!("unknown merge order {other:?}: expected legacy, fixed or v2"),
        }
    }
}

/// Which Soft MoE replaces the MLP in the Swin SMT stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoeKind {
    /// lucidrains `DynamicSlotsSoftMoE` as used by the official Swin SMT code (swin-reference §2.3).
    DynamicSlots,
    /// Fixed learned slots (Puigcerver et al. 2024; lucidrains `SoftMoE`), `slots_per_expert`
    /// slots per expert.
    FixedSlots,
}

/// How the dynamic-slot Soft MoE treats the zero tokens that pad a stage sequence to a
/// multiple of `num_experts` (only matters when the token count is not a multiple).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoePadding {
    /// The official Swin SMT code (MI2DataLab/SwinSMT @ f36f1fc, its bundled
    /// `soft_moe_with_dynamic_slots.py`): the mask is built after padding, of the padded length,
    /// so it is all true. The padding tokens count in the group means (every group divides by
    /// E) and take part in the dispatch softmax over tokens. Checkpoints trained with the
    /// official code carry this behaviour; the default.
    #[default]
    Official,
    /// soft-moe-pytorch 0.1.9 (PyPI): padding tokens are masked out of the group means (the last
    /// group divides by its real tokens) and of the dispatch softmax.
    Masked,
}

impl MoePadding {
    /// The config spelling: `official` or `masked`.
    pub fn as_str(self) -> &'static str {
        match self {
            MoePadding::Official => "official",
            MoePadding::Masked => "masked",
        }
    }
}

/// A MONAI argument that is either one integer for every spatial dim or one per dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerDim {
    /// Same value along D, H and W.
    Scalar(usize),
    /// `[D, H, W]`.
    Dims([usize; 3]),
}

impl PerDim {
    /// The value along D, H, W.
    pub fn dims(self) -> [usize; 3] {
        match self {
            PerDim::Scalar(v) => [v; 3],
            PerDim::Dims(d) => d,
        }
    }
}

/// Mirrors `SwinUNETR.__init__` (MONAI 1.6.1) and `SwinSMT.__init__`; field names are the
/// Python argument names, defaults are MONAI's. medseg-only fields: `merge_order`,
/// `moe_kind`, `slots_per_expert`, `moe_padding`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwinUnetrConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (classes).
    pub out_channels: usize,
    /// Pre-1.5 / Swin SMT argument; only validated (divisible by 32), never used to size weights.
    #[serde(default)]
    pub img_size: Option<PerDim>,
    /// Patch-embedding kernel and stride (MONAI default 2).
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// Swin blocks per stage; odd block indices are shifted.
    #[serde(default = "d_depths")]
    pub depths: [usize; 4],
    /// Attention heads per stage.
    #[serde(default = "d_heads")]
    pub num_heads: [usize; 4],
    /// Attention window (MONAI default 7).
    #[serde(default = "d_window")]
    pub window_size: PerDim,
    /// Bias in the qkv projection.
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    /// MLP hidden size = `int(dim · mlp_ratio)`.
    #[serde(default = "d_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Embedding size of stage 1; must be divisible by 12 (MONAI default 24).
    #[serde(default = "d_fs")]
    pub feature_size: usize,
    /// CNN-branch norm; only "instance" (MONAI default) is supported.
    #[serde(default = "d_norm")]
    pub norm_name: String,
    /// Dropout after the patch embedding and inside the MLP (training only).
    #[serde(default)]
    pub drop_rate: f64,
    /// Attention dropout (training only).
    #[serde(default)]
    pub attn_drop_rate: f64,
    /// Maximum stochastic-depth rate (linear over all blocks; training only).
    #[serde(default)]
    pub dropout_path_rate: f64,
    /// Parameter-free LayerNorm on the 5 encoder outputs.
    #[serde(default = "d_true")]
    pub normalize: bool,
    /// LayerNorm after the patch embedding (`swinViT.patch_embed.norm.*`).
    #[serde(default)]
    pub patch_norm: bool,
    /// Gradient checkpointing: recompute each Swin block in backward.
    #[serde(default)]
    pub use_checkpoint: bool,
    /// medseg extension: recompute the CNN encoder blocks (`encoder1`–`encoder4`, `encoder10`)
    /// in backward too. `encoder1` works at full resolution, so this lowers a training step's
    /// peak memory by about four full-resolution feature maps for one more forward pass of
    /// that block. The decoder blocks are never checkpointed: their backward runs first, while
    /// every other activation is still alive, so recomputing them would not lower the peak.
    #[serde(default)]
    pub checkpoint_encoders: bool,
    /// Only 3 is supported.
    #[serde(default = "d_spatial")]
    pub spatial_dims: usize,
    /// "merging" or "mergingv2".
    #[serde(default = "d_downsample")]
    pub downsample: String,
    /// Residual conv block before each Swin stage (SwinUNETR-v2).
    #[serde(default)]
    pub use_v2: bool,
    /// MONAI 1.6.1 SDPA switch; numerically identical, accepted and ignored.
    #[serde(default)]
    pub use_flash_attention: bool,
    /// medseg: concatenation order of "merging"; `None` = V2 for "mergingv2", Legacy for Swin
    /// SMT (`use_moe`: its code vendors the pre-1.5 `PatchMerging`), else MONAI 1.6.1's Fixed.
    /// Use `Legacy` for every checkpoint made before MONAI 1.5.
    #[serde(default)]
    pub merge_order: Option<MergeOrder>,
    /// Swin SMT: replace the MLP by a Soft MoE in the last `num_layers_with_moe` stages.
    #[serde(default)]
    pub use_moe: bool,
    /// Swin SMT: number of trailing stages with MoE (default 2).
    #[serde(default = "d_moe_layers")]
    pub num_layers_with_moe: usize,
    /// Swin SMT: experts per MoE block (default 4).
    #[serde(default = "d_experts")]
    pub num_experts: usize,
    /// medseg: which Soft MoE (default the dynamic-slot one of Swin SMT).
    #[serde(default = "d_moe_kind")]
    pub moe_kind: MoeKind,
    /// medseg: slots per expert of the fixed-slot Soft MoE.
    #[serde(default)]
    pub slots_per_expert: Option<usize>,
    /// medseg: padding semantics of the dynamic-slot Soft MoE, `"official"` (default, the
    /// official Swin SMT code) or `"masked"` (soft-moe-pytorch 0.1.9); see [`MoePadding`].
    #[serde(default)]
    pub moe_padding: MoePadding,
}

fn d_patch() -> usize {
    2
}
fn d_depths() -> [usize; 4] {
    [2, 2, 2, 2]
}
fn d_heads() -> [usize; 4] {
    [3, 6, 12, 24]
}
fn d_window() -> PerDim {
    PerDim::Scalar(7)
}
fn d_true() -> bool {
    true
}
fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_fs() -> usize {
    24
}
fn d_norm() -> String {
    "instance".to_string()
}
fn d_spatial() -> usize {
    3
}
fn d_downsample() -> String {
    "merging".to_string()
}
fn d_moe_layers() -> usize {
    2
}
fn d_experts() -> usize {
    4
}
fn d_moe_kind() -> MoeKind {
    MoeKind::DynamicSlots
}

impl SwinUnetrConfig {
    /// MONAI defaults for the given channels (feature_size 24, "merging" = Fixed order).
    pub fn monai_default(in_channels: usize, out_channels: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            img_size: None,
            patch_size: d_patch(),
            depths: d_depths(),
            num_heads: d_heads(),
            window_size: d_window(),
            qkv_bias: true,
            mlp_ratio: d_mlp_ratio(),
            feature_size: d_fs(),
            norm_name: d_norm(),
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            dropout_path_rate: 0.0,
            normalize: true,
            patch_norm: false,
            use_checkpoint: false,
            checkpoint_encoders: false,
            spatial_dims: 3,
            downsample: d_downsample(),
            use_v2: false,
            use_flash_attention: false,
            merge_order: None,
            use_moe: false,
            num_layers_with_moe: d_moe_layers(),
            num_experts: d_experts(),
            moe_kind: d_moe_kind(),
            slots_per_expert: None,
            moe_padding: MoePadding::Official,
        }
    }

    /// Research-contributions BTCV size presets with legacy merge order (the released
    /// `swin_unetr.{tiny,small,base}_5000ep_*.pt` checkpoints were trained before MONAI 1.5).
    fn btcv_sized(feature_size: usize) -> Self {
        Self { feature_size, merge_order: Some(MergeOrder::Legacy), ..Self::monai_default(1, 14) }
    }

    /// Tiny: feature_size 12, 1 → 14 channels (4,078,220 parameters).
    pub fn tiny() -> Self {
        Self::btcv_sized(12)
    }

    /// Small: feature_size 24 (15,703,304 parameters).
    pub fn small() -> Self {
        Self::btcv_sized(24)
    }

    /// Base: feature_size 48 (62,187,296 parameters).
    pub fn base() -> Self {
        Self::btcv_sized(48)
    }

    /// Large: feature_size 96.
    pub fn large() -> Self {
        Self::btcv_sized(96)
    }

    /// The BTCV checkpoint `swin_unetr.base_5000ep_f48_lr2e-4_pretrained.pt`: fs 48, 14 classes,
    /// legacy merge order.
    pub fn btcv() -> Self {
        Self::base()
    }

    /// The Swin SMT paper model: fs 48, 118 classes, v1, dynamic-slot MoE with 32 experts in
    /// stages 2–4, legacy merge order (170,783,560 parameters).
    pub fn swin_smt_paper() -> Self {
        Self {
            use_moe: true,
            num_layers_with_moe: 3,
            num_experts: 32,
            out_channels: 118,
            ..Self::base()
        }
    }

    /// Parses a JSON config with MONAI argument names.
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(s)
            .map_err(|e| candle::Error::Msg(format!("invalid SwinUNETR config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The merge order actually used: `merge_order` if set, else V2 for "mergingv2", else Legacy
    /// for Swin SMT (`use_moe`; the official code defines its own pre-MONAI-1.5
    /// `PatchMerging`), else Fixed (MONAI ≥ 1.5 "merging").
    pub fn resolved_merge_order(&self) -> MergeOrder {
        self.merge_order_with_source().0
    }

    /// [`Self::resolved_merge_order`] and a few words on where it comes from, for logs.
    pub fn merge_order_with_source(&self) -> (MergeOrder, &'static str) {
        match (self.merge_order, self.downsample.as_str()) {
            (Some(o), _) => (o, "set by the config"),
            (None, "mergingv2") => (MergeOrder::V2, "default of downsample \"mergingv2\""),
            (None, _) if self.use_moe => (MergeOrder::Legacy, "Swin SMT default"),
            (None, _) => (MergeOrder::Fixed, "MONAI 1.6.1 default of \"merging\""),
        }
    }

    /// Attention window along D, H, W.
    pub fn window(&self) -> [usize; 3] {
        self.window_size.dims()
    }

    /// Whether 0-based stage `i` uses a Soft MoE instead of the MLP (Swin SMT rule
    /// `num_layers − i ≤ num_layers_with_moe`).
    pub fn stage_uses_moe(&self, i: usize) -> bool {
        self.use_moe && 4 - i <= self.num_layers_with_moe
    }

    /// Cross-field checks of MONAI's constructor plus the medseg extensions.
    pub fn validate(&self) -> Result<()> {
        if self.spatial_dims != 3 {
            candle::bail!(
                "spatial_dims {} unsupported: only 3-D models are ported",
                self.spatial_dims
            )
        }
        if self.feature_size == 0 || !self.feature_size.is_multiple_of(12) {
            candle::bail!("feature_size {} must be a positive multiple of 12", self.feature_size)
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            candle::bail!(
                "in_channels {} and out_channels {} must be positive",
                self.in_channels,
                self.out_channels
            )
        }
        for (name, r) in [
            ("drop_rate", self.drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("dropout_path_rate", self.dropout_path_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                candle::bail!("{name} {r} must be in [0, 1]")
            }
        }
        if self.norm_name != "instance" {
            candle::bail!("norm_name {:?} unsupported: only \"instance\"", self.norm_name)
        }
        if !matches!(self.downsample.as_str(), "merging" | "mergingv2") {
            candle::bail!("downsample {:?} must be \"merging\" or \"mergingv2\"", self.downsample)
        }
        if self.patch_size == 0 {
            candle::bail!("patch_size must be ≥ 1")
        }
        if self.window().contains(&0) {
            candle::bail!("window_size {:?} must be ≥ 1", self.window())
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            candle::bail!("mlp_ratio {} must be positive", self.mlp_ratio)
        }
        for i in 0..4 {
            let dim = self.feature_size << i;
            let h = self.num_heads[i];
            if h == 0 || !dim.is_multiple_of(h) {
                candle::bail!("stage {i}: dim {dim} is not divisible by num_heads {h}")
            }
            if self.depths[i] == 0 {
                candle::bail!("stage {i}: depth must be ≥ 1 (depths {:?})", self.depths)
            }
        }
        if let Some(img) = self.img_size
            && img.dims().iter().any(|s| s % 32 != 0)
        {
            candle::bail!("img_size {:?} must be divisible by 32", img.dims())
        }
        if self.use_moe {
            if self.num_experts == 0 {
                candle::bail!("num_experts must be ≥ 1")
            }
            if self.num_layers_with_moe > 4 {
                candle::bail!("num_layers_with_moe {} must be ≤ 4", self.num_layers_with_moe)
            }
            if self.moe_kind == MoeKind::FixedSlots && self.slots_per_expert.unwrap_or(0) == 0 {
                candle::bail!("moe_kind fixed_slots needs slots_per_expert ≥ 1")
            }
        }
        Ok(())
    }
}
