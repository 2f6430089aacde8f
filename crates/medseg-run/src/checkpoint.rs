//! Checkpoints as units that are wholly old or wholly new.
//!
//! `checkpoints/step-000123/` is one generation: `weights.safetensors`, `state.safetensors` and
//! `manifest.json` (step, byte size and CRC32 of both files). [`save`] writes a generation into a
//! `.medseg-tmp-*` folder, syncs every file, writes the manifest last, renames the folder to its
//! final name and syncs `checkpoints/`; only then does it point `last.safetensors` /
//! `last.state.safetensors` (hard links, a convenience for tools such as `--init-from`) at the
//! new files and remove the older generations. A crash, `kill -9`, a second Ctrl-C or a full
//! disk at any moment therefore leaves the previous generation complete, and [`latest`] finds
//! the newest generation whose manifest verifies. Saving a step that already has a generation
//! (the final save of a run) adds `step-000123-2` rather than replacing it.
//!
//! `best.safetensors` is one file written by [`write_atomic`], so it too is old or new.
//! [`inference_weights`] and [`resume_point`] still read the layout of older medseg versions
//! (`last.safetensors` + `last.state.safetensors` without generations).
//!
//! The tensor-file helpers ([`safetensors_bytes`], [`varmap_tensors`], [`load_weights`],
//! [`read_metadata`], [`read_step`], [`load_tensors`]) serve both trainers.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle::{Device, Tensor};
use candle_nn::VarMap;

use crate::files::{sync_dir, temp_path, write_atomic, write_new_file};
use crate::{Error, Result};

/// Weights inside a generation.
pub const WEIGHTS: &str = "weights.safetensors";
/// Optimiser state and run position inside a generation.
pub const STATE: &str = "state.safetensors";
/// The generation's manifest, written last.
pub const MANIFEST: &str = "manifest.json";
/// Hard link to the newest generation's weights (and the old layout's weights).
pub const LAST_WEIGHTS: &str = "last.safetensors";
/// Hard link to the newest generation's state (and the old layout's state).
pub const LAST_STATE: &str = "last.state.safetensors";
/// The best weights by the run's validation criterion.
pub const BEST: &str = "best.safetensors";
/// Name prefix of generation folders.
const GENERATION_PREFIX: &str = "step-";
/// `format` of the manifests this version writes.
const MANIFEST_FORMAT: &str = "medseg-checkpoint/1";

/// One complete (or, before [`verify`], claimed) generation folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Optimiser steps done when it was saved.
    pub step: u64,
    /// 1 for `step-NNNNNN`, k for `step-NNNNNN-k`.
    pub seq: u32,
    /// The folder.
    pub dir: PathBuf,
}

impl Generation {
    /// The weights file.
    pub fn weights(&self) -> PathBuf {
        self.dir.join(WEIGHTS)
    }

    /// The state file.
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }
}

/// A moment inside [`save`] at which a test can stop the process ([`Fault::Abort`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavePoint {
    /// Half of the weights file written.
    MidWeights,
    /// Weights written, state not yet.
    AfterWeights,
    /// Half of the state file written.
    MidState,
    /// Both files written, no manifest.
    AfterState,
    /// Manifest written, folder not yet renamed.
    AfterManifest,
    /// Generation renamed into place, `last.*` links still old.
    AfterRename,
    /// `last.safetensors` points at the new generation, `last.state.safetensors` not yet.
    AfterLastWeights,
    /// Links done, older generations not yet removed.
    BeforePrune,
}

impl SavePoint {
    /// Every point, in the order [`save`] passes them.
    pub const ALL: [SavePoint; 8] = [
        SavePoint::MidWeights,
        SavePoint::AfterWeights,
        SavePoint::MidState,
        SavePoint::AfterState,
        SavePoint::AfterManifest,
        SavePoint::AfterRename,
        SavePoint::AfterLastWeights,
        SavePoint::BeforePrune,
    ];

