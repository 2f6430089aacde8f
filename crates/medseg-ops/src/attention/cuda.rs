//! Launches of the `kernels/attention.cu` kernels on candle's CUDA device (feature `cuda`): the
//! `cuda_fwd` of the fused attention op and of its backward op.
//!
//! The element type is taken from the `qkv` storage's `CudaStorageSlice` variant (f32 or bf16);
//! every other storage must match it. `q`, `k`, `v` arrive packed (`q ‖ k ‖ v`, each contiguous).
use candle::backend::BackendStorage;
use candle::cuda::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle::cuda::{CudaDType, CudaStorageSlice, WrapErr};
use candle::{CudaDevice, CudaStorage, Layout, Result};
use medseg_kernels::AttentionGeom;
use medseg_kernels::ptx::{ATTENTION, ATTENTION_CHUNK, ATTENTION_MODULE, ATTENTION_ROWS};

use crate::cuda::launch::{blocks, int, view};

/// Floats of dynamic shared memory a launch may use (the 48 KiB available without opt-in).
const SHARED_FLOATS: usize = 12 * 1024;

/// Threads per block of the element-wise `attention_bwd_delta` kernel.
const DELTA_THREADS: u32 = 128;

/// The op's inputs: packed `q ‖ k ‖ v`, `bias` and `mask` (one-element placeholders when the
/// flags say absent).
pub(crate) struct Inputs<'a> {
    pub(crate) qkv: (&'a CudaStorage, &'a Layout),
    pub(crate) bias: (&'a CudaStorage, &'a Layout),
    pub(crate) mask: (&'a CudaStorage, &'a Layout),
    pub(crate) has_bias: bool,
    pub(crate) has_mask: bool,
}

/// Forward: returns `out` `[B·H·nq·dv]` in the input dtype.
pub(crate) fn attention_forward(g: &AttentionGeom, inp: &Inputs<'_>) -> Result<CudaStorage> {
    match &inp.qkv.0.slice {
        CudaStorageSlice::F32(s) => forward_t(s, "f32", g, inp),
        CudaStorageSlice::BF16(s) => forward_t(s, "bf16", g, inp),
        _ => candle::bail!("fused_attention: no CUDA kernel for {:?}", inp.qkv.0.dtype()),
    }
}

/// Backward from the forward output `out` and its gradient `dout` (both in the input dtype):
/// returns the flat f32 `[dq ‖ dk ‖ dv ‖ dbias]` and its length.
pub(crate) fn attention_backward(
    g: &AttentionGeom,
    inp: &Inputs<'_>,
    out: (&CudaStorage, &Layout),
    dout: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, usize)> {
    match &inp.qkv.0.slice {
        CudaStorageSlice::F32(s) => backward_t(s, "f32", g, inp, out, dout),
        CudaStorageSlice::BF16(s) => backward_t(s, "bf16", g, inp, out, dout),
        _ => candle::bail!("fused_attention backward: no CUDA kernel for {:?}", inp.qkv.0.dtype()),
    }
}

/// Rows per shared-memory tile when each row holds `width` floats.
fn tile_rows(width: usize) -> Result<usize> {
    let kt = (SHARED_FLOATS / width.max(1)).min(ATTENTION_ROWS as usize);
    if kt == 0 {
        candle::bail!("fused_attention: feature sizes {width} too large for one shared-memory row")
    }
    Ok(kt)
}

/// The kernel integer arguments shared by the launches.
struct Ints {
    b: i32,
    h: i32,
    nq: i32,
    nk: i32,
    d: i32,
    dv: i32,
    nw: i32,
    n_valid: i32,
    has_bias: i32,
    has_mask: i32,
}

impl Ints {
    fn new(g: &AttentionGeom, has_bias: bool, has_mask: bool) -> Result<Self> {
        if g.batch > 65_535 || g.heads > 65_535 {
            candle::bail!("fused_attention: batch {} / heads {} exceed the grid", g.batch, g.heads)
        }
        Ok(Self {
            b: int("batch", g.batch)?,
            h: int("heads", g.heads)?,
            nq: int("nq", g.nq)?,
            nk: int("nk", g.nk)?,
            d: int("d", g.d)?,
            dv: int("dv", g.dv)?,
            nw: int("mask windows", g.mask_windows)?,
            n_valid: int("n_valid", g.n_valid)?,
            has_bias: i32::from(has_bias),
            has_mask: i32::from(has_mask),
        })
    }
}

