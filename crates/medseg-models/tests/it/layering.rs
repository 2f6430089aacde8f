//! The crate's modules import each other one way only: every `crate::<module>` path in a source
//! file (imports, inline paths and doc links alike) must name a module of a lower layer than the
//! file's own. Files in a module folder (`soft_moe/`) belong to that module. A new module must be
//! given a layer here, which is the moment to decide where it sits.
use std::path::{Path, PathBuf};

/// Layer of each top-level module: config → layers → {unetr_blocks, checkpoint, soft_moe} →
/// swin_transformer → {swin_unetr, ssl_head} → {param_count, loader}. `lib.rs` only declares
/// and re-exports, and is not checked.
const LAYERS: &[(&str, u32)] = &[
    ("config", 0),
    ("layers", 1),
    ("unetr_blocks", 2),
    ("checkpoint", 2),
    ("soft_moe", 2),
    ("swin_transformer", 3),
    ("swin_unetr", 4),
    ("ssl_head", 4),
    ("param_count", 5),
    ("loader", 5),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The first path segment after each `crate::` in `src` (`crate::{a::X, b}` gives `a`, `b`).
fn crate_paths(src: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    let mut out = Vec::new();
    for (i, _) in src.match_indices("crate::") {
        // `medseg_models::…` or an identifier ending in "crate" is not a `crate::` path.
        if src[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &src[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => return true,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    false
                })
                .map_or(group.len(), |(j, _)| j);
            let mut depth = 0usize;
            let mut start = 0;
            let inner = &group[..end];
            for (j, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&inner[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            out.push(ident(&inner[start..]));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn crate_paths_are_parsed() {
    let src = "use crate::config::{A, B};\nuse crate::{layers::Mlp, soft_moe::{Ffn, X}};\n\
               let x = crate::checkpoint::f(); // medseg_models::crate_x\n";
    assert_eq!(crate_paths(src), ["config", "layers", "soft_moe", "checkpoint"]);
}

#[test]
fn modules_import_one_way() -> std::io::Result<()> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    files.sort();
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        if rel == Path::new("lib.rs") {
            continue;
        }
        let first = rel.components().next().expect("non-empty path");
        let module = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let Some(own) = layer(&module) else {
            violations.push(format!("{}: module `{module}` has no layer in LAYERS", rel.display()));
            continue;
        };
        let text = std::fs::read_to_string(file)?;
        for target in crate_paths(&text) {
            if target == module {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                Some(l) => violations.push(format!(
                    "{}: `{module}` (layer {own}) uses `crate::{target}` (layer {l})",
                    rel.display()
                )),
                None => violations.push(format!(
                    "{}: `crate::{target}` is not a module with a layer",
                    rel.display()
                )),
            }
        }
        checked += 1;
    }
    assert!(violations.is_empty(), "imports against the layer order:\n{}", violations.join("\n"));
    assert!(checked >= LAYERS.len(), "only {checked} source files checked");
    Ok(())
}
