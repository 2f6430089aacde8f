//! Window attention composed from candle matmuls and this crate's differentiable softmax.
//!
//! [`window_attention`] is the composed form (q, k, v split); [`window_attention_qkv`] is the
//! fused CPU kernel the models use, with [`window_attention_qkv_reference`] as its composed twin.
use candle::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::activation::{softmax_last_dim, softmax_last_dim_reference};
use crate::simd;
use crate::storage::{f32_contiguous, f32_slice};

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
/// On CPU one custom op computes each row of the attention matrix in cache and never
/// materialises `[B·nW, heads, N, N]`; the backward recomputes the probabilities (as
/// flash-attention does) and returns gradients for `qkv` and `bias`. On other devices, and as the
/// reference, [`window_attention_qkv_reference`] composes the same product from candle ops.
pub fn window_attention_qkv(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let geom = Geometry::new(qkv, heads, bias, mask)?;
    #[cfg(feature = "cuda")]
    if qkv.device().is_cuda() {
        return crate::cuda_attention::window_attention_qkv_fused(qkv, heads, scale, bias, mask);
    }
    if !qkv.device().is_cpu() {
        return window_attention_qkv_reference(qkv, heads, scale, bias, mask);
    }
    let dtype = qkv.dtype();
    let mask = match mask {
        Some(m) => f32_contiguous(m)?,
        None => Tensor::zeros((1, geom.n, geom.n), DType::F32, qkv.device())?,
    };
    let op = FusedWindowAttention { geom, scale: scale as f32, has_bias: bias.is_some() };
    let bias = match bias {
        Some(b) => f32_contiguous(b)?,
        None => Tensor::zeros((heads, geom.n, geom.n), DType::F32, qkv.device())?,
    };
    f32_contiguous(qkv)?.apply_op3(&bias, &mask, op)?.to_dtype(dtype)
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

/// Window groups of the backward, each with its own bias-gradient accumulator (fixed, so the sum
/// order is too).
const BIAS_GROUPS: usize = 8;

/// Sizes of a fused window-attention call, validated once.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    bw: usize,
    n: usize,
    c: usize,
    heads: usize,
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
        Ok(Self { bw, n, c, heads, hd: c / heads, nw })
    }
}

/// Forward custom op of [`window_attention_qkv`] on `(qkv, bias, mask)`.
struct FusedWindowAttention {
    geom: Geometry,
    scale: f32,
    has_bias: bool,
}

impl CustomOp3 for FusedWindowAttention {
    fn name(&self) -> &'static str {
        "window_attention_qkv"
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
        let qkv = f32_slice(self.name(), s1, l1)?;
        let bias = f32_slice(self.name(), s2, l2)?;
        let mask = f32_slice(self.name(), s3, l3)?;
        let g = self.geom;
        let mut out = vec![0f32; g.bw * g.n * g.c];
        out.par_chunks_mut(g.n * g.c).enumerate().for_each(|(b, out_w)| {
            let qkv_w = &qkv[b * g.n * 3 * g.c..(b + 1) * g.n * 3 * g.c];
            let mask_w = &mask[(b % g.nw) * g.n * g.n..(b % g.nw + 1) * g.n * g.n];
            dispatch_window(WindowArgs {
                g: &g,
                scale: self.scale,
                qkv_w,
                bias,
                mask_w,
                out_w: Some(out_w),
                bwd: None,
            });
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[g.bw, g.n, g.c])))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        bias: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geom;
        let op = FusedWindowAttentionBackward {
            geom: g,
            scale: self.scale,
            has_bias: self.has_bias,
            bias: bias.clone(),
            mask: mask.clone(),
        };
        // One pass produces [dqkv (Bw·N·3C) | dbias (h·N·N)].
        let packed = qkv.apply_op2_no_bwd(&dout.contiguous()?, &op)?;
        let nq = g.bw * g.n * 3 * g.c;
        let dqkv = packed.narrow(0, 0, nq)?.reshape(qkv.shape())?;
        let dbias = if self.has_bias {
            Some(packed.narrow(0, nq, g.heads * g.n * g.n)?.reshape(bias.shape())?)
        } else {
            None
        };
        Ok((Some(dqkv), dbias, None))
    }
}

/// Backward of [`FusedWindowAttention`] from `(qkv, dout)`; bias and mask are read from the held
/// tensors. Output: `[dqkv | dbias]` flat (dbias zero-length without a bias).
struct FusedWindowAttentionBackward {
    geom: Geometry,
    scale: f32,
    has_bias: bool,
    bias: Tensor,
    mask: Tensor,
}