    /// The point's name (`after_weights`, …), as [`SavePoint::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            SavePoint::MidWeights => "mid_weights",
            SavePoint::AfterWeights => "after_weights",
            SavePoint::MidState => "mid_state",
            SavePoint::AfterState => "after_state",
            SavePoint::AfterManifest => "after_manifest",
            SavePoint::AfterRename => "after_rename",
            SavePoint::AfterLastWeights => "after_last_weights",
            SavePoint::BeforePrune => "before_prune",
        }
    }

    /// The point called `name`.
    pub fn parse(name: &str) -> Option<SavePoint> {
        SavePoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A fault injected into [`save`] by tests (never set in normal runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Abort the process (no destructors, no flushing) at `at` while saving step `step`.
    Abort {
        /// The step whose save is cut.
        step: u64,
        /// Where.
        at: SavePoint,
    },
    /// The disk accepts this many more bytes of checkpoint files, then reports it is full.
    DiskFullAfter(u64),
}

impl Fault {
    /// Parses `abort:<step>:<point>` or `disk_full:<bytes>` (the `train` binary's test hook).
    pub fn parse(s: &str) -> Option<Fault> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["abort", step, at] => {
                Some(Fault::Abort { step: step.parse().ok()?, at: SavePoint::parse(at)? })
            }
            ["disk_full", n] => Some(Fault::DiskFullAfter(n.parse().ok()?)),
            _ => None,
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    format: String,
    step: u64,
    files: Vec<ManifestFile>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ManifestFile {
    name: String,
    bytes: u64,
    crc32: u32,
}

/// Saves one generation of step `step` under `ckpt_dir` (created if needed) from the serialised
/// weights and state; see the module doc for the order of operations. Returns the generation.
pub fn save(
    ckpt_dir: &Path,
    step: u64,
    weights: &[u8],
    state: &[u8],
    fault: Option<Fault>,
) -> Result<Generation> {
    std::fs::create_dir_all(ckpt_dir).map_err(|e| Error::io(ckpt_dir, e))?;
    let tmp = temp_path(ckpt_dir, &format!("{GENERATION_PREFIX}{step:06}"));
    let res = write_generation(&tmp, step, weights, state, fault);
    if res.is_err() {
        // Best effort: a full disk should not keep the partial generation.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res?;
    let at = |p: SavePoint| stop_if(fault, step, p);
    let generation = next_generation(ckpt_dir, step)?;
    std::fs::rename(&tmp, &generation.dir).map_err(|e| Error::io(&generation.dir, e))?;
    sync_dir(ckpt_dir)?;
    at(SavePoint::AfterRename);
    link_last(&generation.weights(), &ckpt_dir.join(LAST_WEIGHTS))?;
    at(SavePoint::AfterLastWeights);
    link_last(&generation.state(), &ckpt_dir.join(LAST_STATE))?;
    sync_dir(ckpt_dir)?;
    at(SavePoint::BeforePrune);
    for old in generations(ckpt_dir)? {
        if old.dir != generation.dir {
            std::fs::remove_dir_all(&old.dir).map_err(|e| Error::io(&old.dir, e))?;
        }
    }
    Ok(generation)
}

fn stop_if(fault: Option<Fault>, step: u64, p: SavePoint) {
    if fault == Some(Fault::Abort { step, at: p }) {
        eprintln!("test fault: aborting the save of step {step} at {}", p.name());
        std::process::abort();
    }
}

fn write_generation(
    dir: &Path,
    step: u64,
    weights: &[u8],
    state: &[u8],
    fault: Option<Fault>,
) -> Result<()> {
    let at = |p: SavePoint| stop_if(fault, step, p);
    let mut budget = match fault {
        Some(Fault::DiskFullAfter(n)) => Some(n),
        _ => None,
    };
    std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for (name, bytes, mid, after) in [
        (WEIGHTS, weights, SavePoint::MidWeights, SavePoint::AfterWeights),
        (STATE, state, SavePoint::MidState, SavePoint::AfterState),
    ] {
        let path = dir.join(name);
        if fault == Some(Fault::Abort { step, at: mid }) {
            let _ = write_new_file(&path, &bytes[..bytes.len() / 2], &mut None);
            at(mid);
        }
        write_new_file(&path, bytes, &mut budget).map_err(|e| Error::io(&path, e))?;
        at(after);
        files.push(ManifestFile {
            name: name.into(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
    }
    let manifest = Manifest { format: MANIFEST_FORMAT.into(), step, files };
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::checkpoint(dir, format!("manifest: {e}")))?;
    let path = dir.join(MANIFEST);
    write_new_file(&path, &text, &mut budget).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    at(SavePoint::AfterManifest);
    Ok(())
}

/// The name for a new generation of `step`: `step-NNNNNN`, or `step-NNNNNN-k` after the
/// existing ones of that step.
fn next_generation(ckpt_dir: &Path, step: u64) -> Result<Generation> {
    let seq = generations(ckpt_dir)?.iter().filter(|g| g.step == step).map(|g| g.seq).max();
    let seq = seq.map_or(1, |s| s + 1);
    let name = match seq {
        1 => format!("{GENERATION_PREFIX}{step:06}"),
        k => format!("{GENERATION_PREFIX}{step:06}-{k}"),
    };
    Ok(Generation { step, seq, dir: ckpt_dir.join(name) })
}

/// Points `link` at `target` by a hard link renamed into place (a copy where the filesystem
/// has no hard links).
fn link_last(target: &Path, link: &Path) -> Result<()> {
    let dir = crate::files::parent_dir(link);
    let tmp = temp_path(dir, "last");
    if std::fs::hard_link(target, &tmp).is_err() {
        std::fs::copy(target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, link).map_err(|e| Error::io(link, e))
}

/// The generation folders under `ckpt_dir` by name (complete or not), oldest first.
pub fn generations(ckpt_dir: &Path) -> Result<Vec<Generation>> {
    let entries = match std::fs::read_dir(ckpt_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(ckpt_dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(ckpt_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(GENERATION_PREFIX) else { continue };
        let (step, seq) = match rest.split_once('-') {
            Some((s, k)) => (s.parse::<u64>().ok(), k.parse::<u32>().ok()),
            None => (rest.parse::<u64>().ok(), Some(1)),
        };
        if let (Some(step), Some(seq)) = (step, seq)
            && entry.path().is_dir()
        {
            out.push(Generation { step, seq, dir: entry.path() });
        }
    }
    out.sort_by_key(|g| (g.step, g.seq));
    Ok(out)
}

/// Checks a generation against its manifest: the manifest parses, names this step, and both
/// files have the recorded size and CRC32.
pub fn verify(generation: &Generation) -> Result<()> {
    let mpath = generation.dir.join(MANIFEST);
    let text = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?;
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| Error::checkpoint(&mpath, format!("unreadable manifest: {e}")))?;
    if m.format != MANIFEST_FORMAT || m.step != generation.step {
        return Err(Error::checkpoint(
            &mpath,
            format!("manifest says {} step {}, folder step {}", m.format, m.step, generation.step),
        ));
    }
    for name in [WEIGHTS, STATE] {
        let f =
            m.files.iter().find(|f| f.name == name).ok_or_else(|| {
                Error::checkpoint(&mpath, format!("manifest does not list {name}"))
            })?;
        let path = generation.dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let crc = crc32fast::hash(&bytes);
        if bytes.len() as u64 != f.bytes || crc != f.crc32 {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "{} bytes with CRC32 {crc:08x}, the manifest recorded {} bytes with {:08x}",
                    bytes.len(),
                    f.bytes,
                    f.crc32
                ),
            ));
        }
    }
    Ok(())
}

/// The newest generation under `ckpt_dir` that verifies; `None` when there is none.
pub fn latest(ckpt_dir: &Path) -> Result<Option<Generation>> {
    for generation in generations(ckpt_dir)?.into_iter().rev() {
        if verify(&generation).is_ok() {
            return Ok(Some(generation));
        }
    }
    Ok(None)
}

/// Where a run resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The weights file.
    pub weights: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// The generation, or `None` for the old two-file layout (whose steps the caller must
    /// compare).
    pub generation: Option<Generation>,
}

/// The newest complete checkpoint of the run in `run_dir`: the newest verified generation, else
/// the old layout's `last.safetensors` + `last.state.safetensors` when the run has no
/// generations at all. An error names the folder and what it holds.
pub fn resume_point(run_dir: &Path) -> Result<ResumePoint> {
    let ckpt = run_dir.join("checkpoints");
    if let Some(g) = latest(&ckpt)? {
        return Ok(ResumePoint { weights: g.weights(), state: g.state(), generation: Some(g) });
    }
    let gens = generations(&ckpt)?;
    if !gens.is_empty() {
        let why: Vec<String> = gens
            .iter()
            .map(|g| match verify(g) {
                Ok(()) => format!("{}: complete", g.dir.display()),
                Err(e) => e.to_string(),
            })
            .collect();
        return Err(Error::checkpoint(
            &ckpt,
            format!("no complete checkpoint generation: {}", why.join("; ")),
        ));
    }
    let (w, s) = (ckpt.join(LAST_WEIGHTS), ckpt.join(LAST_STATE));
    if w.is_file() && s.is_file() {
        return Ok(ResumePoint { weights: w, state: s, generation: None });
    }
    Err(Error::checkpoint(
        &ckpt,
        "no checkpoint to resume from (neither a complete step-* generation nor \
         last.safetensors + last.state.safetensors)",
    ))
}

/// The weights a model for inference should load from the run in `run_dir`:
/// `checkpoints/best.safetensors` if present, else the newest complete generation's weights,
/// else the old layout's `checkpoints/last.safetensors`.
pub fn inference_weights(run_dir: &Path) -> Result<PathBuf> {
    let ckpt = run_dir.join("checkpoints");
    let best = ckpt.join(BEST);
    if best.is_file() {
        return Ok(best);
    }
    if let Some(g) = latest(&ckpt)? {
        return Ok(g.weights());
    }
    let last = ckpt.join(LAST_WEIGHTS);
    if last.is_file() && generations(&ckpt)?.is_empty() {
        return Ok(last);
    }
    Err(Error::checkpoint(
        &ckpt,
        format!(
            "run folder {} has no checkpoints/best.safetensors, no complete step-* generation \
             and no checkpoints/last.safetensors",
            run_dir.display()
        ),
    ))
}

/// Writes the best weights (`checkpoints/best.safetensors`) atomically.
pub fn save_best(ckpt_dir: &Path, weights: &[u8]) -> Result<()> {
    write_atomic(&ckpt_dir.join(BEST), weights)
}

/// Serialises named tensors with string metadata to safetensors bytes (moved to the CPU).
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
        .map_err(|e| Error::checkpoint("<memory>", e.to_string()))
}

/// The variables of `varmap` as named tensors, sorted by name.
pub fn varmap_tensors(varmap: &VarMap) -> Result<Vec<(String, Tensor)>> {
    let data =
        varmap.data().lock().map_err(|_| Error::Invalid("variable map lock poisoned".into()))?;
    let mut v: Vec<(String, Tensor)> =
        data.iter().map(|(k, var)| (k.clone(), var.as_tensor().clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// Every tensor of a safetensors file, on `device`.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle::safetensors::load(path, device).map_err(|e| Error::checkpoint(path, e.to_string()))
}

/// Loads a safetensors file into the existing variables of `varmap`; every variable must be
/// present with its shape (extra tensors are ignored).
pub fn load_weights(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors = load_tensors(path, &Device::Cpu)?;
    let data =
        varmap.data().lock().map_err(|_| Error::Invalid("variable map lock poisoned".into()))?;
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::checkpoint(path, format!("weight {name:?} missing")))?;
        if t.dims() != var.dims() {
            return Err(Error::checkpoint(
                path,
                format!("weight {name:?} has shape {:?}, model has {:?}", t.dims(), var.dims()),
            ));
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The string metadata of a safetensors file (empty when it has none).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok(md.metadata().clone().unwrap_or_default())
}

/// The `medseg_step` metadata of a weights or state file.
pub fn read_step(path: &Path) -> Result<Option<u64>> {
    Ok(read_metadata(path)?.get("medseg_step").and_then(|s| s.parse().ok()))
}
