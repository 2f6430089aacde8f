//! The attention ops: the composed [`window_attention`], the fused [`window_attention_qkv`] the
//! models call (with [`window_attention_qkv_reference`], its composed twin and test oracle) and the
//! general [`fused_attention`], all on one candle custom op, `FusedAttention`, whose `cpu_fwd`
//! runs the CPU kernel of `cpu.rs` and whose `cuda_fwd` launches `kernels/attention.cu`
//! (`cuda.rs`), with one backward op of the same shape.
//!
//! Argument packing: candle custom ops take at most three tensors, so `q`, `k`, `v` travel as one
//! buffer (a [`QkvLayout`]: MONAI's raw `qkv` projection read in place on CPU, or `q ‖ k ‖ v`
//! concatenated, as the CUDA kernels read it), `bias` and `mask` as the second and third (a
//! one-element placeholder when absent). The backward op takes `(qkv, dout)` and holds `bias`,
//! `mask` and the forward output; it returns the flat f32 gradients `[dqkv ‖ dbias]`.
use candle::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use medseg_kernels::AttentionGeom;

use super::cpu::{self, QkvLayout};
use crate::activation::{softmax_last_dim, softmax_last_dim_reference};
use crate::storage::f32_slice;

/// `softmax(q·kᵀ·scale + bias + mask)·v` for windows of `N` tokens.
///
/// # Shapes
/// - `q`, `k`, `v`: `[B·nW, heads, N, hd]`
/// - `bias`: `[heads, N, N]` (relative-position bias), broadcast over windows
/// - `mask`: `[nW, N, N]` (shifted-window mask), broadcast over the batch and heads
/// - returns `[B·nW, heads, N, hd]`
///
/// Mirrors MONAI `WindowAttention.forward`: `q` is scaled before the product.
pub fn window_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    composed(q, k, v, scale, bias, mask, softmax_last_dim)
}

/// [`window_attention`] with the softmax as a parameter (the fast op, or candle-nn's composed one
/// for the reference).
fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
    softmax: fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (bw, heads, n, _hd) = q.dims4()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle::bail!(
            "window_attention: q {:?}, k {:?}, v {:?} must have equal shapes",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    // [Bw, h, N, hd] x [Bw, h, hd, N] -> [Bw, h, N, N]
    let mut attn = (q * scale)?.matmul(&k.t()?)?;
    if let Some(bias) = bias {
        if bias.dims() != [heads, n, n] {
            candle::bail!("window_attention: bias {:?} must be [{heads}, {n}, {n}]", bias.dims())
        }
        attn = attn.broadcast_add(&bias.unsqueeze(0)?)?;
    }
    if let Some(mask) = mask {
        let nw = mask.dim(0)?;
        if mask.dims() != [nw, n, n] || nw == 0 || bw % nw != 0 {
            candle::bail!(
                "window_attention: mask {:?} must be [nW, {n}, {n}] with nW dividing {bw}",
                mask.dims()
            )
        }
        // [Bw, h, N, N] -> [B, nW, h, N, N] + [1, nW, 1, N, N]
        attn = attn
            .reshape((bw / nw, nw, heads, n, n))?
            .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
            .reshape((bw, heads, n, n))?;
    }
    let attn = softmax(&attn)?;
    attn.matmul(&v.contiguous()?)
}

