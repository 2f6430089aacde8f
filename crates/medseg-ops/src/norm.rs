//! Differentiable normalisations: `instance_norm3d` and `layer_norm` (last dim).
//!
//! Both normalise contiguous rows (instance norm: `N·C` rows of `D·H·W` voxels; layer norm: rows of
//! `C` channels) with a biased variance, so one custom op ([`NormalizeRows`]) with an analytic
//! backward serves both. The optional affine part is composed from candle ops. References:
//! [`instance_norm3d_reference`], [`layer_norm_reference`], composed from candle ops.
//!
//! [`instance_norm_leaky_relu`] fuses the `InstanceNorm → (+ residual) → LeakyReLU` tail of
//! MONAI's `UnetResBlock` into one graph node, so the normalised map and the sum are never kept
//! for the backward pass (candle keeps every op's inputs alive until the loss is dropped).
use candle::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::activation::{Unary, UnaryBackward};
use crate::simd::{sum_f32, sum_sq_dev};
use crate::storage::{f32_contiguous, f32_slice};

/// Instance normalisation of `x` `[N, C, D, H, W]` (any rank ≥ 3): per sample and channel,
/// biased variance over all spatial voxels, then `γ·x̂ + β` when `weight`/`bias` (`[C]`) are given.
///
/// Matches `torch.nn.functional.instance_norm` without running statistics. A single-voxel map
/// normalises to zeros (PyTorch raises in training mode; callers that train should reject it).
pub fn instance_norm3d(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (c, spatial) = check_instance("instance_norm3d", x, weight, bias)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::cuda_ops::instance_norm3d(x, weight, bias, eps);
    }
    let dtype = x.dtype();
    let y = f32_contiguous(x)?.apply_op1(NormalizeRows { eps: eps as f32, len: spatial })?;
    affine(y, weight, bias, &channel_shape(x.rank(), c))?.to_dtype(dtype)
}

/// `leaky_relu(instance_norm3d(x) + residual)` without affine parameters, as one op.
///
/// The backward pass needs only `x`, the output and (when given) nothing of `residual`:
/// `lrelu'` is read off the output's sign (valid for `negative_slope ≥ 0`), the normalisation's
/// gradient is [`instance_norm3d`]'s. Reference: [`instance_norm_leaky_relu_reference`].
///
/// # Shapes
/// `x` `[N, C, spatial…]`, `residual` the same shape → the same shape.
pub fn instance_norm_leaky_relu(
    x: &Tensor,
    residual: Option<&Tensor>,
    eps: f64,
    negative_slope: f64,
) -> Result<Tensor> {
    let (_, spatial) = check_instance("instance_norm_leaky_relu", x, None, None)?;
    if !(negative_slope >= 0.0 && negative_slope.is_finite()) {
        candle::bail!("instance_norm_leaky_relu: negative_slope must be ≥ 0, got {negative_slope}")
    }
    if let Some(r) = residual
        && r.dims() != x.dims()
    {
        candle::bail!(
            "instance_norm_leaky_relu: residual {:?} must have the shape of x {:?}",
            r.dims(),
            x.dims()
        )
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        // No fused CUDA kernel: the CUDA instance norm and leaky ReLU, composed.
        let y = plus(instance_norm3d(x, None, None, eps)?, residual)?;
        return crate::activation::leaky_relu(&y, negative_slope);
    }
    let dtype = x.dtype();
    let op = NormLeaky { eps: eps as f32, len: spatial, slope: negative_slope as f32 };
    let x32 = f32_contiguous(x)?;
    let y = match residual {
        None => x32.apply_op1(op)?,
        Some(r) => x32.apply_op2(&f32_contiguous(r)?, op)?,
    };
    y.to_dtype(dtype)
}

/// Composed reference of [`instance_norm_leaky_relu`].
pub fn instance_norm_leaky_relu_reference(
    x: &Tensor,
    residual: Option<&Tensor>,
    eps: f64,
    negative_slope: f64,
) -> Result<Tensor> {
    let y = plus(instance_norm3d_reference(x, None, None, eps)?, residual)?;
    crate::activation::leaky_relu_reference(&y, negative_slope)
}

