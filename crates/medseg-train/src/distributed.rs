//! Data-parallel training (issue 8; docs/cuda.md §5): the process's place in the world,
//! rank-aware sharding of an epoch's sample order, the gradient all-reduce behind the
//! [`GradientReducer`] trait, and the rendezvous file through which rank 0 hands the NCCL unique
//! id to the other ranks.
//!
//! The trainer sees only [`GradientReducer`]: [`LocalReducer`] connects ranks that are threads of
//! one process (CPU, tests), `cuda_nccl::NcclReducer` (feature `nccl`) connects one process per
//! GPU. Every rank contributes one flat f32 buffer per optimiser step ([`all_reduce_mean`]: the
//! gradients in parameter-name order, then a few scalars such as the loss), receives the
//! element-wise sum, divides by the world size, and applies the same AdamW step: the weights stay
//! identical on every rank without being broadcast.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle::{DType, Tensor};
use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DistError {
    /// `rank` is not below `world_size`, or the world is empty.
    #[error("rank {rank} is not in a world of {world_size} processes")]
    BadRank {
        /// The offending rank.
        rank: usize,
        /// The world size.
        world_size: usize,
    },
    /// A launcher variable is present but not a number.
    #[error("{name}={value:?} is not a non-negative integer")]
    BadVar {
        /// Variable name.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// Ranks contributed gradients of different lengths.
    #[error("rank gradients have different lengths: {0:?}")]
    Ragged(Vec<usize>),
    /// Another rank stopped taking part (its process or thread ended or failed).
    #[error("rank {rank} left the world while rank {me} waited for it in an all-reduce")]
    PeerLeft {
        /// The rank that left.
        rank: usize,
        /// The waiting rank.
        me: usize,
    },
    /// The rendezvous file of the NCCL unique id could not be written or read.
    #[error("rendezvous file {path}: {reason}")]
    IdFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The rendezvous file did not appear in time.
    #[error(
        "rendezvous file {path} did not appear within {waited_s} s: rank 0 writes it when it \
         starts; is rank 0 running, with the same run folder (on a filesystem every node sees)?"
    )]
    IdTimeout {
        /// The file waited for.
        path: PathBuf,
        /// Seconds waited.
        waited_s: u64,
    },
    /// The transport failed (NCCL error, poisoned lock).
    #[error("all-reduce transport: {0}")]
    Transport(String),
}

/// This process's place among the data-parallel workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes (GPUs) over all nodes.
    pub world_size: usize,
    /// GPU index on this node (`cuda:{local_rank}`).
    pub local_rank: usize,
}

impl World {
    /// The single-process world (plain training).
    pub const SINGLE: World = World { rank: 0, world_size: 1, local_rank: 0 };

    /// A checked world.
    pub fn new(rank: usize, world_size: usize, local_rank: usize) -> Result<Self, DistError> {
        if world_size == 0 || rank >= world_size {
            return Err(DistError::BadRank { rank, world_size });
        }
        Ok(Self { rank, world_size, local_rank })
    }

    /// From launcher variables `MEDSEG_RANK`, `MEDSEG_WORLD_SIZE`, `MEDSEG_LOCAL_RANK` looked up
    /// through `var` (the binary passes `std::env::var`; libraries read no environment). Absent
    /// variables mean the single-process world; `MEDSEG_LOCAL_RANK` defaults to the rank.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, DistError> {
        let num = |name: &'static str| -> Result<Option<usize>, DistError> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| DistError::BadVar { name, value: v.clone() }),
            }
        };
        let world_size = num("MEDSEG_WORLD_SIZE")?.unwrap_or(1);
        let rank = num("MEDSEG_RANK")?.unwrap_or(0);
        let local_rank = num("MEDSEG_LOCAL_RANK")?.unwrap_or(rank);
        Self::new(rank, world_size, local_rank)
    }

    /// Only rank 0 writes checkpoints, logs, plots and validation results.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// The device string for this rank when training on `cuda`.
    pub fn cuda_device(&self) -> String {
        format!("cuda:{}", self.local_rank)
    }
}

/// Steps every rank runs per epoch for `len` samples: `⌈len / world_size⌉` (0 for no samples).
pub fn steps_per_rank(len: usize, world: &World) -> usize {
    len.div_ceil(world.world_size)
}

