//! Helpers shared by the ops: contiguous f32 slices of candle CPU storages inside custom ops, and
//! the composed path of an op on devices without a kernel of ours.
use candle::{CpuStorage, DType, Layout, Result, Tensor};

/// The contiguous f32 slice behind `storage`/`layout`, or an error naming `op`.
///
/// Every public op makes its inputs contiguous before applying a custom op, so a strided layout
/// here is an internal bug, reported as an error rather than a panic.
pub(crate) fn f32_slice<'a>(
    op: &'static str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle::bail!("{op}: expected a contiguous f32 input, got layout {layout:?}"),
    }
}

/// `t` as a contiguous f32 tensor: what every fast path's custom op reads. Differentiable (the
/// dtype cast and copy carry candle's own backward).
pub(crate) fn f32_contiguous(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.contiguous()
}

/// A raw pointer that may be shared across rayon tasks that write disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);

// SAFETY: users of `SyncPtr` guarantee that concurrent tasks write disjoint elements.
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer; a method so closures capture the whole (Sync) wrapper, not the raw field.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `f(x)` computed in f32 and cast back to `x`'s dtype: how an op runs its composed `*_reference`
/// on a device for which this crate has no kernel (statistics, `exp` and `erf` stay in f32 under
/// bf16 mixed precision; candle's own kernels compute every step, with candle's autograd).
pub(crate) fn composed_in_f32(
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let dtype = x.dtype();
    f(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
}