/// `y + r`, or `y` without a residual.
fn plus(y: Tensor, r: Option<&Tensor>) -> Result<Tensor> {
    match r {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// Layer normalisation over the last dimension with biased variance, then `γ·x̂ + β`.
///
/// Differentiable in all inputs, unlike candle-nn's fast `layer_norm` / `LayerNorm` module.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let c = check_last("layer_norm", x, weight, bias)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::cuda_ops::layer_norm(x, weight, bias, eps);
    }
    let dtype = x.dtype();
    if let (Some(w), Some(b)) = (weight, bias) {
        // The common case (Swin blocks): one fused op, forward and backward.
        let op = LayerNormAffine { eps: eps as f32, len: c };
        return f32_contiguous(x)?
            .apply_op3(&f32_contiguous(w)?, &f32_contiguous(b)?, op)?
            .to_dtype(dtype);
    }
    let y = f32_contiguous(x)?.apply_op1(NormalizeRows { eps: eps as f32, len: c })?;
    affine(y, weight, bias, &[c])?.to_dtype(dtype)
}

/// Composed reference of [`instance_norm3d`] (mean, centred square, sqrt, divide).
pub fn instance_norm3d_reference(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (c, _) = check_instance("instance_norm3d", x, weight, bias)?;
    let dims: Vec<usize> = (2..x.rank()).collect();
    let mean = x.mean_keepdim(dims.as_slice())?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(dims.as_slice())?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    affine(y, weight, bias, &channel_shape(x.rank(), c))
}

/// Composed reference of [`layer_norm`] (the same math as candle-nn's `layer_norm_slow`).
pub fn layer_norm_reference(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let c = check_last("layer_norm", x, weight, bias)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    affine(y, weight, bias, &[c])
}

fn channel_shape(rank: usize, c: usize) -> Vec<usize> {
    let mut s = vec![1; rank];
    s[1] = c;
    s
}

fn affine(y: Tensor, w: Option<&Tensor>, b: Option<&Tensor>, shape: &[usize]) -> Result<Tensor> {
    let y = match w {
        Some(w) => y.broadcast_mul(&w.to_dtype(y.dtype())?.reshape(shape)?)?,
        None => y,
    };
    match b {
        Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?.reshape(shape)?),
        None => Ok(y),
    }
}

fn check_params(op: &str, c: usize, w: Option<&Tensor>, b: Option<&Tensor>) -> Result<()> {
    for (name, t) in [("weight", w), ("bias", b)] {
        if let Some(t) = t
            && t.dims() != [c]
        {
            candle::bail!("{op}: {name} must have shape [{c}], got {:?}", t.dims())
        }
    }
    Ok(())
}

fn check_instance(
    op: &str,
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
) -> Result<(usize, usize)> {
    if x.rank() < 3 || !x.dtype().is_float() {
        candle::bail!(
            "{op}: expected a float tensor [N, C, spatial…], got {:?} {:?}",
            x.dtype(),
            x.dims()
        )
    }
    let c = x.dim(1)?;
    let spatial: usize = x.dims()[2..].iter().product();
    if spatial == 0 {
        candle::bail!("{op}: empty spatial extent in {:?}", x.dims())
    }
    check_params(op, c, w, b)?;
    Ok((c, spatial))
}

fn check_last(op: &str, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>) -> Result<usize> {
    if x.rank() == 0 || !x.dtype().is_float() || x.dim(D::Minus1)? == 0 {
        candle::bail!(
            "{op}: expected a float tensor with a non-empty last dim, got {:?} {:?}",
            x.dtype(),
            x.dims()
        )
    }
    let c = x.dim(D::Minus1)?;
    check_params(op, c, w, b)?;
    Ok(c)
}

/// Rows per rayon task so that each task touches at least ~16K elements.
fn rows_per_task(len: usize) -> usize {
    (16_384 / len.max(1)).max(1)
}