/// This rank's share of an epoch's sample `order`: `order[rank], order[rank + w], …`, padded by
/// wrapping to [`steps_per_rank`] items so that every rank runs the same number of steps (an
/// all-reduce must never wait for a rank that has run out of data).
pub fn shard(order: &[usize], world: &World) -> Vec<usize> {
    if order.is_empty() {
        return Vec::new();
    }
    (0..steps_per_rank(order.len(), world))
        .map(|s| order[(s * world.world_size + world.rank) % order.len()])
        .collect()
}

/// What the all-reduce + divide computes: the element-wise mean of every rank's gradient.
pub fn average_gradients(per_rank: &[Vec<f32>]) -> Result<Vec<f32>, DistError> {
    let Some(first) = per_rank.first() else { return Ok(Vec::new()) };
    if per_rank.iter().any(|g| g.len() != first.len()) {
        return Err(DistError::Ragged(per_rank.iter().map(Vec::len).collect()));
    }
    let w = per_rank.len() as f32;
    Ok((0..first.len()).map(|i| per_rank.iter().map(|g| g[i]).sum::<f32>() / w).collect())
}

/// The gradient all-reduce of data-parallel training, hiding the transport from the trainer.
///
/// Every rank calls [`GradientReducer::all_reduce_sum`] the same number of times with buffers of
/// the same length; each call blocks until every rank has contributed.
pub trait GradientReducer {
    /// The world this reducer connects.
    fn world(&self) -> World;
    /// The element-wise sum over every rank of the flat f32 tensor `x` (same length on every
    /// rank), on `x`'s device. Every rank receives the same bits.
    fn all_reduce_sum(&mut self, x: &Tensor) -> crate::Result<Tensor>;
}

/// Averages `tensors` (any shapes and float dtypes, one device) and the scalars `extra` over
/// every rank with one all-reduce of one flat f32 buffer: `tensors ‖ extra`, summed, divided by
/// the world size, split back into the original shapes and dtypes.
pub fn all_reduce_mean(
    reducer: &mut dyn GradientReducer,
    tensors: &[Tensor],
    extra: &[f32],
) -> crate::Result<(Vec<Tensor>, Vec<f32>)> {
    let device = match tensors.first() {
        Some(t) => t.device().clone(),
        None => candle::Device::Cpu,
    };
    let mut parts = tensors
        .iter()
        .map(|t| t.flatten_all()?.to_dtype(DType::F32))
        .collect::<candle::Result<Vec<_>>>()?;
    parts.push(Tensor::new(extra, &device)?);
    // [Σ numel + extra] on every rank
    let flat = Tensor::cat(&parts, 0)?;
    let sum = reducer.all_reduce_sum(&flat)?;
    if sum.dims() != flat.dims() {
        return Err(DistError::Transport(format!(
            "all-reduce returned {:?} elements for {:?}",
            sum.dims(),
            flat.dims()
        ))
        .into());
    }
    let mean = (sum / reducer.world().world_size as f64)?;
    let mut out = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for t in tensors {
        let n = t.elem_count();
        out.push(mean.narrow(0, offset, n)?.reshape(t.shape())?.to_dtype(t.dtype())?);
        offset += n;
    }
    let extra = mean.narrow(0, offset, extra.len())?.to_vec1::<f32>()?;
    Ok((out, extra))
}

/// The state the ranks of a [`LocalReducer`] group share.
#[derive(Debug)]
struct LocalState {
    /// Each rank's contribution to the current all-reduce.
    slots: Vec<Option<Vec<f32>>>,
    /// Ranks that have contributed to the current all-reduce.
    arrived: usize,
    /// Completed all-reduces.
    generation: u64,
    /// The sum of the last completed all-reduce.
    result: std::result::Result<Arc<Vec<f32>>, DistError>,
    /// The first rank whose reducer was dropped.
    left: Option<usize>,
}

#[derive(Debug)]
struct LocalShared {
    state: Mutex<LocalState>,
    cv: Condvar,
}

/// A [`GradientReducer`] between ranks that are threads of one process (CPU tensors; tests and
/// single-machine experiments). The last rank to arrive sums the contributions in rank order, so
/// every rank receives the same bits; a rank whose reducer is dropped makes the others' waits fail
/// with [`DistError::PeerLeft`] instead of hanging.
#[derive(Debug)]
pub struct LocalReducer {
    world: World,
    shared: Arc<LocalShared>,
}

