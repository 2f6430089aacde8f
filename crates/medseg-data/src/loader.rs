//! A multi-threaded, deterministic, bounded-memory loader.
//!
//! Per epoch the dataset order is a permutation drawn from `(seed, epoch)`; item `i` is transformed
//! with an RNG seeded from `(seed, epoch, i)` ([`sample_rng`]), so batches are bit-identical whatever
//! the number of workers. Worker threads claim batch indices in order, never more than `prefetch`
//! batches ahead of the consumer, and the iterator yields batches in order.
//!
//! The deterministic prefix of the pipeline (load → Orientation → Spacing → intensity → crop
//! foreground, i.e. everything before the first random transform) can be cached in memory or on
//! disk, like MONAI's `CacheDataset` / `PersistentDataset`.
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::affine::Affine;
use crate::collate::{Batch, collate_cpu};
use crate::dataset::Dataset;
use crate::phantom::mix_seed;
use crate::transforms::{Compose, Meta, Sample};
use crate::volume::Volume;
use crate::{Error, Result};

/// The RNG of item `index` in `epoch`: ChaCha8 seeded from a splitmix of the three numbers.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix_seed(mix_seed(seed, epoch), index))
}

/// Where the deterministic prefix of the pipeline is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheMode {
    /// Recompute every time.
    None,
    /// Keep every preprocessed item in memory (MONAI `CacheDataset`, cache_rate 1).
    Memory,
    /// Store preprocessed items as raw files in this directory (MONAI `PersistentDataset`).
    Disk(PathBuf),
}

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Dataset items per batch; a batch holds all samples those items produce
    /// (e.g. 1 volume × 4 crops = 4 patches, MONAI's `list_data_collate`).
    pub batch_size: usize,
    /// Worker threads (0 = load on the calling thread).
    pub num_workers: usize,
    /// Batches that may be in flight or waiting ahead of the consumer (≥ 1).
    pub prefetch: usize,
    /// Shuffle the item order each epoch.
    pub shuffle: bool,
    /// Drop a last incomplete batch.
    pub drop_last: bool,
    /// Seed of the permutation and of every sample RNG.
    pub seed: u64,
    /// Cache of the deterministic pipeline prefix.
    pub cache: CacheMode,
}

impl LoaderConfig {
    /// Training defaults: shuffle, 2 workers, prefetch 4, memory cache.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            num_workers: 2,
            prefetch: 4,
            shuffle: true,
            drop_last: false,
            seed,
            cache: CacheMode::Memory,
        }
    }
    /// Validation defaults: batch 1, in order, memory cache.
    pub fn val() -> Self {
        LoaderConfig { batch_size: 1, shuffle: false, ..LoaderConfig::train(1, 0) }
    }
}

type SampleDataset = dyn Dataset<Item = Sample>;

/// Maps an epoch's item order to the items a loader yields, in the order it yields them (for
/// example one data-parallel rank's shard of it). It must return the same number of items for
/// every permutation of `0..len`, so that every epoch has the same number of batches.
pub type OrderMap = Arc<dyn Fn(&[usize]) -> Vec<usize> + Send + Sync>;

struct Inner {
    dataset: Arc<SampleDataset>,
    pre: Compose,
    aug: Compose,
    cfg: LoaderConfig,
    mem: Vec<OnceLock<Arc<Sample>>>,
    fingerprint: u64,
}

/// The loader. Cheap to share; each [`Loader::epoch`] spawns its own workers.
#[derive(Clone)]
pub struct Loader {
    inner: Arc<Inner>,
    /// Applied to every epoch's order ([`Loader::with_order_map`]); `None` yields every item.
    order_map: Option<OrderMap>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("len", &self.inner.dataset.len())
            .field("cfg", &self.inner.cfg)
            .field("order_map", &self.order_map.is_some())
            .finish()
    }
}