/// Fused window attention on the raw `qkv` projection, as MONAI's `WindowAttention` computes it
/// between `self.qkv` and `self.proj`: per window and head, `softmax(q·scale·kᵀ + bias + mask)·v`,
/// heads concatenated back into channels.
///
/// # Shapes
/// - `qkv`: `[B·nW, N, 3·C]`, the `nn.Linear(C, 3C)` output (PyTorch's `reshape(B, N, 3, h, hd)`
///   channel order)
/// - `bias`: `[heads, N, N]`, `mask`: `[nW, N, N]` (window `b` uses mask `b mod nW`)
/// - returns `[B·nW, N, C]`
///
/// On CPU and CUDA the fused op computes each row of the attention matrix in cache and never
/// materialises `[B·nW, heads, N, N]`; the backward recomputes the probabilities (as
/// flash-attention does) and returns gradients for `qkv` and `bias`. On CPU the kernel reads
/// `qkv` in place; on CUDA `q`, `k`, `v` are split out first (bf16 runs the bf16 kernels with f32
/// accumulation). On other devices, and as the reference, [`window_attention_qkv_reference`]
/// composes the same product from candle ops.
pub fn window_attention_qkv(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let geom = Geometry::new(qkv, heads, bias, mask)?;
    match qkv.device() {
        Device::Cpu => {
            let g = AttentionGeom {
                batch: geom.bw,
                heads,
                nq: geom.n,
                nk: geom.n,
                d: geom.hd,
                dv: geom.hd,
                mask_windows: geom.nw,
                n_valid: geom.n,
                scale: scale as f32,
            };
            let op = FusedAttention::new(g, QkvLayout::Interleaved, bias, mask);
            let (bias, mask) = op.bias_mask(bias, mask, DType::F32, qkv.device())?;
            let y = qkv.to_dtype(DType::F32)?.contiguous()?.apply_op3(&bias, &mask, op)?;
            y.reshape((geom.bw, geom.n, geom.c))?.to_dtype(qkv.dtype())
        }
        Device::Cuda(_) => {
            // [Bw, N, 3C] -> [Bw, N, 3, h, hd] -> [3, Bw, h, N, hd]
            let qkv =
                qkv.reshape((geom.bw, geom.n, 3, heads, geom.hd))?.permute((2, 0, 3, 1, 4))?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let out = fused_attention(&q, &k, &v, scale, bias, mask, None)?;
            // [Bw, h, N, hd] -> [Bw, N, h, hd] -> [Bw, N, C]
            out.transpose(1, 2)?.reshape((geom.bw, geom.n, geom.c))
        }
        _ => window_attention_qkv_reference(qkv, heads, scale, bias, mask),
    }
}

/// Composed reference of [`window_attention_qkv`]: MONAI's reshape/permute of `qkv`, the product
/// of [`window_attention`] with candle-nn's softmax (every step candle's own op and backward, in
/// the input dtype), and the transpose back to `[B·nW, N, C]`.
pub fn window_attention_qkv_reference(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let g = Geometry::new(qkv, heads, bias, mask)?;
    // [Bw, N, 3C] -> [Bw, N, 3, h, hd] -> [3, Bw, h, N, hd]
    let qkv = qkv.reshape((g.bw, g.n, 3, heads, g.hd))?.permute((2, 0, 3, 1, 4))?;
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let bias = bias.map(|b| b.to_dtype(q.dtype())).transpose()?;
    let mask = mask.map(|m| m.to_dtype(q.dtype())).transpose()?;
    let out =
        composed(&q, &k, &v, scale, bias.as_ref(), mask.as_ref(), softmax_last_dim_reference)?;
    // [Bw, h, N, hd] -> [Bw, N, h, hd] -> [Bw, N, C]
    out.transpose(1, 2)?.reshape((g.bw, g.n, g.c))
}

/// Sizes of a fused window-attention call, validated once.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    bw: usize,
    n: usize,
    c: usize,
    hd: usize,
    /// Windows per image (the mask's first dim; 1 without a mask).
    nw: usize,
}

