//! Launch of the `kernels/im2col.cu` kernels on candle's CUDA device (feature `cuda`): the
//! `cuda_fwd` of the `Im2col` / `Col2im` ops.
use candle::backend::BackendStorage;
use candle::cuda::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle::cuda::{CudaDType, CudaStorageSlice, WrapErr};
use candle::{CudaDevice, CudaStorage, Layout, Result};
use medseg_kernels::Im2colGeom;
use medseg_kernels::ptx::{IM2COL, IM2COL_MODULE};

use crate::cuda::launch::{blocks, int, view};

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