impl LocalReducer {
    /// One connected reducer per rank of a world of `world_size` threads (index = rank).
    pub fn group(world_size: usize) -> Result<Vec<LocalReducer>, DistError> {
        if world_size == 0 {
            return Err(DistError::BadRank { rank: 0, world_size });
        }
        let shared = Arc::new(LocalShared {
            state: Mutex::new(LocalState {
                slots: vec![None; world_size],
                arrived: 0,
                generation: 0,
                result: Ok(Arc::new(Vec::new())),
                left: None,
            }),
            cv: Condvar::new(),
        });
        (0..world_size)
            .map(|r| {
                Ok(LocalReducer { world: World::new(r, world_size, r)?, shared: shared.clone() })
            })
            .collect()
    }
}

fn poisoned<T>(_: T) -> DistError {
    DistError::Transport("a rank panicked while holding the all-reduce lock".into())
}

impl GradientReducer for LocalReducer {
    fn world(&self) -> World {
        self.world
    }

    fn all_reduce_sum(&mut self, x: &Tensor) -> crate::Result<Tensor> {
        let (shape, device) = (x.shape().clone(), x.device().clone());
        let mine = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let me = self.world.rank;
        let mut st = self.shared.state.lock().map_err(poisoned)?;
        if let Some(rank) = st.left {
            return Err(DistError::PeerLeft { rank, me }.into());
        }
        st.slots[me] = Some(mine);
        st.arrived += 1;
        let generation = st.generation;
        if st.arrived == self.world.world_size {
            let slots: Vec<Vec<f32>> =
                st.slots.iter_mut().map(|s| s.take().unwrap_or_default()).collect();
            st.result = sum_in_rank_order(&slots).map(Arc::new);
            st.arrived = 0;
            st.generation += 1;
            self.shared.cv.notify_all();
        } else {
            while st.generation == generation && st.left.is_none() {
                st = self.shared.cv.wait(st).map_err(poisoned)?;
            }
            if st.generation == generation {
                let rank = st.left.unwrap_or(me);
                return Err(DistError::PeerLeft { rank, me }.into());
            }
        }
        let sum = st.result.clone()?;
        drop(st);
        Ok(Tensor::from_slice(sum.as_slice(), shape, &device)?)
    }
}

impl Drop for LocalReducer {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.left.get_or_insert(self.world.rank);
        }
        self.shared.cv.notify_all();
    }
}

/// Element-wise sum of equally long buffers, added in rank order.
fn sum_in_rank_order(per_rank: &[Vec<f32>]) -> Result<Vec<f32>, DistError> {
    let Some(first) = per_rank.first() else { return Ok(Vec::new()) };
    if per_rank.iter().any(|g| g.len() != first.len()) {
        return Err(DistError::Ragged(per_rank.iter().map(Vec::len).collect()));
    }
    let mut sum = first.clone();
    for g in &per_rank[1..] {
        for (s, v) in sum.iter_mut().zip(g) {
            *s += v;
        }
    }
    Ok(sum)
}

/// Bytes of an NCCL unique id (`ncclUniqueId`).
pub const NCCL_ID_BYTES: usize = 128;

/// The rendezvous file of a run: `<run_dir>/nccl-id` (rank 0 writes it, the others read it,
/// rank 0 removes it once every rank has joined).
pub fn id_file(run_dir: &Path) -> PathBuf {
    run_dir.join("nccl-id")
}

/// Writes `id` to `path` atomically (temporary file in the same folder, then rename), as one line
/// of hex, so a reader sees either no file or the whole id.
pub fn write_id_file(path: &Path, id: &[u8]) -> crate::Result<()> {
    let mut text: String = id.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    Ok(crate::checkpoint::write_atomic(path, text.as_bytes())?)
}

/// Reads an id written by [`write_id_file`] and checks its length.
pub fn read_id_file(path: &Path, len: usize) -> Result<Vec<u8>, DistError> {
    let bad = |reason: String| DistError::IdFile { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let hex = text.trim();
    if hex.len() != 2 * len || !hex.is_ascii() {
        return Err(bad(format!("expected {len} bytes as {} hex digits, got {:?}", 2 * len, hex)));
    }
    (0..len)
        .map(|i| {
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| bad(format!("not hex: {:?}", &hex[2 * i..2 * i + 2])))
        })
        .collect()
}

