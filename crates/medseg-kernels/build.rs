//! Compiles `kernels/*.cu` to PTX with nvcc when the `cuda` feature is on; does nothing otherwise.
//!
//! nvcc is `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on `PATH`; the target architecture is
//! `sm_$CUDA_COMPUTE_CAP` (default 80: PTX is forward-compatible, so the driver JIT-compiles it for
//! any newer GPU). The generated `$OUT_DIR/<name>.ptx` files are embedded by `src/ptx.rs`.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP", "MEDSEG_NVCC_FLAGS"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let kernels = manifest.join("../../kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let nvcc = nvcc();
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    let cap: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kernels.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu" || x == "cuh"))
        .collect();
    sources.sort();
    for src in &sources {
        println!("cargo::rerun-if-changed={}", src.display());
    }
    for src in sources.iter().filter(|p| p.extension().is_some_and(|x| x == "cu")) {
        compile(&nvcc, &cap, src, &kernels, &out);
    }
}

/// The nvcc binary to use.
fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return p.into();
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("nvcc")
}

/// `nvcc --ptx` of one source into `$OUT_DIR/<stem>.ptx`; panics with nvcc's output on failure.
fn compile(nvcc: &Path, cap: &str, src: &Path, include: &Path, out: &Path) {
    let stem = src.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
    let ptx = out.join(format!("{stem}.ptx"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("--ptx")
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .args(["-O3", "-std=c++17"])
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(&ptx)
        .arg(src);
    if let Ok(extra) = std::env::var("MEDSEG_NVCC_FLAGS") {
        cmd.args(extra.split_whitespace());
    }
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "medseg-kernels: cannot run {} ({e}); install the CUDA toolchain (docs/cuda.md, \
             `cargo xtask cuda-setup`) or build without the `cuda` feature",
            nvcc.display()
        )
    });
    if !output.status.success() {
        panic!(
            "medseg-kernels: nvcc failed on {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
