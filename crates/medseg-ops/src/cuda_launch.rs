//! Launches of the `kernels/attention.cu` and `kernels/im2col.cu` kernels on candle's CUDA device
//! (feature `cuda`).
//!
//! Storages arrive from candle custom ops as `(CudaStorage, Layout)`; every one must be
//! contiguous (the ops make them so). The element type is taken from the first storage's
//! `CudaStorageSlice` variant (f32 or bf16); every other storage must match it.
use candle::backend::BackendStorage;
use candle::cuda::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle::cuda::{CudaDType, CudaStorageSlice, WrapErr};
use candle::{CudaDevice, CudaStorage, Layout, Result};
use medseg_kernels::ptx::{
    ATTENTION, ATTENTION_CHUNK, ATTENTION_MODULE, ATTENTION_ROWS, IM2COL, IM2COL_MODULE,
};
use medseg_kernels::reference::{AttentionGeom, Im2colGeom};

/// Floats of dynamic shared memory a launch may use (the 48 KiB available without opt-in).
const SHARED_FLOATS: usize = 12 * 1024;

/// Threads per block of the element-wise `attention_bwd_delta` kernel.
const DELTA_THREADS: u32 = 128;

/// The forward op's three inputs.
pub(crate) struct Inputs<'a> {
    pub(crate) qkv: (&'a CudaStorage, &'a Layout),
    pub(crate) bias: (&'a CudaStorage, &'a Layout),
    pub(crate) mask: (&'a CudaStorage, &'a Layout),
}

/// Forward: returns `out` `[B·H·nq·dv]` in the input dtype.
pub(crate) fn attention_forward(
    g: &AttentionGeom,
    has_bias: bool,
    has_mask: bool,
    inp: &Inputs<'_>,
) -> Result<CudaStorage> {
    match &inp.qkv.0.slice {
        CudaStorageSlice::F32(s) => forward_t(s, "f32", g, has_bias, has_mask, inp),
        CudaStorageSlice::BF16(s) => forward_t(s, "bf16", g, has_bias, has_mask, inp),
        _ => candle::bail!("fused_attention: no CUDA kernel for {:?}", inp.qkv.0.dtype()),
    }
}

/// Backward: returns the flat f32 `[dq ‖ dk ‖ dv ‖ dbias]` and its length.
pub(crate) fn attention_backward(
    g: &AttentionGeom,
    has_bias: bool,
    has_mask: bool,
    qkv: (&CudaStorage, &Layout),
    bias_mask: (&CudaStorage, &Layout),
    out_dout: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, usize)> {
    match &qkv.0.slice {
        CudaStorageSlice::F32(s) => {
            backward_t(s, "f32", g, has_bias, has_mask, qkv.1, bias_mask, out_dout, &qkv.0.device)
        }
        CudaStorageSlice::BF16(s) => {
            backward_t(s, "bf16", g, has_bias, has_mask, qkv.1, bias_mask, out_dout, &qkv.0.device)
        }
        _ => candle::bail!("fused_attention backward: no CUDA kernel for {:?}", qkv.0.dtype()),
    }
}

/// The contiguous view of `slice` described by `layout`.
fn view<'a, T>(slice: &'a CudaSlice<T>, layout: &Layout) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle::bail!("medseg CUDA op: expected a contiguous input, got {layout:?}"),
    }
}

/// `v` as a kernel `int`, or an error naming it.
fn int(name: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle::Error::Msg(format!("fused_attention: {name} = {v} > i32")))
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

