//! Fused attention `softmax(q·kᵀ·scale + bias + mask)·v` as one candle custom op with backward
//! (feature `cuda`): Swin window attention and Soft MoE dispatch/combine.
//!
//! On CUDA the op launches `kernels/attention.cu` (f32, or bf16 with f32 accumulation); on CPU it
//! runs the kernels' plain-Rust twin from `medseg_kernels::reference`, so the whole op (graph,
//! shapes, gradients) is tested on CPU against the composed paths. Neither device materialises the
//! `[.., nq, nk]` probability matrix: the backward recomputes it from the row log-sum-exp.
//!
//! Argument packing: candle custom ops take at most three tensors, so `q`, `k`, `v` travel as one
//! flat tensor (`Tensor::cat` of the three, differentiable), `bias` and `mask` as the second and
//! third (a one-element placeholder when absent). The backward op receives `[bias ‖ mask]` and
//! `[out ‖ dout]` the same way and returns the flat f32 gradients `[dq ‖ dk ‖ dv ‖ dbias]`.
use candle::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use medseg_kernels::reference::{self as twin, AttentionGeom};

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
    if let Some(bias) = bias {
        if bias.dims() != [h, nq, nk] {
            candle::bail!("fused_attention: bias {:?} must be [{h}, {nq}, {nk}]", bias.dims())
        }
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
    let placeholder = || Tensor::zeros(1, compute, q.device());
    let bias_t = match bias {
        Some(t) => flat(t)?,
        None => placeholder()?,
    };
    let mask_t = match mask {
        Some(t) => flat(&t.detach())?,
        None => placeholder()?,
    };
    let op = FusedAttention { g, has_bias: bias.is_some(), has_mask: mask.is_some() };
    qkv.apply_op3(&bias_t, &mask_t, op)?.reshape((b, h, nq, dv))?.to_dtype(dtype)
}

/// [`crate::window_attention`] through the fused op: same arguments, shapes and result.
pub fn window_attention_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    fused_attention(q, k, v, scale, bias, mask, None)
}

