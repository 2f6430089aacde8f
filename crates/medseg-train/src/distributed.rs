//! Data-parallel bookkeeping that does not need a GPU (issue 8; docs/cuda.md §5): the process's
//! place in the world, rank-aware sharding of an epoch's sample order, and the gradient averaging
//! the NCCL all-reduce performs. The NCCL transport itself (cudarc `nccl`, one process per GPU)
//! builds on these and is not part of this file.
use thiserror::Error;

/// A world description that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
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
}
