//! Tidy checks run by `cargo test` (so the test suite is the lint gate): every Rust file opens
//! with a `//!` doc, no `dbg!`, no `#[should_panic]` / `#[ignore]`, no trailing whitespace,
//! golden files under 1 MiB.
use std::path::{Path, PathBuf};

use crate::project_root;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn all_files() -> Vec<PathBuf> {
    let root = project_root();
    let mut out = Vec::new();
    for d in ["crates", "xtask", "tools", "kernels", "tests"] {
        files(&root.join(d), &mut out);
    }
    out
}

#[test]
fn tidy() {
    let mut problems = Vec::new();
    // Split so this file does not flag itself.
    let banned = [concat!("dbg", "!("), concat!("#[should", "_panic"), concat!("#[ig", "nore")];
    for path in all_files() {
        let rel = path.strip_prefix(project_root()).unwrap_or(&path).display().to_string();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.trim_start().starts_with("//!") {
                problems.push(format!("{rel}: must open with a `//!` doc comment"));
            }
            for (i, line) in text.lines().enumerate() {
                let code = !line.trim_start().starts_with("//");
                if code && banned.iter().any(|b| line.contains(b)) {
                    problems.push(format!("{rel}:{}: banned construct: {}", i + 1, line.trim()));
                }
                if line.ends_with(' ') || line.ends_with('\t') {
                    problems.push(format!("{rel}:{}: trailing whitespace", i + 1));
                }
            }
        }
        if path.components().any(|c| c.as_os_str() == "golden")
            && std::fs::metadata(&path).is_ok_and(|m| m.len() > 1 << 20)
        {
            problems.push(format!("{rel}: golden file over 1 MiB"));
        }
    }
    assert!(problems.is_empty(), "tidy found problems:\n{}", problems.join("\n"));
}