fn blocks(n: usize, per: u32) -> Result<u32> {
    u32::try_from(n.div_ceil(per as usize))
        .map_err(|_| candle::Error::Msg(format!("medseg CUDA op: {n} rows exceed the grid")))
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
    has_bias: bool,
    has_mask: bool,
    inp: &Inputs<'_>,
) -> Result<CudaStorage> {
    let dev = &inp.qkv.0.device;
    let n = Ints::new(g, has_bias, has_mask)?;
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

#[allow(clippy::too_many_arguments)] // reason: one argument per op input.
fn backward_t<T: CudaDType + DeviceRepr>(
    qkv: &CudaSlice<T>,
    sfx: &str,
    g: &AttentionGeom,
    has_bias: bool,
    has_mask: bool,
    qkv_layout: &Layout,
    bias_mask: (&CudaStorage, &Layout),
    out_dout: (&CudaStorage, &Layout),
    dev: &CudaDevice,
) -> Result<(CudaStorage, usize)> {
    let n = Ints::new(g, has_bias, has_mask)?;
    let qkv = view(qkv, qkv_layout)?;
    let (ql, kl) = (g.q_len(), g.k_len());
    let (q, k, v) = (qkv.slice(..ql), qkv.slice(ql..ql + kl), qkv.slice(ql + kl..));
    let bm = view(bias_mask.0.as_cuda_slice::<T>()?, bias_mask.1)?;
    let bias_len = if has_bias { g.bias_len() } else { 1 };
    let (bias, mask) = (bm.slice(..bias_len), bm.slice(bias_len..));
    let od = view(out_dout.0.as_cuda_slice::<T>()?, out_dout.1)?;
    let (out, dout) = (od.slice(..g.out_len()), od.slice(g.out_len()..));

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

/// Threads per block of the im2col / col2im kernels.
const IM2COL_THREADS: u32 = 256;

/// `Geom` of kernels/im2col.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelGeom {
    input: [i32; 3],
    output: [i32; 3],
    kernel: [i32; 3],
    stride: [i32; 3],
    padding: [i32; 3],
    dilation: [i32; 3],
}

// SAFETY: plain old data (18 `i32`), laid out exactly as `struct Geom` in kernels/im2col.cu.
unsafe impl DeviceRepr for KernelGeom {}

impl KernelGeom {
    fn new(g: &Im2colGeom) -> Result<Self> {
        let conv = |name: &str, v: [usize; 3]| -> Result<[i32; 3]> {
            Ok([int(name, v[0])?, int(name, v[1])?, int(name, v[2])?])
        };
        Ok(Self {
            input: conv("input", g.input)?,
            output: conv("output", g.output)?,
            kernel: conv("kernel", g.kernel)?,
            stride: conv("stride", g.stride)?,
            padding: conv("padding", g.padding)?,
            dilation: conv("dilation", g.dilation)?,
        })
    }
}

/// `im2col` (`forward`) or `col2im` of a contiguous f32/bf16 storage.
pub(crate) fn im2col(
    g: &Im2colGeom,
    s: &CudaStorage,
    l: &Layout,
    forward: bool,
) -> Result<CudaStorage> {
    match &s.slice {
        CudaStorageSlice::F32(x) => im2col_t(x, "f32", g, l, forward, &s.device),
        CudaStorageSlice::BF16(x) => im2col_t(x, "bf16", g, l, forward, &s.device),
        _ => candle::bail!("im2col3d: no CUDA kernel for {:?}", s.dtype()),
    }
}

fn im2col_t<T: CudaDType + DeviceRepr>(
    src: &CudaSlice<T>,
    sfx: &str,
    g: &Im2colGeom,
    l: &Layout,
    forward: bool,
    dev: &CudaDevice,
) -> Result<CudaStorage> {
    let src = view(src, l)?;
    let (name, total, want) = if forward {
        ("im2col", g.cols_len(), g.x_len())
    } else {
        ("col2im", g.x_len(), g.cols_len())
    };
    if src.len() != want {
        candle::bail!("{name}: input has {} elements, the geometry needs {want}", src.len())
    }
    // SAFETY: the kernel writes every one of the `total` elements.
    let mut dst = unsafe { dev.alloc::<T>(total) }?;
    let func = dev.get_or_load_custom_func(&format!("{name}_{sfx}"), IM2COL_MODULE, IM2COL)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks(total, IM2COL_THREADS)?, 1, 1),
        block_dim: (IM2COL_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (count, geom) = (total as i64, KernelGeom::new(g)?);
    let mut b = func.builder();
    b.arg(&src).arg(&mut dst).arg(&count).arg(&geom);
    // SAFETY: matches `im2col_*` / `col2im_*` (src, dst, total, Geom by value); lengths checked.
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(dst, dev.clone()))
}