impl Geometry {
    fn new(
        qkv: &Tensor,
        heads: usize,
        bias: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<Self> {
        let (bw, n, c3) = qkv.dims3()?;
        if !qkv.dtype().is_float() || heads == 0 || c3 == 0 || c3 % (3 * heads) != 0 || n == 0 {
            candle::bail!(
                "window_attention_qkv: qkv {:?} {:?} must be float [B·nW, N, 3·C] with C \
                 divisible by heads = {heads}",
                qkv.dtype(),
                qkv.dims()
            )
        }
        if let Some(b) = bias
            && b.dims() != [heads, n, n]
        {
            candle::bail!("window_attention_qkv: bias {:?} must be [{heads}, {n}, {n}]", b.dims())
        }
        let nw = match mask {
            Some(m) => {
                let nw = m.dim(0)?;
                if m.dims() != [nw, n, n] || nw == 0 || bw % nw != 0 {
                    candle::bail!(
                        "window_attention_qkv: mask {:?} must be [nW, {n}, {n}] with nW dividing \
                         {bw}",
                        m.dims()
                    )
                }
                nw
            }
            None => 1,
        };
        let c = c3 / 3;
        Ok(Self { bw, n, c, hd: c / heads, nw })
    }
}

/// Fused `softmax(q·kᵀ·scale + bias + mask)·v` with `keys ≥ n_valid` excluded.
///
/// # Shapes
/// - `q` `[B, H, nq, d]`, `k` `[B, H, nk, d]`, `v` `[B, H, nk, dv]`
/// - `bias` `[H, nq, nk]` (shared by the batch), `mask` `[nW, nq, nk]` (item `b` uses `b mod nW`)
/// - returns `[B, H, nq, dv]` in `q`'s dtype
///
/// bf16 on CUDA runs the bf16 kernels (f32 accumulation); every other case computes in f32.
/// Gradients flow to `q`, `k`, `v` and `bias`; the mask is a constant.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
    n_valid: Option<usize>,
) -> Result<Tensor> {
    let (b, h, nq, d) = q.dims4()?;
    let (kb, kh, nk, kd) = k.dims4()?;
    let (vb, vh, vn, dv) = v.dims4()?;
    if (kb, kh, kd) != (b, h, d) || (vb, vh, vn) != (b, h, nk) {
        candle::bail!(
            "fused_attention: q {:?}, k {:?}, v {:?} do not fit [B, H, nq, d], [B, H, nk, d], \
             [B, H, nk, dv]",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if let Some(bias) = bias
        && bias.dims() != [h, nq, nk]
    {
        candle::bail!("fused_attention: bias {:?} must be [{h}, {nq}, {nk}]", bias.dims())
    }
    let mask_windows = match mask {
        Some(m) => {
            let nw = m.dim(0)?;
            if m.dims() != [nw, nq, nk] || nw == 0 || b % nw != 0 {
                candle::bail!(
                    "fused_attention: mask {:?} must be [nW, {nq}, {nk}] with nW dividing {b}",
                    m.dims()
                )
            }
            nw
        }
        None => 1,
    };
    let n_valid = n_valid.unwrap_or(nk);
    if n_valid > nk {
        candle::bail!("fused_attention: n_valid {n_valid} exceeds the {nk} keys")
    }
    let g = AttentionGeom {
        batch: b,
        heads: h,
        nq,
        nk,
        d,
        dv,
        mask_windows,
        n_valid,
        scale: scale as f32,
    };
    let dtype = q.dtype();
    let compute =
        if q.device().is_cuda() && dtype == DType::BF16 { DType::BF16 } else { DType::F32 };
    let flat = |t: &Tensor| t.to_dtype(compute)?.contiguous()?.flatten_all();
    let qkv = Tensor::cat(&[flat(q)?, flat(k)?, flat(v)?], 0)?;
    let op = FusedAttention::new(g, QkvLayout::Packed, bias, mask);
    let (bias, mask) = op.bias_mask(bias, mask, compute, q.device())?;
    qkv.apply_op3(&bias, &mask, op)?.reshape((b, h, nq, dv))?.to_dtype(dtype)
}

/// The forward op: `(qkv, bias, mask)` → `out` flat (f32 on CPU; f32 or bf16 on CUDA).
struct FusedAttention {
    g: AttentionGeom,
    layout: QkvLayout,
    has_bias: bool,
    has_mask: bool,
}

/// The backward op: `(qkv, dout)` → f32 `[dqkv ‖ dbias]` flat; `bias`, `mask` and the forward
/// output (which the CUDA kernels read) are held.
struct FusedAttentionBackward {
    g: AttentionGeom,
    layout: QkvLayout,
    has_bias: bool,
    has_mask: bool,
    bias: Tensor,
    mask: Tensor,
    /// The forward output (`δ = rowsum(dO ⊙ O)` of the CUDA backward; the CPU kernel gets `δ`
    /// from the probabilities it recomputes).
    #[cfg(feature = "cuda")]
    out: Tensor,
}

impl FusedAttention {
    fn new(
        g: AttentionGeom,
        layout: QkvLayout,
        bias: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Self {
        Self { g, layout, has_bias: bias.is_some(), has_mask: mask.is_some() }
    }

    /// The op's second and third arguments: `bias` (differentiable) and the detached `mask`,
    /// contiguous in `dtype`, or one-element placeholders.
    fn bias_mask(
        &self,
        bias: Option<&Tensor>,
        mask: Option<&Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let arg = |t: Option<Tensor>| match t {
            Some(t) => t.to_dtype(dtype)?.contiguous(),
            None => Tensor::zeros(1, dtype, device),
        };
        Ok((arg(bias.cloned())?, arg(mask.map(Tensor::detach))?))
    }
}

/// The contiguous f32 slice of a CPU storage.
fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    f32_slice("fused_attention", s, l)
}

/// Checks a CPU call against the kernel contract: the layout, the qkv buffer and the bias and
/// mask lengths (when present).
fn check_cpu(
    g: &AttentionGeom,
    layout: QkvLayout,
    qkv: &[f32],
    bias: Option<&[f32]>,
    mask: Option<&[f32]>,
) -> Result<()> {
    layout.check(g, qkv.len()).map_err(|e| candle::Error::Msg(format!("fused_attention: {e}")))?;
    g.check_bias_mask(bias.map(<[f32]>::len), mask.map(<[f32]>::len))
        .map_err(|e| candle::Error::Msg(format!("fused_attention: {e}")))
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let qkv = cpu_f32(s1, l1)?;
        let bias = self.has_bias.then_some(cpu_f32(s2, l2)?);
        let mask = self.has_mask.then_some(cpu_f32(s3, l3)?);
        check_cpu(&self.g, self.layout, qkv, bias, mask)?;
        let out = cpu::forward(&self.g, self.layout, qkv, bias, mask, None);
        Ok((CpuStorage::F32(out), Shape::from(self.g.out_len())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle::CudaStorage,
        l1: &Layout,
        s2: &candle::CudaStorage,
        l2: &Layout,
        s3: &candle::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle::CudaStorage, Shape)> {
        if self.layout != QkvLayout::Packed {
            candle::bail!("fused_attention: the CUDA kernels read a packed q ‖ k ‖ v")
        }
        let inputs = super::cuda::Inputs {
            qkv: (s1, l1),
            bias: (s2, l2),
            mask: (s3, l3),
            has_bias: self.has_bias,
            has_mask: self.has_mask,
        };
        let storage = super::cuda::attention_forward(&self.g, &inputs)?;
        Ok((storage, Shape::from(self.g.out_len())))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        bias: &Tensor,
        mask: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = FusedAttentionBackward {
            g: self.g,
            layout: self.layout,
            has_bias: self.has_bias,
            has_mask: self.has_mask,
            bias: bias.detach(),
            mask: mask.detach(),
            #[cfg(feature = "cuda")]
            out: res.detach(),
        };
        let dout = grad_res.to_dtype(res.dtype())?.contiguous()?;
        let grads = qkv.detach().apply_op2_no_bwd(&dout, &op)?;
        let n = qkv.elem_count();
        let dqkv = grads.narrow(0, 0, n)?.reshape(qkv.shape())?.to_dtype(qkv.dtype())?;
        let dbias = if self.has_bias {
            let db = grads.narrow(0, n, self.g.bias_len())?;
            Some(db.reshape(bias.shape())?.to_dtype(bias.dtype())?)
        } else {
            None
        };
        Ok((Some(dqkv), dbias, None))
    }
}

impl CustomOp2 for FusedAttentionBackward {
    fn name(&self) -> &'static str {
        "fused-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = cpu_f32(s1, l1)?;
        let dout = cpu_f32(s2, l2)?;
        let (bias_guard, bias_layout) = self.bias.storage_and_layout();
        let (mask_guard, mask_layout) = self.mask.storage_and_layout();
        let (Storage::Cpu(bias_s), Storage::Cpu(mask_s)) = (&*bias_guard, &*mask_guard) else {
            candle::bail!("{}: bias and mask must be CPU tensors", self.name())
        };
        let bias = self.has_bias.then_some(cpu_f32(bias_s, bias_layout)?);
        let mask = self.has_mask.then_some(cpu_f32(mask_s, mask_layout)?);
        check_cpu(&self.g, self.layout, qkv, bias, mask)?;
        if dout.len() != self.g.out_len() {
            candle::bail!(
                "{}: dout has {} elements, not {}",
                self.name(),
                dout.len(),
                self.g.out_len()
            )
        }
        let grads = cpu::backward(&self.g, self.layout, qkv, bias, mask, dout);
        let len = grads.len();
        Ok((CpuStorage::F32(grads), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle::CudaStorage,
        l1: &Layout,
        s2: &candle::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle::CudaStorage, Shape)> {
        if self.layout != QkvLayout::Packed {
            candle::bail!("fused_attention: the CUDA kernels read a packed q ‖ k ‖ v")
        }
        let (bias_guard, bias_layout) = self.bias.storage_and_layout();
        let (mask_guard, mask_layout) = self.mask.storage_and_layout();
        let (out_guard, out_layout) = self.out.storage_and_layout();
        let (Storage::Cuda(bias), Storage::Cuda(mask), Storage::Cuda(out)) =
            (&*bias_guard, &*mask_guard, &*out_guard)
        else {
            candle::bail!("{}: bias, mask and output must be CUDA tensors", self.name())
        };
        let inputs = super::cuda::Inputs {
            qkv: (s1, l1),
            bias: (bias, bias_layout),
            mask: (mask, mask_layout),
            has_bias: self.has_bias,
            has_mask: self.has_mask,
        };
        let (storage, len) =
            super::cuda::attention_backward(&self.g, &inputs, (out, out_layout), (s2, l2))?;
        Ok((storage, Shape::from(len)))
    }
}