/// `(mean, 1/sqrt(var + eps))` of one row, accumulated in f64 over f32 lanes.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = sum_f32(row) / n;
    let var = sum_sq_dev(row, mean as f32) / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// `(x − mean) / sqrt(var + eps)` over contiguous rows of `len` elements.
struct NormalizeRows {
    eps: f32,
    len: usize,
}

impl CustomOp1 for NormalizeRows {
    fn name(&self) -> &'static str {
        "normalize_rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        Ok((CpuStorage::F32(normalize_rows(x, self.len, self.eps, |_, v| v)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&dy, &NormalizeRowsBackward { eps: self.eps, len: self.len })?))
    }
}

/// `post(flat index, (x − mean)·rstd)` over contiguous rows of `len` elements of `x`.
fn normalize_rows(
    x: &[f32],
    len: usize,
    eps: f32,
    post: impl Fn(usize, f32) -> f32 + Sync,
) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let chunk = len * rows_per_task(len);
    y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).enumerate().for_each(|(ci, (yc, xc))| {
        for (ri, (yr, xr)) in yc.chunks_mut(len).zip(xc.chunks(len)).enumerate() {
            let base = ci * chunk + ri * len;
            let (mean, rstd) = row_stats(xr, eps);
            for (i, (o, v)) in yr.iter_mut().zip(xr).enumerate() {
                *o = post(base + i, (v - mean) * rstd);
            }
        }
    });
    y
}

/// `leaky_relu(x̂ (+ r))` over rows of `len` ([`instance_norm_leaky_relu`]); one op with or
/// without the residual `r`.
#[derive(Debug, Clone, Copy)]
struct NormLeaky {
    eps: f32,
    len: usize,
    slope: f32,
}

impl NormLeaky {
    fn lrelu(&self, v: f32) -> f32 {
        if v > 0.0 { v } else { v * self.slope }
    }

    /// `dx` from `(x, y, dy)`, and the gradient at the sum (= `dresidual`).
    fn grads(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        // lrelu'(s) from the output: y > 0 ⇔ s > 0 for slope ≥ 0.
        let g =
            y.apply_op2_no_bwd(&dy.contiguous()?, &UnaryBackward(Unary::LeakyRelu(self.slope)))?;
        let dx = x.apply_op2_no_bwd(&g, &NormalizeRowsBackward { eps: self.eps, len: self.len })?;
        Ok((dx, g))
    }
}

impl CustomOp1 for NormLeaky {
    fn name(&self) -> &'static str {
        "instance_norm_leaky_relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(CustomOp1::name(self), s, l)?;
        let y = normalize_rows(x, self.len, self.eps, |_, v| self.lrelu(v));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.grads(x, y, dy)?.0))
    }
}

impl CustomOp2 for NormLeaky {
    fn name(&self) -> &'static str {
        "instance_norm_add_leaky_relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(CustomOp2::name(self), s1, l1)?;
        let r = f32_slice(CustomOp2::name(self), s2, l2)?;
        let y = normalize_rows(x, self.len, self.eps, |i, v| self.lrelu(v + r[i]));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _r: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, g) = self.grads(x, y, dy)?;
        Ok((Some(dx), Some(g)))
    }
}

/// `dx = rstd · (dy − mean(dy) − x̂ · mean(dy · x̂))` per row, from `(x, dy)`.
struct NormalizeRowsBackward {
    eps: f32,
    len: usize,
}