impl Loader {
    /// A loader applying `transforms` to `dataset` items.
    pub fn new(
        dataset: Arc<SampleDataset>,
        transforms: Compose,
        cfg: LoaderConfig,
    ) -> Result<Loader> {
        if cfg.batch_size == 0 {
            return Err(Error::InvalidArgument("loader batch_size must be ≥ 1".into()));
        }
        let fingerprint = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("{:?}", transforms.0.iter().take_while(|t| !t.is_random()).collect::<Vec<_>>())
                .hash(&mut h);
            h.finish()
        };
        let (pre, aug) = transforms.split_deterministic();
        if let CacheMode::Disk(d) = &cfg.cache {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let mem = (0..dataset.len()).map(|_| OnceLock::new()).collect();
        Ok(Loader {
            inner: Arc::new(Inner { dataset, pre, aug, cfg, mem, fingerprint }),
            order_map: None,
        })
    }

    /// The same loader (sharing its cache) yielding `map(order)` of each epoch's item order
    /// instead of the whole order: data-parallel training gives each rank its shard this way.
    /// Items keep their `(seed, epoch, index)` randomness, so a shard's samples equal the
    /// unsharded loader's samples of the same items.
    pub fn with_order_map(&self, map: OrderMap) -> Loader {
        Loader { inner: Arc::clone(&self.inner), order_map: Some(map) }
    }

    /// Items per epoch (after the order map, if any).
    pub fn items_per_epoch(&self) -> usize {
        let n = self.inner.dataset.len();
        match &self.order_map {
            None => n,
            Some(map) => map(&(0..n).collect::<Vec<_>>()).len(),
        }
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        self.batches_of(self.items_per_epoch())
    }

    /// Batches that `n` items make.
    fn batches_of(&self, n: usize) -> usize {
        let b = self.inner.cfg.batch_size;
        if self.inner.cfg.drop_last { n / b } else { n.div_ceil(b) }
    }