/// Launches `attention_fwd_<sfx>`; with `lse_only` it only writes `lse`.
#[allow(clippy::too_many_arguments)] // reason: one argument per kernel buffer.
fn launch_forward<T: DeviceRepr>(
    dev: &CudaDevice,
    sfx: &str,
    g: &AttentionGeom,
    n: &Ints,
    (q, k, v, bias, mask): (
        &CudaView<'_, T>,
        &CudaView<'_, T>,
        &CudaView<'_, T>,
        &CudaView<'_, T>,
        &CudaView<'_, T>,
    ),
    out: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
    lse_only: bool,
) -> Result<()> {
    let func =
        dev.get_or_load_custom_func(&format!("attention_fwd_{sfx}"), ATTENTION_MODULE, ATTENTION)?;
    let kt = tile_rows(g.d + ATTENTION_CHUNK)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks(g.nq, ATTENTION_ROWS)?, n.h as u32, n.b as u32),
        block_dim: (ATTENTION_ROWS, 1, 1),
        shared_mem_bytes: (kt * (g.d + ATTENTION_CHUNK) * 4) as u32,
    };
    let (kt, lse_only, scale) = (kt as i32, i32::from(lse_only), g.scale);
    let mut b = func.builder();
    b.arg(q).arg(k).arg(v).arg(bias).arg(mask).arg(out).arg(lse);
    b.arg(&n.h).arg(&n.nq).arg(&n.nk).arg(&n.d).arg(&n.dv).arg(&n.nw).arg(&n.n_valid);
    b.arg(&scale).arg(&n.has_bias).arg(&n.has_mask).arg(&kt).arg(&lse_only);
    // SAFETY: the argument list matches `attention_fwd_*` in kernels/attention.cu; every buffer
    // has the length the geometry implies (checked by the callers' views and allocations).
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