/// Polls every `poll` for the file rank 0 writes with [`write_id_file`] and returns its id;
/// fails with [`DistError::IdTimeout`] after `timeout`.
pub fn wait_for_id_file(
    path: &Path,
    len: usize,
    timeout: Duration,
    poll: Duration,
) -> Result<Vec<u8>, DistError> {
    let start = Instant::now();
    loop {
        if path.exists() {
            return read_id_file(path, len);
        }
        if start.elapsed() >= timeout {
            return Err(DistError::IdTimeout {
                path: path.to_path_buf(),
                waited_s: start.elapsed().as_secs(),
            });
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(rank: usize, n: usize) -> World {
        World::new(rank, n, rank).expect("valid world")
    }

    #[test]
    fn shards_cover_every_sample_once_when_divisible() {
        let order: Vec<usize> = (0..12).rev().collect();
        let mut all: Vec<usize> = (0..3).flat_map(|r| shard(&order, &world(r, 3))).collect();
        assert_eq!(shard(&order, &world(1, 3)), vec![10, 7, 4, 1]);
        all.sort_unstable();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn shards_pad_by_wrapping_to_equal_lengths() {
        let order: Vec<usize> = (0..10).collect();
        let shards: Vec<Vec<usize>> = (0..4).map(|r| shard(&order, &world(r, 4))).collect();
        assert!(shards.iter().all(|s| s.len() == 3));
        assert_eq!(shards[2], vec![2, 6, 0]);
        assert_eq!(shards[3], vec![3, 7, 1]);
        let mut seen: Vec<usize> = shards.concat();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10, "every sample is used");
        assert_eq!(shard(&order, &World::SINGLE), order);
        assert!(shard(&[], &world(0, 2)).is_empty());
    }

    #[test]
    fn averaging_matches_single_process_gradient_of_the_mean_loss() {
        // Loss per sample l_i = a·x_i², mean over a global batch of 4 split over 2 ranks:
        // each rank's gradient is the mean over its 2 samples; their average is the global one.
        let x = [1.0f32, -2.0, 0.5, 3.0];
        let grad = |xs: &[f32]| xs.iter().map(|v| v * v).sum::<f32>() / xs.len() as f32;
        let avg = average_gradients(&[vec![grad(&x[..2])], vec![grad(&x[2..])]]).expect("same len");
        assert!((avg[0] - grad(&x)).abs() < 1e-6);
        assert_eq!(average_gradients(&[vec![1.0, 2.0]]).expect("one rank"), vec![1.0, 2.0]);
        assert_eq!(
            average_gradients(&[vec![1.0], vec![1.0, 2.0]]),
            Err(DistError::Ragged(vec![1, 2]))
        );
    }

    #[test]
    fn world_from_launcher_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(World::from_vars(vars(&[])), Ok(World::SINGLE));
        let w = World::from_vars(vars(&[
            ("MEDSEG_RANK", "5"),
            ("MEDSEG_WORLD_SIZE", "8"),
            ("MEDSEG_LOCAL_RANK", "1"),
        ]))
        .expect("valid");
        assert_eq!((w.rank, w.world_size, w.cuda_device().as_str()), (5, 8, "cuda:1"));
        assert!(!w.is_writer() && World::SINGLE.is_writer());
        assert_eq!(
            World::from_vars(vars(&[("MEDSEG_RANK", "2"), ("MEDSEG_WORLD_SIZE", "2")])),
            Err(DistError::BadRank { rank: 2, world_size: 2 })
        );
        assert!(matches!(
            World::from_vars(vars(&[("MEDSEG_WORLD_SIZE", "two")])),
            Err(DistError::BadVar { name: "MEDSEG_WORLD_SIZE", .. })
        ));
    }

    /// Runs `f(reducer)` on one thread per rank and returns the results in rank order.
    fn on_ranks<T: Send + 'static>(
        n: usize,
        f: impl Fn(LocalReducer) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = LocalReducer::group(n)
            .expect("group")
            .into_iter()
            .map(|r| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || f(r))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    }

    #[test]
    fn local_reducer_averages_and_every_rank_gets_the_same_bits() {
        let out = on_ranks(3, |mut r| {
            let rank = r.world().rank as f32;
            let dev = candle::Device::Cpu;
            let mut steps = Vec::new();
            // Several rounds: a fast rank must never overwrite a round a slow one still reads.
            for round in 0..20 {
                if r.world().rank == 1 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let a = Tensor::new(&[[rank, 1.0 + round as f32], [0.1 * rank, -rank]], &dev)
                    .expect("a");
                let b =
                    Tensor::new(&[rank / 3.0], &dev).expect("b").to_dtype(DType::F64).expect("b");
                let (avg, extra) =
                    all_reduce_mean(&mut r, &[a, b], &[rank, 7.0]).expect("all-reduce");
                assert_eq!((avg[0].dims(), avg[1].dtype()), (&[2usize, 2][..], DType::F64));
                let mut v = avg[0].flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
                v.push(avg[1].to_dtype(DType::F32).and_then(|t| t.to_vec1::<f32>()).expect("b")[0]);
                v.extend(extra);
                steps.push(v);
            }
            steps
        });
        // mean of rank = 1, of 1 + round = itself, of 0.1·rank = 0.1, …
        let want0 = [1.0f32, 1.0, 0.1, -1.0, 1.0 / 3.0, 1.0, 7.0];
        for (a, b) in out[0][0].iter().zip(want0) {
            assert!((a - b).abs() < 1e-6, "{:?} vs {want0:?}", out[0][0]);
        }
        assert_eq!(out[0][19][1], 20.0);
        let bits =
            |v: &Vec<Vec<f32>>| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        assert!(bits(&out[0]) == bits(&out[1]) && bits(&out[1]) == bits(&out[2]), "ranks differ");
    }

    #[test]
    fn a_rank_that_leaves_or_disagrees_fails_the_others_instead_of_hanging() {
        let mut group = LocalReducer::group(2).expect("group");
        let gone = group.pop().expect("rank 1");
        drop(gone);
        let x = Tensor::new(&[1f32, 2.0], &candle::Device::Cpu).expect("x");
        let e = group[0].all_reduce_sum(&x).expect_err("rank 1 left");
        assert!(matches!(e, crate::Error::Dist(DistError::PeerLeft { rank: 1, me: 0 })), "{e}");
        let out = on_ranks(2, |mut r| {
            let n = 2 + r.world().rank;
            let x = Tensor::zeros(n, DType::F32, &candle::Device::Cpu).expect("x");
            r.all_reduce_sum(&x).map(|_| ()).map_err(|e| e.to_string())
        });
        for o in out {
            assert!(o.as_ref().is_err_and(|e| e.contains("[2, 3]")), "{o:?}");
        }
        assert!(LocalReducer::group(0).is_err());
    }

    #[test]
    fn the_id_file_is_written_atomically_polled_for_and_times_out_clearly() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = id_file(dir.path());
        let id: Vec<u8> = (0..NCCL_ID_BYTES).map(|i| (i * 37 % 256) as u8).collect();
        // Absent: a clear timeout naming the file.
        let e = wait_for_id_file(
            &path,
            NCCL_ID_BYTES,
            Duration::from_millis(30),
            Duration::from_millis(5),
        )
        .expect_err("no file yet");
        assert!(matches!(&e, DistError::IdTimeout { path: p, .. } if *p == path), "{e}");
        assert!(e.to_string().contains("nccl-id") && e.to_string().contains("rank 0"), "{e}");
        // Written by "rank 0" while "rank 1" polls.
        let (p2, id2) = (path.clone(), id.clone());
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            write_id_file(&p2, &id2).expect("write");
        });
        let got = wait_for_id_file(
            &path,
            NCCL_ID_BYTES,
            Duration::from_secs(20),
            Duration::from_millis(5),
        )
        .expect("id");
        writer.join().expect("writer");
        assert_eq!(got, id);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["nccl-id".to_string()], "no temporary file is left behind");
        // A file of the wrong length or with non-hex content is an error, not a wrong id.
        std::fs::write(&path, "abcd\n").expect("write");
        assert!(matches!(read_id_file(&path, NCCL_ID_BYTES), Err(DistError::IdFile { .. })));
        std::fs::write(&path, "zz".repeat(NCCL_ID_BYTES)).expect("write");
        assert!(matches!(read_id_file(&path, NCCL_ID_BYTES), Err(DistError::IdFile { .. })));
    }
}