impl CustomOp2 for FusedWindowAttentionBackward {
    fn name(&self) -> &'static str {
        "window_attention_qkv_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(self.name(), s1, l1)?;
        let dout = f32_slice(self.name(), s2, l2)?;
        let (bias_guard, bias_layout) = self.bias.storage_and_layout();
        let (mask_guard, mask_layout) = self.mask.storage_and_layout();
        let (Storage::Cpu(bias_s), Storage::Cpu(mask_s)) = (&*bias_guard, &*mask_guard) else {
            candle::bail!("{}: bias and mask must be CPU tensors", self.name())
        };
        let bias = f32_slice(self.name(), bias_s, bias_layout)?;
        let mask = f32_slice(self.name(), mask_s, mask_layout)?;
        let g = self.geom;
        let nb = if self.has_bias { g.heads * g.n * g.n } else { 0 };
        let mut out = vec![0f32; g.bw * g.n * 3 * g.c + nb];
        let (dqkv, dbias_out) = out.split_at_mut(g.bw * g.n * 3 * g.c);
        // Windows are cut into a fixed number of groups, each with its own bias accumulator,
        // summed in group order: the result does not depend on thread count or scheduling
        // (a resumed run must repeat the uninterrupted one bit for bit).
        let per_group = g.bw.div_ceil(BIAS_GROUPS.min(g.bw).max(1));
        let partial: Vec<Vec<f32>> = dqkv
            .par_chunks_mut(per_group * g.n * 3 * g.c)
            .enumerate()
            .map(|(gi, dqkv_group)| {
                let mut acc = vec![0f32; nb];
                for (j, dqkv_w) in dqkv_group.chunks_mut(g.n * 3 * g.c).enumerate() {
                    let b = gi * per_group + j;
                    let qkv_w = &qkv[b * g.n * 3 * g.c..(b + 1) * g.n * 3 * g.c];
                    let mask_w = &mask[(b % g.nw) * g.n * g.n..(b % g.nw + 1) * g.n * g.n];
                    let dout_w = &dout[b * g.n * g.c..(b + 1) * g.n * g.c];
                    dispatch_window(WindowArgs {
                        g: &g,
                        scale: self.scale,
                        qkv_w,
                        bias,
                        mask_w,
                        out_w: None,
                        bwd: Some(BackwardArgs {
                            dout_w,
                            dqkv_w,
                            dbias: (nb > 0).then_some(acc.as_mut_slice()),
                        }),
                    });
                }
                acc
            })
            .collect();
        let mut dbias = vec![0f32; nb];
        for p in &partial {
            for (x, y) in dbias.iter_mut().zip(p) {
                *x += y;
            }
        }
        dbias_out.copy_from_slice(&dbias);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The inputs of one window's forward (`out_w`) or backward (`bwd`) pass over all heads.
struct WindowArgs<'a> {
    g: &'a Geometry,
    scale: f32,
    /// `[N, 3C]` rows of this window.
    qkv_w: &'a [f32],
    /// `[heads, N, N]`.
    bias: &'a [f32],
    /// `[N, N]` of this window.
    mask_w: &'a [f32],
    /// `[N, C]` output rows (forward).
    out_w: Option<&'a mut [f32]>,
    bwd: Option<BackwardArgs<'a>>,
}

struct BackwardArgs<'a> {
    /// `[N, C]` output gradient rows.
    dout_w: &'a [f32],
    /// `[N, 3C]` gradient rows to write.
    dqkv_w: &'a mut [f32],
    /// `[heads, N, N]` accumulator, when the bias needs a gradient.
    dbias: Option<&'a mut [f32]>,
}

/// Runs [`window_kernel`] compiled for the best vector ISA of the running CPU.
fn dispatch_window(args: WindowArgs<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features enabled on `window_kernel_avx512`.
            return unsafe { window_kernel_avx512(args) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above, for AVX2 + FMA.
            return unsafe { window_kernel_avx2(args) };
        }
    }
    window_kernel(args)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