/// The fused op on MONAI's raw `qkv` projection `[B·nW, N, 3·C]` (PyTorch's
/// `reshape(B, N, 3, heads, hd)` channel order) → `[B·nW, N, C]`; the CUDA path of
/// `window_attention_qkv`.
pub fn window_attention_qkv_fused(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (bw, n, c3) = qkv.dims3()?;
    if heads == 0 || c3 % (3 * heads) != 0 {
        candle::bail!(
            "window_attention_qkv: qkv {:?} does not split into 3 × {heads} heads",
            qkv.dims()
        )
    }
    let hd = c3 / (3 * heads);
    // [Bw, N, 3C] -> [Bw, N, 3, h, hd] -> [3, Bw, h, N, hd]
    let qkv = qkv.reshape((bw, n, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let out = fused_attention(&q, &k, &v, scale, bias, mask, None)?;
    // [Bw, h, N, hd] -> [Bw, N, h, hd] -> [Bw, N, C]
    out.transpose(1, 2)?.reshape((bw, n, heads * hd))
}

/// Soft MoE dispatch: `softmax_over_tokens(x·slotsᵀ)ᵀ·x`, tokens `≥ n_valid` excluded.
///
/// # Shapes
/// `x` `[B, n, d]`, `slots` `[B, m, d]` (or `[m, d]`, broadcast) → slot inputs `[B, m, d]`.
pub fn soft_moe_dispatch(x: &Tensor, slots: &Tensor, n_valid: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let slots = broadcast_slots(slots, b, d)?;
    if n_valid > n {
        candle::bail!("soft_moe_dispatch: {n_valid} valid tokens of {n}")
    }
    let x4 = x.unsqueeze(1)?;
    // queries = slots [B, 1, m, d], keys = values = tokens [B, 1, n, d]
    fused_attention(&slots.unsqueeze(1)?, &x4, &x4, 1.0, None, None, Some(n_valid))?.squeeze(1)
}

/// Soft MoE combine: `softmax_over_slots(x·slotsᵀ)·y`.
///
/// # Shapes
/// `x` `[B, n, d]`, `slots` `[B, m, d]` (or `[m, d]`), `y` `[B, m, dv]` → `[B, n, dv]`.
pub fn soft_moe_combine(x: &Tensor, slots: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (b, _n, d) = x.dims3()?;
    let slots = broadcast_slots(slots, b, d)?;
    // queries = tokens [B, 1, n, d], keys = slots [B, 1, m, d], values = y [B, 1, m, dv]
    fused_attention(
        &x.unsqueeze(1)?,
        &slots.unsqueeze(1)?,
        &y.unsqueeze(1)?,
        1.0,
        None,
        None,
        None,
    )?
    .squeeze(1)
}

/// `[m, d]` → `[B, m, d]` (differentiable broadcast); `[B, m, d]` is checked and kept.
fn broadcast_slots(slots: &Tensor, b: usize, d: usize) -> Result<Tensor> {
    match slots.rank() {
        2 if slots.dim(1)? == d => slots.unsqueeze(0)?.broadcast_as((b, slots.dim(0)?, d)),
        3 if slots.dim(0)? == b && slots.dim(2)? == d => Ok(slots.clone()),
        _ => candle::bail!("soft MoE: slots {:?} must be [m, {d}] or [{b}, m, {d}]", slots.dims()),
    }
}

/// The forward op: `(qkv flat, bias, mask)` → `out` flat.
struct FusedAttention {
    g: AttentionGeom,
    has_bias: bool,
    has_mask: bool,
}

/// The backward op: `(qkv flat, [bias ‖ mask], [out ‖ dout])` → f32 `[dq ‖ dk ‖ dv ‖ dbias]`.
struct FusedAttentionBackward {
    g: AttentionGeom,
    has_bias: bool,
    has_mask: bool,
}

impl FusedAttention {
    fn bias_len(&self) -> usize {
        if self.has_bias { self.g.bias_len() } else { 1 }
    }
    fn mask_len(&self) -> usize {
        if self.has_mask { self.g.mask_len() } else { 1 }
    }
}

/// The contiguous f32 slice of a CPU storage.
fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    crate::storage::f32_slice("fused_attention", s, l)
}

fn twin_err(e: twin::KernelError) -> candle::Error {
    candle::Error::Msg(format!("fused_attention: {e}"))
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
        let g = &self.g;
        let qkv = cpu_f32(s1, l1)?;
        let (q, rest) = qkv.split_at(g.q_len());
        let (k, v) = rest.split_at(g.k_len());
        let bias = self.has_bias.then_some(cpu_f32(s2, l2)?);
        let mask = self.has_mask.then_some(cpu_f32(s3, l3)?);
        let (out, _lse) = twin::attention_fwd(g, q, k, v, bias, mask).map_err(twin_err)?;
        Ok((CpuStorage::F32(out), Shape::from(g.out_len())))
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
        let bufs = crate::cuda_launch::Inputs { qkv: (s1, l1), bias: (s2, l2), mask: (s3, l3) };
        let storage =
            crate::cuda_launch::attention_forward(&self.g, self.has_bias, self.has_mask, &bufs)?;
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
        debug_assert_eq!(bias.elem_count(), self.bias_len());
        debug_assert_eq!(mask.elem_count(), self.mask_len());
        let bias_mask = Tensor::cat(&[bias.flatten_all()?, mask.flatten_all()?], 0)?;
        let grad = grad_res.to_dtype(res.dtype())?.contiguous()?.flatten_all()?;
        let out_dout = Tensor::cat(&[res.flatten_all()?, grad], 0)?.detach();
        let op =
            FusedAttentionBackward { g: self.g, has_bias: self.has_bias, has_mask: self.has_mask };
        let grads = qkv.detach().apply_op3_no_bwd(&bias_mask.detach(), &out_dout, &op)?;
        let n = qkv.elem_count();
        let dqkv = grads.narrow(0, 0, n)?.to_dtype(qkv.dtype())?;
        let dbias = if self.has_bias {
            Some(grads.narrow(0, n, self.g.bias_len())?.to_dtype(bias.dtype())?)
        } else {
            None
        };
        Ok((Some(dqkv), dbias, None))
    }
}

impl CustomOp3 for FusedAttentionBackward {
    fn name(&self) -> &'static str {
        "fused-attention-backward"
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
        let g = &self.g;
        let qkv = cpu_f32(s1, l1)?;
        let (q, rest) = qkv.split_at(g.q_len());
        let (k, v) = rest.split_at(g.k_len());
        let bias_mask = cpu_f32(s2, l2)?;
        let bias_len = if self.has_bias { g.bias_len() } else { 1 };
        let bias = self.has_bias.then_some(&bias_mask[..bias_len]);
        let mask = self.has_mask.then_some(&bias_mask[bias_len..]);
        let (out, dout) = cpu_f32(s3, l3)?.split_at(g.out_len());
        // The log-sum-exp is recomputed (the forward returns only `out`), as on CUDA.
        let (_, lse) = twin::attention_fwd(g, q, k, v, bias, mask).map_err(twin_err)?;
        let gr = twin::attention_bwd(g, q, k, v, bias, mask, out, &lse, dout).map_err(twin_err)?;
        let mut flat = gr.dq;
        flat.extend_from_slice(&gr.dk);
        flat.extend_from_slice(&gr.dv);
        if let Some(db) = gr.dbias {
            flat.extend_from_slice(&db);
        }
        let len = flat.len();
        Ok((CpuStorage::F32(flat), Shape::from(len)))
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
        let (storage, len) = crate::cuda_launch::attention_backward(
            &self.g,
            self.has_bias,
            self.has_mask,
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )?;
        Ok((storage, Shape::from(len)))
    }
}