fn forward_t<T: CudaDType + DeviceRepr>(
    qkv: &CudaSlice<T>,
    sfx: &str,
    g: &AttentionGeom,
    inp: &Inputs<'_>,
) -> Result<CudaStorage> {
    let dev = &inp.qkv.0.device;
    let n = Ints::new(g, inp.has_bias, inp.has_mask)?;
    let qkv = view(qkv, inp.qkv.1)?;
    let (ql, kl) = (g.q_len(), g.k_len());
    let (q, k, v) = (qkv.slice(..ql), qkv.slice(ql..ql + kl), qkv.slice(ql + kl..));
    let bias = view(inp.bias.0.as_cuda_slice::<T>()?, inp.bias.1)?;
    let mask = view(inp.mask.0.as_cuda_slice::<T>()?, inp.mask.1)?;
    // SAFETY: the kernel writes every element of `out` before it is read.
    let mut out = unsafe { dev.alloc::<T>(g.out_len()) }?;
    let mut lse = dev.alloc_zeros::<f32>(g.lse_len())?;
    launch_forward(dev, sfx, g, &n, (&q, &k, &v, &bias, &mask), &mut out, &mut lse, false)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

fn backward_t<T: CudaDType + DeviceRepr>(
    qkv: &CudaSlice<T>,
    sfx: &str,
    g: &AttentionGeom,
    inp: &Inputs<'_>,
    out: (&CudaStorage, &Layout),
    dout: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, usize)> {
    let dev = &inp.qkv.0.device;
    let has_bias = inp.has_bias;
    let n = Ints::new(g, has_bias, inp.has_mask)?;
    let qkv = view(qkv, inp.qkv.1)?;
    let (ql, kl) = (g.q_len(), g.k_len());
    let (q, k, v) = (qkv.slice(..ql), qkv.slice(ql..ql + kl), qkv.slice(ql + kl..));
    let bias = view(inp.bias.0.as_cuda_slice::<T>()?, inp.bias.1)?;
    let mask = view(inp.mask.0.as_cuda_slice::<T>()?, inp.mask.1)?;
    let out = view(out.0.as_cuda_slice::<T>()?, out.1)?;
    let dout = view(dout.0.as_cuda_slice::<T>()?, dout.1)?;

    // 1. Row log-sum-exp (forward without values).
    let mut lse = dev.alloc_zeros::<f32>(g.lse_len())?;
    // SAFETY: with `lse_only` the kernel never touches `out`.
    let mut unused = unsafe { dev.alloc::<T>(1) }?;
    launch_forward(dev, sfx, g, &n, (&q, &k, &v, &bias, &mask), &mut unused, &mut lse, true)?;

    // 2. delta = rowsum(dout ⊙ out).
    let mut delta = dev.alloc_zeros::<f32>(g.lse_len())?;
    let func = dev.get_or_load_custom_func(
        &format!("attention_bwd_delta_{sfx}"),
        ATTENTION_MODULE,
        ATTENTION,
    )?;
    let rows = g.lse_len() as i64;
    let cfg = LaunchConfig {
        grid_dim: (blocks(g.lse_len(), DELTA_THREADS)?, 1, 1),
        block_dim: (DELTA_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = func.builder();
    b.arg(&out).arg(&dout).arg(&mut delta).arg(&rows).arg(&n.dv);
    // SAFETY: matches `attention_bwd_delta_*`; `out`, `dout` hold `rows·dv` elements.
    unsafe { b.launch(cfg) }.w()?;

    // 3. All gradients in one f32 buffer: [dq | dk | dv | dbias].
    let total = ql + kl + g.v_len() + if has_bias { g.bias_len() } else { 0 };
    let mut grads = dev.alloc_zeros::<f32>(total)?;
    let mut dbias_unused = dev.alloc_zeros::<f32>(1)?;
    {
        let (mut dq, mut rest) = grads.split_at_mut(ql);
        let (mut dk, mut rest) = rest.split_at_mut(kl);
        let (mut dvv, mut dbias) = rest.split_at_mut(g.v_len());
        let scale = g.scale;

        let kt = tile_rows(g.d + g.dv)?;
        let chunks = g.d.div_ceil(ATTENTION_CHUNK);
        let func = dev.get_or_load_custom_func(
            &format!("attention_bwd_dq_{sfx}"),
            ATTENTION_MODULE,
            ATTENTION,
        )?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(g.nq, ATTENTION_ROWS)?, n.h as u32, grid_z(g.batch * chunks)?),
            block_dim: (ATTENTION_ROWS, 1, 1),
            shared_mem_bytes: (kt * (g.d + g.dv) * 4) as u32,
        };
        let kt = kt as i32;
        let mut b = func.builder();
        b.arg(&q).arg(&k).arg(&v).arg(&bias).arg(&mask).arg(&lse).arg(&delta).arg(&dout);
        b.arg(&mut dq).arg(&n.b).arg(&n.h).arg(&n.nq).arg(&n.nk).arg(&n.d).arg(&n.dv);
        b.arg(&n.nw).arg(&n.n_valid).arg(&scale).arg(&n.has_bias).arg(&n.has_mask).arg(&kt);
        // SAFETY: matches `attention_bwd_dq_*`; `dq` holds B·H·nq·d floats.
        unsafe { b.launch(cfg) }.w()?;

        let kt = tile_rows(g.d + g.dv + 2)?;
        let chunks = g.d.max(g.dv).div_ceil(ATTENTION_CHUNK);
        let func = dev.get_or_load_custom_func(
            &format!("attention_bwd_dkv_{sfx}"),
            ATTENTION_MODULE,
            ATTENTION,
        )?;
        let cfg = LaunchConfig {
            grid_dim: (blocks(g.nk, ATTENTION_ROWS)?, n.h as u32, grid_z(g.batch * chunks)?),
            block_dim: (ATTENTION_ROWS, 1, 1),
            shared_mem_bytes: (kt * (g.d + g.dv + 2) * 4) as u32,
        };
        let kt = kt as i32;
        let mut b = func.builder();
        b.arg(&q).arg(&k).arg(&v).arg(&bias).arg(&mask).arg(&lse).arg(&delta).arg(&dout);
        b.arg(&mut dk).arg(&mut dvv);
        if has_bias {
            b.arg(&mut dbias);
        } else {
            b.arg(&mut dbias_unused);
        }
        b.arg(&n.b).arg(&n.h).arg(&n.nq).arg(&n.nk).arg(&n.d).arg(&n.dv);
        b.arg(&n.nw).arg(&n.n_valid).arg(&scale).arg(&n.has_bias).arg(&n.has_mask).arg(&kt);
        // SAFETY: matches `attention_bwd_dkv_*`; `dbias` (zeroed) holds H·nq·nk floats when
        // `has_bias`, and is never touched otherwise.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(grads, dev.clone()), total))
}

fn grid_z(n: usize) -> Result<u32> {
    if n > 65_535 {
        candle::bail!("fused_attention: {n} batch × column-chunk blocks exceed the grid's z limit")
    }
    Ok(n as u32)
}
