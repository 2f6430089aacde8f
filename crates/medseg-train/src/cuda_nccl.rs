//! The NCCL transport of data-parallel training (feature `nccl`; docs/cuda.md §5): one process per
//! GPU, one communicator per process, joined through a rendezvous file in the run folder.
//!
//! Rank 0 creates the NCCL unique id and writes it atomically to `<run_dir>/nccl-id`
//! ([`crate::distributed::write_id_file`]); the other ranks poll for it
//! ([`crate::distributed::wait_for_id_file`], with a timeout and an error naming the file). Every
//! rank then calls `ncclCommInitRank` (cudarc `Comm::from_rank`) on candle's CUDA stream of its
//! device, which returns once all ranks have joined; rank 0 then removes the file. The gradient
//! all-reduce is a candle `CustomOp1` whose `cuda_fwd` runs `ncclAllReduce(sum)` on that stream,
//! so it is ordered after the backward kernels and before the optimiser's.
//!
//! Nothing in this file has run on a GPU (this project has none to test on): it compiles
//! against cudarc 0.19's NCCL 2.30 bindings and `libnccl.so.2` of the `nvidia-nccl-cu13` wheel.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle::backend::BackendStorage;
use candle::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::distributed::{
    DistError, GradientReducer, NCCL_ID_BYTES, World, wait_for_id_file, write_id_file,
};
use crate::{Error, Result};

/// How often ranks other than 0 look for the rendezvous file.
const POLL: Duration = Duration::from_millis(100);

/// A [`GradientReducer`] over an NCCL communicator (one process per GPU).
#[derive(Debug)]
pub struct NcclReducer {
    world: World,
    op: AllReduceSum,
}

impl NcclReducer {
    /// Joins the world: rank 0 writes a fresh unique id to `id_path`, the others wait up to
    /// `timeout` for it; then every rank initialises its communicator on `device` (which must be
    /// `cuda:{local_rank}`). Blocks until every rank has joined.
    pub fn connect(
        world: World,
        device: &Device,
        id_path: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(Error::Config(format!(
                "NCCL data parallel needs a cuda device, got {device:?}"
            )));
        };
        let nccl = |what: &str, e: candle::cuda::cudarc::nccl::result::NcclError| {
            Error::from(DistError::Transport(format!("rank {}: {what}: {e:?}", world.rank)))
        };
        let id = if world.rank == 0 {
            let id = Id::new().map_err(|e| nccl("ncclGetUniqueId", e))?;
            // c_char is i8 or u8 depending on the target: keep the bits.
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            write_id_file(id_path, &bytes)?;
            id
        } else {
            let bytes = wait_for_id_file(id_path, NCCL_ID_BYTES, timeout, POLL)?;
            let mut internal = [0 as std::ffi::c_char; NCCL_ID_BYTES];
            for (d, b) in internal.iter_mut().zip(bytes) {
                *d = b as std::ffi::c_char;
            }
            Id::uninit(internal)
        };
        let comm = Comm::from_rank(dev.cuda_stream(), world.rank, world.world_size, id)
            .map_err(|e| nccl("ncclCommInitRank", e))?;
        if world.rank == 0 {
            // Every rank has joined (the init is collective): a stale id must not outlive it.
            std::fs::remove_file(id_path).map_err(|e| Error::io(id_path, e))?;
        }
        Ok(NcclReducer { world, op: AllReduceSum { comm: Arc::new(comm) } })
    }
}

impl GradientReducer for NcclReducer {
    fn world(&self) -> World {
        self.world
    }

    fn all_reduce_sum(&mut self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cuda() {
            return Err(Error::Config(format!(
                "the NCCL all-reduce needs a cuda tensor, got one on {:?}",
                x.device()
            )));
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(x.apply_op1_no_bwd(&self.op)?)
    }
}

/// `ncclAllReduce(sum)` of a contiguous f32 CUDA tensor as a candle op (no backward: gradients
/// are reduced after the backward pass).
#[derive(Debug)]
struct AllReduceSum {
    comm: Arc<Comm>,
}

// SAFETY: `Comm` holds a raw `ncclComm_t`, which NCCL allows to be used from any thread as long
// as calls are not concurrent. A `NcclReducer` and its op are owned by the one thread that runs
// the trainer's steps, and candle calls `cuda_fwd` synchronously on that thread; the bounds are
// only needed because `CustomOp1` requires them.
unsafe impl Send for AllReduceSum {}
// SAFETY: as above: never used from two threads at once.
unsafe impl Sync for AllReduceSum {}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        candle::bail!(
            "the NCCL all-reduce runs on cuda tensors only (CPU ranks use distributed::LocalReducer)"
        )
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle::Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let src = s.as_cuda_slice::<f32>()?;
        let src = match l.contiguous_offsets() {
            Some((start, end)) => src.slice(start..end),
            None => candle::bail!("nccl all-reduce: expected a contiguous input, got {l:?}"),
        };
        let mut dst = dev.alloc_zeros::<f32>(l.shape().elem_count())?;
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}