    /// True when an epoch yields no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item order of `epoch` (after the order map, if any).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.inner.dataset.len()).collect();
        if self.inner.cfg.shuffle {
            let mut rng = sample_rng(self.inner.cfg.seed, epoch, u64::MAX);
            idx.shuffle(&mut rng);
        }
        match &self.order_map {
            None => idx,
            Some(map) => map(&idx),
        }
    }

    /// All samples item `index` yields in `epoch` (deterministic).
    pub fn samples(&self, epoch: u64, index: usize) -> Result<Vec<Sample>> {
        self.inner.samples(epoch, index)
    }

    /// Iterates the batches of `epoch` (worker threads stop when the iterator is dropped).
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The next batch of an endless stream over epochs that can stop and resume anywhere: the
    /// stream is at batch `*batch_in_epoch` of `*epoch` (both advance, rolling over to the next
    /// epoch), `iter` is its open epoch (`None` after a resume: it reopens at that batch without
    /// computing the ones before it). Fails on a loader without batches.
    pub fn next_resumable(
        &self,
        iter: &mut Option<EpochIter>,
        epoch: &mut u64,
        batch_in_epoch: &mut usize,
    ) -> Result<Batch> {
        if self.is_empty() {
            return Err(Error::InvalidArgument("the loader has no batches".into()));
        }
        loop {
            let it = iter.get_or_insert_with(|| self.epoch_from(*epoch, *batch_in_epoch));
            match it.next() {
                Some(b) => {
                    *batch_in_epoch += 1;
                    return b;
                }
                None => {
                    *iter = None;
                    *epoch += 1;
                    *batch_in_epoch = 0;
                }
            }
        }
    }

    /// [`Loader::epoch`] starting at batch `start` (batches depend only on seed, epoch and
    /// index, so the skipped ones need not be computed).
    fn epoch_from(&self, epoch: u64, start: usize) -> EpochIter {
        let order = Arc::new(self.order(epoch));
        let bs = self.inner.cfg.batch_size;
        // From the order itself: an order map that breaks its length contract cannot make a
        // batch index run past the order.
        let n_batches = self.batches_of(order.len());
        let workers = self.inner.cfg.num_workers;
        let window = self.inner.cfg.prefetch.max(1);
        let start = start.min(n_batches);
        let state = Arc::new((Mutex::new(Claim { next: start, delivered: start }), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        for _ in 0..workers {
            let inner = Arc::clone(&self.inner);
            let order = Arc::clone(&order);
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            let tx = tx.clone();
            handles.push(std::thread::spawn(move || {
                loop {
                    let b = {
                        let (lock, cv) = &*state;
                        let Ok(mut g) = lock.lock() else { return };
                        while !stop.load(Ordering::Relaxed)
                            && g.next < n_batches
                            && g.next >= g.delivered + window
                        {
                            g = match cv.wait(g) {
                                Ok(g) => g,
                                Err(_) => return,
                            };
                        }
                        if stop.load(Ordering::Relaxed) || g.next >= n_batches {
                            return;
                        }
                        g.next += 1;
                        g.next - 1
                    };
                    let res = inner.batch(epoch, &order, b, bs);
                    if tx.send((b, res)).is_err() {
                        return;
                    }
                }
            }));
        }
        drop(tx);
        EpochIter {
            inner: Arc::clone(&self.inner),
            order,
            epoch,
            n_batches,
            yielded: start,
            buffer: BTreeMap::new(),
            rx,
            state,
            stop,
            handles,
        }
    }
}

struct Claim {
    next: usize,
    delivered: usize,
}

impl Inner {
    fn preprocessed(&self, index: usize) -> Result<Arc<Sample>> {
        let compute = || -> Result<Sample> {
            let s = self.dataset.get(index)?;
            // The deterministic prefix draws no random numbers; any RNG will do.
            let mut rng = sample_rng(0, 0, 0);
            let mut v = self.pre.apply(s, &mut rng)?;
            if v.len() != 1 {
                return Err(Error::InvalidArgument(
                    "deterministic transforms must keep one sample".into(),
                ));
            }
            Ok(v.swap_remove(0))
        };
        match &self.cfg.cache {
            CacheMode::None => Ok(Arc::new(compute()?)),
            CacheMode::Memory => {
                if let Some(s) = self.mem[index].get() {
                    return Ok(Arc::clone(s));
                }
                let s = Arc::new(compute()?);
                Ok(Arc::clone(self.mem[index].get_or_init(|| s)))
            }
            CacheMode::Disk(dir) => {
                let path = dir.join(format!("{index:06}-{:016x}.msd", self.fingerprint));
                if let Ok(s) = read_cached(&path) {
                    return Ok(Arc::new(s));
                }
                let s = compute()?;
                write_cached(&path, &s)?;
                Ok(Arc::new(s))
            }
        }
    }

    fn samples(&self, epoch: u64, index: usize) -> Result<Vec<Sample>> {
        let s = (*self.preprocessed(index)?).clone();
        let mut rng = sample_rng(self.cfg.seed, epoch, index as u64);
        self.aug.apply(s, &mut rng)
    }

    fn batch(&self, epoch: u64, order: &[usize], b: usize, bs: usize) -> Result<Batch> {
        let items = &order[b * bs..((b + 1) * bs).min(order.len())];
        let mut samples = Vec::new();
        for &i in items {
            samples.extend(self.samples(epoch, i)?);
        }
        collate_cpu(&samples)
    }
}

/// Batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter {
    inner: Arc<Inner>,
    order: Arc<Vec<usize>>,
    epoch: u64,
    n_batches: usize,
    yielded: usize,
    buffer: BTreeMap<usize, Result<Batch>>,
    rx: mpsc::Receiver<(usize, Result<Batch>)>,
    state: Arc<(Mutex<Claim>, Condvar)>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.yielded >= self.n_batches {
            return None;
        }
        let b = self.yielded;
        let res = if self.handles.is_empty() {
            self.inner.batch(self.epoch, &self.order, b, self.inner.cfg.batch_size)
        } else {
            loop {
                if let Some(r) = self.buffer.remove(&b) {
                    break r;
                }
                match self.rx.recv() {
                    Ok((i, r)) => {
                        self.buffer.insert(i, r);
                    }
                    Err(_) => {
                        break Err(Error::InvalidArgument("loader worker thread died".into()));
                    }
                }
            }
        };
        self.yielded += 1;
        let (lock, cv) = &*self.state;
        if let Ok(mut g) = lock.lock() {
            g.delivered = self.yielded;
        }
        cv.notify_all();
        Some(res)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.n_batches - self.yielded;
        (n, Some(n))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.1.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

const CACHE_MAGIC: &[u8; 8] = b"MSDCACH1";

/// Raw cache format: magic, shape (3 × u64), affine (16 × f64), has_label u8, f32 image, u8 label.
fn write_cached(path: &std::path::Path, s: &Sample) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + 24 + 128 + 1 + s.image.len() * 5);
    buf.extend_from_slice(CACHE_MAGIC);
    for d in s.image.shape() {
        buf.extend_from_slice(&(d as u64).to_le_bytes());
    }
    for v in s.image.affine.0.iter().flatten() {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.push(u8::from(s.label.is_some()));
    for v in s.image.data() {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(l) = &s.label {
        buf.extend_from_slice(l.data());
    }
    let meta = serde_json::json!({
        "id": s.meta.id,
        "image_path": s.meta.image_path,
        "label_path": s.meta.label_path,
        "original_affine": s.meta.original_affine.0,
        "original_shape": s.meta.original_shape,
    });
    buf.extend_from_slice(meta.to_string().as_bytes());
    crate::nifti_io::atomic_write(path, |w| std::io::Write::write_all(w, &buf))
}

fn read_cached(path: &std::path::Path) -> Result<Sample> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = || Error::dataset(path, "corrupt cache file");
    if b.len() < 8 + 24 + 128 + 1 || &b[..8] != CACHE_MAGIC {
        return Err(bad());
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let shape = [u64_at(8) as usize, u64_at(16) as usize, u64_at(24) as usize];
    let mut aff = [[0.0; 4]; 4];
    for (n, v) in aff.iter_mut().flatten().enumerate() {
        *v = f64::from_bits(u64_at(32 + 8 * n));
    }
    let has_label = b[160] == 1;
    let mut o = 161;
    // Sizes from the file are checked against its length before anything is allocated.
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(bad)?;
    let img_end = n.checked_mul(4).and_then(|v| v.checked_add(o)).ok_or_else(bad)?;
    let lbl_end = img_end.checked_add(if has_label { n } else { 0 }).ok_or_else(bad)?;
    if b.len() < lbl_end {
        return Err(bad());
    }
    let img: Vec<f32> = b[o..img_end]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    o = img_end;
    let affine = Affine(aff);
    let image = Volume::new(img, shape, affine).ok_or_else(bad)?;
    let label = if has_label {
        Some(Volume::new(b[o..lbl_end].to_vec(), shape, affine).ok_or_else(bad)?)
    } else {
        None
    };
    let m: serde_json::Value = serde_json::from_slice(&b[lbl_end..])
        .map_err(|e| Error::Json { path: path.into(), source: e })?;
    let mut oa = [[0.0; 4]; 4];
    if let Some(rows) = m["original_affine"].as_array() {
        for (r, row) in rows.iter().enumerate().take(4) {
            for (c, v) in row.as_array().into_iter().flatten().enumerate().take(4) {
                oa[r][c] = v.as_f64().unwrap_or(0.0);
            }
        }
    }
    let os: Vec<usize> = m["original_shape"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_u64().unwrap_or(0) as usize)
        .collect();
    let meta = Meta {
        id: m["id"].as_str().unwrap_or_default().to_string(),
        image_path: m["image_path"].as_str().map(PathBuf::from),
        label_path: m["label_path"].as_str().map(PathBuf::from),
        original_affine: Affine(oa),
        original_shape: [
            os.first().copied().unwrap_or(0),
            os.get(1).copied().unwrap_or(0),
            os.get(2).copied().unwrap_or(0),
        ],
        patch_index: 0,
        warnings: Vec::new(),
    };
    Ok(Sample { image, label, meta })
}
