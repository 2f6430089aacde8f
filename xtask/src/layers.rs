//! Architecture tidy tests: ARCHITECTURE.md's layering rules, checked by `cargo test` the way
//! rust-analyzer's tidy tests check its own (they read the Cargo manifests and the sources; no
//! crate is built or run).
//!
//! - every crate has a place in [`LAYERS`] and depends (normal dependencies) only on crates of a
//!   lower layer: no edge runs back up;
//! - medseg-metrics is a leaf (no workspace crate, no candle), xtask links no workspace crate, and
//!   medseg-testkit is a dev-dependency only;
//! - medseg-data names candle only at the batch boundary (`collate.rs`, the error conversion);
//! - medseg-models does file I/O only in `loader.rs`;
//! - medseg-cli holds one module per subcommand and no algorithm module;
//! - libraries read no environment variables (only binaries and the listed command-line modules);
//! - every crate has a README.md and a section in ARCHITECTURE.md.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::project_root;

/// The layer of every workspace crate: a crate may depend only on crates of a strictly lower
/// layer. A new crate must be placed here (and in ARCHITECTURE.md's codemap) before it builds
/// into the test suite.
const LAYERS: &[(&str, u32)] = &[
    ("medseg-kernels", 0),
    ("medseg-metrics", 0),
    ("medseg-ops", 1),
    ("medseg-data", 1),
    ("medseg-testkit", 2),
    ("medseg-models", 2),
    ("medseg-run", 2),
    ("medseg-dicom", 2),
    ("medseg-infer", 3),
    ("medseg-train", 4),
    ("medseg-pretrain", 5),
    ("medseg-cli", 6),
];

/// Library files that may read environment variables, with the reason.
const ENV_READERS: &[(&str, &str)] = &[
    (
        "crates/medseg-train/src/cli.rs",
        "the command line shared by the `train` binary and `medseg train` reads the rank variables \
         and the fault-test hook MEDSEG_TEST_CHECKPOINT_FAULT",
    ),
    (
        "crates/medseg-data/src/limits.rs",
        "the reader's size limits (MEDSEG_MAX_VOXELS/BYTES) are a safety valve every binary honours; \
         they change which files are refused, never a result",
    ),
];

/// The `[dependencies]` (not dev-, not build-) of a manifest that are workspace crates, and
/// whether candle is among them.
fn manifest(path: &Path) -> (Vec<String>, bool) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut deps: Vec<String> = Vec::new();
    let mut tables = Vec::new();
    if let Some(t) = doc.get("dependencies").and_then(|d| d.as_table()) {
        tables.push(t.clone());
    }
    // `[target.'cfg(..)'.dependencies]` count as dependencies too.
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for t in targets.values() {
            if let Some(d) = t.get("dependencies").and_then(|d| d.as_table()) {
                tables.push(d.clone());
            }
        }
    }
    let mut candle = false;
    for t in tables {
        for key in t.keys() {
            if key.starts_with("medseg-") || key == "xtask" {
                deps.push(key.clone());
            }
            if key == "candle" || key == "candle-core" || key == "candle-nn" {
                candle = true;
            }
        }
    }
    deps.sort();
    (deps, candle)
}

fn crates() -> Vec<(String, PathBuf)> {
    let root = project_root().join("crates");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
        .expect("crates/")
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Source lines that are code (comments dropped), with their 1-based numbers.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(project_root()).unwrap_or(p).display().to_string()
}

#[test]
fn no_crate_depends_upward() {
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut problems = Vec::new();
    for (name, dir) in crates() {
        let Some(&mine) = layer.get(name.as_str()) else {
            problems.push(format!("crates/{name}: not placed in xtask/src/layers.rs LAYERS"));
            continue;
        };
        let (deps, _) = manifest(&dir.join("Cargo.toml"));
        for d in deps {
            if d == "medseg-testkit" {
                problems.push(format!("{name} depends on medseg-testkit outside dev-dependencies"));
                continue;
            }
            match layer.get(d.as_str()) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => problems.push(format!(
                    "{name} (layer {mine}) depends on {d} (layer {theirs}): edges must run down"
                )),
                None => problems.push(format!("{name} depends on unplaced crate {d}")),
            }
        }
    }
    let (xdeps, xcandle) = manifest(&project_root().join("xtask/Cargo.toml"));
    if !xdeps.is_empty() || xcandle {
        problems.push(format!("xtask must link no workspace or ML crate, has {xdeps:?}"));
    }
    assert!(problems.is_empty(), "layering:\n{}", problems.join("\n"));
}