impl CustomOp2 for NormalizeRowsBackward {
    fn name(&self) -> &'static str {
        "normalize_rows_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        let mut dx = vec![0f32; x.len()];
        let chunk = self.len * rows_per_task(self.len);
        let n = self.len as f64;
        dx.par_chunks_mut(chunk).zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk))).for_each(
            |(dxc, (xc, gc))| {
                let rows =
                    dxc.chunks_mut(self.len).zip(xc.chunks(self.len).zip(gc.chunks(self.len)));
                for (dxr, (xr, gr)) in rows {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    let mut sg = 0f64;
                    let mut sgx = 0f64;
                    for part in 0..xr.len().div_ceil(1024) {
                        let r = part * 1024..((part + 1) * 1024).min(xr.len());
                        let (mut a, mut b) = (0f32, 0f32);
                        for (v, g) in xr[r.clone()].iter().zip(&gr[r]) {
                            a += g;
                            b += g * (v - mean) * rstd;
                        }
                        sg += a as f64;
                        sgx += b as f64;
                    }
                    let (mg, mgx) = ((sg / n) as f32, (sgx / n) as f32);
                    for ((o, v), g) in dxr.iter_mut().zip(xr).zip(gr) {
                        let xh = (v - mean) * rstd;
                        *o = rstd * (g - mg - xh * mgx);
                    }
                }
            },
        );
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Layer norm with affine parameters in one pass: `y = x̂·γ + β` over rows of `len`.
struct LayerNormAffine {
    eps: f32,
    len: usize,
}

impl CustomOp3 for LayerNormAffine {
    fn name(&self) -> &'static str {
        "layer_norm_affine"
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
        let x = f32_slice(self.name(), s1, l1)?;
        let g = f32_slice(self.name(), s2, l2)?;
        let b = f32_slice(self.name(), s3, l3)?;
        let mut y = vec![0f32; x.len()];
        let chunk = self.len * rows_per_task(self.len);
        y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(self.len).zip(xc.chunks(self.len)) {
                let (mean, rstd) = row_stats(xr, self.eps);
                for (((o, v), g), b) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                    *o = (v - mean) * rstd * g + b;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let op = LayerNormAffineBackward { eps: self.eps, len: self.len };
        // One pass produces [dx (n) | dγ (len) | dβ (len)].
        let packed = x.apply_op3_no_bwd(&dy.contiguous()?, g, &op)?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dg = packed.narrow(0, n, self.len)?;
        let db = packed.narrow(0, n + self.len, self.len)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// Backward of [`LayerNormAffine`] from `(x, dy, γ)`: `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`
/// with `ĝ = dy·γ`, `dγ = Σ dy·x̂`, `dβ = Σ dy`, packed into one flat output.
struct LayerNormAffineBackward {
    eps: f32,
    len: usize,
}

impl CustomOp3 for LayerNormAffineBackward {
    fn name(&self) -> &'static str {
        "layer_norm_affine_backward"
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
        let x = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        let g = f32_slice(self.name(), s3, l3)?;
        let len = self.len;
        let mut out = vec![0f32; x.len() + 2 * len];
        let (dx, _) = out.split_at_mut(x.len());
        let chunk = len * rows_per_task(len);
        let inv_n = 1.0 / len as f32;
        let (dg, db) = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .map(|(dxc, (xc, gc))| {
                let mut dg = vec![0f32; len];
                let mut db = vec![0f32; len];
                let mut xh = vec![0f32; len];
                let rows = dxc.chunks_mut(len).zip(xc.chunks(len).zip(gc.chunks(len)));
                for (dxr, (xr, dyr)) in rows {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    let (mut s_g, mut s_gx) = (0f32, 0f32);
                    for i in 0..len {
                        xh[i] = (xr[i] - mean) * rstd;
                        let gh = dyr[i] * g[i];
                        s_g += gh;
                        s_gx += gh * xh[i];
                        dg[i] += dyr[i] * xh[i];
                        db[i] += dyr[i];
                    }
                    let (mg, mgx) = (s_g * inv_n, s_gx * inv_n);
                    for i in 0..len {
                        dxr[i] = rstd * (dyr[i] * g[i] - mg - xh[i] * mgx);
                    }
                }
                (dg, db)
            })
            .reduce(
                || (vec![0f32; len], vec![0f32; len]),
                |(mut a, mut b), (c, d)| {
                    a.iter_mut().zip(&c).for_each(|(a, c)| *a += c);
                    b.iter_mut().zip(&d).for_each(|(b, d)| *b += d);
                    (a, b)
                },
            );
        out[x.len()..x.len() + len].copy_from_slice(&dg);
        out[x.len() + len..].copy_from_slice(&db);
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * len)))
    }
}
