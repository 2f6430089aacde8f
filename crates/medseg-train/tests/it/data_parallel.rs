//! Data-parallel training with the in-process CPU reducer (`distributed::LocalReducer`): the
//! trainer logic that the NCCL transport drives on GPUs, with two ranks as two threads.
use std::path::{Path, PathBuf};

use candle::Device;
use medseg_train::distributed::{GradientReducer, LocalReducer, World};
use medseg_train::{RunOptions, RunOutcome, TrainConfig, Trainer};

use crate::train_loop::tiny_config;

/// Weights (name order) as f32 vectors.
type Weights = Vec<(String, Vec<f32>)>;

/// What one rank ended with: the outcome, the final weights, the last epoch.
type RankRun = (RunOutcome, Weights, u64);

fn weights(t: &Trainer) -> Weights {
    medseg_train::checkpoint::varmap_tensors(t.varmap())
        .expect("tensors")
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().and_then(|x| x.to_vec1::<f32>()).expect("f32")))
        .collect()
}

/// Trains `cfg` as every rank of a world of `n` threads sharing `run_dir`; per rank: the outcome,
/// the final weights and the last epoch.
fn train_world(cfg: &TrainConfig, run_dir: &Path, n: usize) -> Vec<RankRun> {
    let handles: Vec<_> = LocalReducer::group(n)
        .expect("group")
        .into_iter()
        .map(|r| {
            let mut plan = cfg.clone().resolve().expect("plan");
            plan.run_dir = run_dir.to_path_buf();
            std::thread::spawn(move || {
                let reducer: Box<dyn GradientReducer> = Box::new(r);
                let mut t =
                    Trainer::new_in_world(plan, Device::Cpu, Some(reducer)).expect("trainer");
                let out = t.run(&RunOptions::default()).expect("run");
                (out, weights(&t), t.state().epoch)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

fn max_abs_diff(a: &Weights, b: &Weights) -> (f32, String) {
    let mut worst = (0f32, String::new());
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!((ka, va.len()), (kb, vb.len()));
        for (x, y) in va.iter().zip(vb) {
            if (x - y).abs() > worst.0 {
                worst = ((x - y).abs(), ka.clone());
            }
        }
    }
    worst
}

#[test]
fn two_ranks_agree_bit_for_bit_and_equal_one_rank_on_the_union_batch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let steps = 4;
    // 2 training cases; one per rank and step, or both in one batch of the single rank.
    let mut cfg = tiny_config(tmp.path(), steps);
    cfg.train.val_every = 100;
    cfg.data.batch_size = 1;
    // The conv biases in front of instance norms have gradients that are 0 in exact arithmetic
    // and rounding noise in f32; with ε = 1e-8 Adam turns the noise's sign into ±lr updates, which
    // differ between any two summation orders (measured: 3.6e-3 after 4 steps). ε = 1e-3 keeps
    // those updates negligible and leaves the real gradients in charge.
    cfg.optim.eps = 1e-3;
    let dp_dir: PathBuf = tmp.path().join("runs/dp");
    let ranks = train_world(&cfg, &dp_dir, 2);

    // (a) Both ranks: the same number of steps and epochs, the same weights, bit for bit.
    let (r0, r1) = (&ranks[0], &ranks[1]);
    assert_eq!((r0.0.losses.len(), r1.0.losses.len()), (steps as usize, steps as usize));
    assert_eq!(r0.2, r1.2, "ranks ended in different epochs");
    assert_eq!(r0.2, steps - 1, "one shard batch per epoch (2 cases over 2 ranks), 0-based");
    assert!(r0.1 == r1.1, "rank weights differ: {:?}", max_abs_diff(&r0.1, &r1.1));
    assert_eq!(r0.0.losses, r1.0.losses, "the logged loss is the all-reduced mean on every rank");
    // Only rank 0 validated and wrote the run outputs.
    assert!(r0.0.report.is_some() && r1.0.report.is_none());
    let csv = std::fs::read_to_string(dp_dir.join("metrics.csv")).expect("rank 0 wrote metrics");
    assert_eq!(csv.lines().count(), steps as usize + 1, "{csv}");
    assert!(dp_dir.join("checkpoints/last.safetensors").exists());

    // (b) One rank whose batch is the union of both shards (batch 2): the same run up to f32
    // summation order.
    let mut single = cfg.clone();
    single.name = "single".into();
    single.data.batch_size = 2;
    let mut t = Trainer::new(single.resolve().expect("plan"), Device::Cpu).expect("trainer");
    let s = t.run(&RunOptions::default()).expect("single run");
    assert_eq!(t.world(), World::SINGLE);
    assert_eq!(t.state().epoch, steps - 1, "one batch of both cases per epoch");
    for (i, (a, b)) in s.losses.iter().zip(&r0.0.losses).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {}: single {a} vs 2 ranks {b}", i + 1);
    }
    let (worst, name) = max_abs_diff(&weights(&t), &r0.1);
    eprintln!("1 rank (batch 2) vs 2 ranks: max weight difference {worst} ({name})");
    assert!(worst < 1e-5, "weights of 1 rank (batch 2) vs 2 ranks differ by {worst} in {name}");
}