unsafe fn window_kernel_avx512(args: WindowArgs<'_>) {
    window_kernel(args)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn window_kernel_avx2(args: WindowArgs<'_>) {
    window_kernel(args)
}

/// One window, every head. Per head it gathers `q·scale` (`[N, hd]`), `kᵀ` and `vᵀ`
/// (`[hd, N]`), then walks the rows of the attention matrix:
/// - forward: `p = softmax(q_i·kᵀ + bias_i + mask_i)`, `out_i = p·v`;
/// - backward (with `dO`): `dp = dO_i·vᵀ`, `ds = p ⊙ (dp − p·dp)`, `dq_i = scale·ds·k`,
///   `dk += ds ⊗ q_i·scale`, `dv += p ⊗ dO_i`, `dbias_i += ds`.
#[inline(always)]
fn window_kernel(args: WindowArgs<'_>) {
    let WindowArgs { g, scale, qkv_w, bias, mask_w, mut out_w, mut bwd } = args;
    let (n, c, hd) = (g.n, g.c, g.hd);
    let mut q = vec![0f32; n * hd];
    let mut kt = vec![0f32; hd * n];
    let mut vt = vec![0f32; hd * n];
    let mut p = vec![0f32; n];
    let mut ds = vec![0f32; if bwd.is_some() { n } else { 0 }];
    let mut dkt = vec![0f32; if bwd.is_some() { hd * n } else { 0 }];
    let mut dvt = vec![0f32; if bwd.is_some() { hd * n } else { 0 }];
    for h in 0..g.heads {
        for i in 0..n {
            let row = &qkv_w[i * 3 * c..(i + 1) * 3 * c];
            for d in 0..hd {
                q[i * hd + d] = row[h * hd + d] * scale;
                kt[d * n + i] = row[c + h * hd + d];
                vt[d * n + i] = row[2 * c + h * hd + d];
            }
        }
        let bias_h = &bias[h * n * n..(h + 1) * n * n];
        if let Some(bw) = bwd.as_mut() {
            dkt.fill(0.0);
            dvt.fill(0.0);
            for i in 0..n {
                let qi = &q[i * hd..(i + 1) * hd];
                probability_row(
                    qi,
                    &kt,
                    &bias_h[i * n..(i + 1) * n],
                    &mask_w[i * n..(i + 1) * n],
                    &mut p,
                );
                let doi = &bw.dout_w[i * c + h * hd..i * c + (h + 1) * hd];
                ds.fill(0.0);
                for (d, &a) in doi.iter().enumerate() {
                    axpy(&mut ds, a, &vt[d * n..(d + 1) * n]);
                }
                let dsum = simd::dot(&p, &ds);
                for (s, &pj) in ds.iter_mut().zip(&p) {
                    *s = pj * (*s - dsum);
                }
                if let Some(db) = bw.dbias.as_deref_mut() {
                    let row = &mut db[h * n * n + i * n..h * n * n + (i + 1) * n];
                    for (r, &s) in row.iter_mut().zip(&ds) {
                        *r += s;
                    }
                }
                let dq = &mut bw.dqkv_w[i * 3 * c + h * hd..i * 3 * c + (h + 1) * hd];
                for (d, o) in dq.iter_mut().enumerate() {
                    *o = scale * simd::dot(&ds, &kt[d * n..(d + 1) * n]);
                }
                for d in 0..hd {
                    axpy(&mut dkt[d * n..(d + 1) * n], qi[d], &ds);
                    axpy(&mut dvt[d * n..(d + 1) * n], doi[d], &p);
                }
            }
            for j in 0..n {
                let row = &mut bw.dqkv_w[j * 3 * c..(j + 1) * 3 * c];
                for d in 0..hd {
                    row[c + h * hd + d] = dkt[d * n + j];
                    row[2 * c + h * hd + d] = dvt[d * n + j];
                }
            }
        }
        if let Some(out) = out_w.as_deref_mut() {
            for i in 0..n {
                let qi = &q[i * hd..(i + 1) * hd];
                probability_row(
                    qi,
                    &kt,
                    &bias_h[i * n..(i + 1) * n],
                    &mask_w[i * n..(i + 1) * n],
                    &mut p,
                );
                let o = &mut out[i * c + h * hd..i * c + (h + 1) * hd];
                for (d, od) in o.iter_mut().enumerate() {
                    *od = simd::dot(&p, &vt[d * n..(d + 1) * n]);
                }
            }
        }
    }
}

/// `p = softmax(q_i·kᵀ + bias_row + mask_row)` for one query row (`kt` is `[hd, N]`).
#[inline(always)]
fn probability_row(qi: &[f32], kt: &[f32], bias_row: &[f32], mask_row: &[f32], p: &mut [f32]) {
    let n = p.len();
    for ((o, &b), &m) in p.iter_mut().zip(bias_row).zip(mask_row) {
        *o = b + m;
    }
    for (d, &a) in qi.iter().enumerate() {
        axpy(p, a, &kt[d * n..(d + 1) * n]);
    }
    let mx = simd::max(p);
    for v in p.iter_mut() {
        *v = simd::exp(*v - mx);
    }
    let inv = 1.0 / simd::sum_f32(p) as f32;
    for v in p.iter_mut() {
        *v *= inv;
    }
}

/// `y += a·x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}