#[test]
fn metrics_is_a_leaf() {
    let (deps, candle) = manifest(&project_root().join("crates/medseg-metrics/Cargo.toml"));
    assert!(deps.is_empty(), "medseg-metrics must have no workspace dependencies, has {deps:?}");
    assert!(!candle, "medseg-metrics must not depend on candle");
}

#[test]
fn data_touches_candle_only_at_the_batch_boundary() {
    let src = project_root().join("crates/medseg-data/src");
    let allowed = ["collate.rs", "error.rs"];
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if allowed.contains(&name) {
            continue;
        }
        for (n, line) in code_lines(&f) {
            if line.contains("candle::") || line.contains("use candle") {
                problems.push(format!("{}:{n}: {}", rel(&f), line.trim()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "medseg-data names candle outside collate.rs/error.rs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn models_do_file_io_only_in_the_loader() {
    let src = project_root().join("crates/medseg-models/src");
    let io = ["std::fs", "fs::", "File::", "OpenOptions", "read_to_string("];
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for f in files {
        if f.file_name().is_some_and(|n| n == "loader.rs") {
            continue;
        }
        for (n, line) in code_lines(&f) {
            if io.iter().any(|p| line.contains(p)) {
                problems.push(format!("{}:{n}: {}", rel(&f), line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "file I/O outside loader.rs:\n{}", problems.join("\n"));
}

/// medseg-cli's modules are its subcommands: each `mod x;` of main.rs is dispatched from the
/// `Command` enum, and each stays small (argument parsing + one library call).
#[test]
fn cli_has_no_algorithm_module() {
    const MAX_LINES: usize = 300;
    let src = project_root().join("crates/medseg-cli/src");
    let main = std::fs::read_to_string(src.join("main.rs")).expect("medseg-cli main.rs");
    let mut problems = Vec::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in &files {
        let lines = std::fs::read_to_string(f).unwrap_or_default().lines().count();
        if lines > MAX_LINES {
            problems.push(format!(
                "{}: {lines} lines (> {MAX_LINES}): move the algorithm to a library",
                rel(f)
            ));
        }
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if stem == "main" {
            continue;
        }
        // A subcommand module is called from main's dispatch as `stem::run(`.
        if !main.contains(&format!("{stem}::run(")) {
            problems
                .push(format!("{}: not a subcommand (main.rs never calls `{stem}::run(`)", rel(f)));
        }
    }
    assert!(problems.is_empty(), "medseg-cli:\n{}", problems.join("\n"));
}

#[test]
fn libraries_read_no_environment() {
    let mut problems = Vec::new();
    for (name, dir) in crates() {
        if name == "medseg-testkit" {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for f in files {
            let r = rel(&f);
            let binary = r.contains("/src/bin/") || r.ends_with("/src/main.rs");
            if binary || ENV_READERS.iter().any(|(p, _)| *p == r) {
                continue;
            }
            for (n, line) in code_lines(&f) {
                if line.contains("env::var") || line.contains("env!(\"MEDSEG") {
                    problems.push(format!("{r}:{n}: {}", line.trim()));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "only binaries read environment variables (or list the file in ENV_READERS with a reason):\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_crate_has_a_readme_and_an_architecture_section() {
    let arch =
        std::fs::read_to_string(project_root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut problems = Vec::new();
    for (name, dir) in crates() {
        if !dir.join("README.md").exists() {
            problems.push(format!("crates/{name}: no README.md"));
        }
        if !arch.contains(&format!("### `crates/{name}`")) {
            problems.push(format!("ARCHITECTURE.md: no section \"### `crates/{name}`\""));
        }
    }
    assert!(problems.is_empty(), "documentation:\n{}", problems.join("\n"));
}
