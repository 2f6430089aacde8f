//! Helpers of the kernel launches on candle's CUDA device (feature `cuda`): contiguous views of
//! the storages a custom op receives, kernel `int` arguments and grid sizes.
//!
//! Storages arrive from candle custom ops as `(CudaStorage, Layout)`; every one must be
//! contiguous (the ops make them so).
use candle::cuda::cudarc::driver::{CudaSlice, CudaView};
use candle::{Layout, Result};

/// The contiguous view of `slice` described by `layout`.
pub(crate) fn view<'a, T>(slice: &'a CudaSlice<T>, layout: &Layout) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle::bail!("medseg CUDA op: expected a contiguous input, got {layout:?}"),
    }
}

/// `v` as a kernel `int`, or an error naming it.
pub(crate) fn int(name: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| candle::Error::Msg(format!("medseg CUDA op: {name} = {v} exceeds i32")))
}

/// Blocks of `per` threads that cover `n` rows or elements.
pub(crate) fn blocks(n: usize, per: u32) -> Result<u32> {
    u32::try_from(n.div_ceil(per as usize))
        .map_err(|_| candle::Error::Msg(format!("medseg CUDA op: {n} rows exceed the grid")))
}
