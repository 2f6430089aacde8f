//! `cargo xtask cuda-setup`: installs a CUDA 13.0 build toolchain from PyPI wheels (nvcc, headers,
//! cuBLAS, cuRAND, NVRTC, cudart, and NCCL for the `nccl` feature) into a prefix, so the `cuda` and
//! `nccl` features build on a machine with no GPU and no system CUDA, and writes `<prefix>/env.sh`
//! to source before `cargo build --features cuda`.
//!
//! Facts behind it (docs/cuda.md): the cu12 nvcc wheel ships no nvcc binary, `nvidia-cuda-nvcc`
//! 13.0 does; every wheel is pinned to 13.0 so the PTX stays loadable by driver 580; the wheels ship
//! only versioned `.so` files and no `libcuda`, so the linker gets unversioned links and a
//! `libcuda.so` stub (every `cu*` entry point of cudarc as a dummy returning 999), for linking only:
//! on a GPU machine the real `libcuda.so.1` is used, and here `cuInit` fails, so CUDA tests skip.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, project_root, run_cmd};

/// The pinned wheels (CUDA 13.0).
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-nvrtc==13.0.88",
    // NCCL for medseg-train's `nccl` feature: cudarc 0.19's `nccl` binds NCCL 2.30.
    "nvidia-nccl-cu13==2.30.7",
];

/// Versioned libraries that get an unversioned link for the linker.
const LIBS: &[&str] =
    &["cudart.so.13", "cublas.so.13", "cublasLt.so.13", "curand.so.10", "nvrtc.so.13"];

#[derive(clap::Args)]
pub struct Args {
    /// Install prefix (default `$MEDSEG_CUDA_PREFIX`, else `~/.cache/medseg-cuda`).
    #[arg(long)]
    prefix: Option<PathBuf>,
    /// Compute capability to build PTX/kernels for (candle-kernels needs one; no GPU to ask here).
    #[arg(long, default_value = "90")]
    compute_cap: String,
}

/// The default toolchain prefix.
pub fn default_prefix() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MEDSEG_CUDA_PREFIX") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --prefix")?;
    Ok(PathBuf::from(home).join(".cache/medseg-cuda"))
}

/// The NCCL wheel's library folder (`venv/lib/python3.*/site-packages/nvidia/nccl/lib`), which
/// holds `libnccl.so.2` (≈ 250 MB).
pub fn nccl_lib(prefix: &Path) -> Result<PathBuf> {
    let home = cuda_home(prefix)?;
    let lib = home.parent().context("cu13 has a parent")?.join("nccl/lib");
    if !lib.join("libnccl.so.2").exists() {
        bail!("{} is missing: run `cargo xtask cuda-setup`", lib.join("libnccl.so.2").display());
    }
    Ok(lib)
}

/// `CUDA_HOME` inside an installed prefix (`venv/lib/python3.*/site-packages/nvidia/cu13`).
pub fn cuda_home(prefix: &Path) -> Result<PathBuf> {
    let lib = prefix.join("venv/lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for e in entries {
        let p = e?.path().join("site-packages/nvidia/cu13");
        if p.is_dir() {
            return Ok(p);
        }
    }
    bail!("no nvidia/cu13 under {}: run `cargo xtask cuda-setup`", lib.display())
}

/// The environment a `cuda` build needs: `(name, value)` pairs for `Command::envs`.
pub fn build_env(prefix: &Path, compute_cap: &str) -> Result<Vec<(String, String)>> {
    let home = cuda_home(prefix)?;
    let nvcc = home.join("bin/nvcc");
    if !nvcc.exists() {
        bail!("{} is missing: run `cargo xtask cuda-setup`", nvcc.display());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let lib = home.join("lib");
    let stubs = lib.join("stubs");
    // NCCL is optional here: only the `nccl` feature links it.
    let ours = match nccl_lib(prefix) {
        Ok(nccl) => format!("{}:{}:{}", lib.display(), nccl.display(), stubs.display()),
        Err(_) => format!("{}:{}", lib.display(), stubs.display()),
    };
    let library_path = match std::env::var("LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{ours}:{p}"),
        _ => ours,
    };
    Ok(vec![
        ("CUDA_HOME".into(), home.display().to_string()),
        ("NVCC".into(), nvcc.display().to_string()),
        ("PATH".into(), format!("{}:{path}", home.join("bin").display())),
        ("CUDA_COMPUTE_CAP".into(), compute_cap.to_string()),
        ("CUDAFORGE_THREADS".into(), "2".into()),
        ("LIBRARY_PATH".into(), library_path),
        ("CARGO_TARGET_DIR".into(), project_root().join("target/cuda").display().to_string()),
    ])
}

pub fn run(args: Args) -> Result<()> {
    let prefix = match args.prefix {
        Some(p) => p,
        None => default_prefix()?,
    };
    let python = prefix.join("venv/bin/python");
    if !python.exists() {
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(prefix.join("venv")))?;
    }
    let have_nvcc = cuda_home(&prefix).map(|h| h.join("bin/nvcc").exists()).unwrap_or(false);
    if have_nvcc && nccl_lib(&prefix).is_ok() {
        eprintln!("cuda-setup: nvcc and NCCL already installed under {}", prefix.display());
    } else {
        run_cmd(Command::new(prefix.join("venv/bin/pip")).args(["install", "-q"]).args(WHEELS))?;
    }
    let home = cuda_home(&prefix)?;
    let lib = home.join("lib");
    for l in LIBS {
        let unversioned = format!("lib{}.so", l.split(".so").next().unwrap_or(l));
        let link = lib.join(&unversioned);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("lib{l}"), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    make_libcuda_stub(&lib.join("stubs"))?;
    // `-lnccl` needs the unversioned name; the wheel ships only libnccl.so.2.
    let nccl = nccl_lib(&prefix)?;
    let link = nccl.join("libnccl.so");
    if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("libnccl.so.2", &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let env = build_env(&prefix, &args.compute_cap)?;
    let mut script =
        String::from("# Generated by `cargo xtask cuda-setup`: source before a `cuda` build.\n");
    for (k, v) in &env {
        // PATH and LIBRARY_PATH extend the caller's values when the file is sourced.
        let v = match k.as_str() {
            "PATH" => format!("{}:$PATH", home.join("bin").display()),
            "LIBRARY_PATH" => format!(
                "{}:{}:{}${{LIBRARY_PATH:+:$LIBRARY_PATH}}",
                lib.display(),
                nccl.display(),
                lib.join("stubs").display()
            ),
            _ => v.clone(),
        };
        script.push_str(&format!("export {k}=\"{v}\"\n"));
    }
    script.push_str(&format!(
        "# To run `cuda` test binaries on this GPU-less machine (CUDA tests then skip):\n\
         export LD_LIBRARY_PATH=\"{}:{}:{}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\"\n",
        lib.display(),
        nccl.display(),
        lib.join("stubs").display()
    ));
    let env_file = prefix.join("env.sh");
    std::fs::write(&env_file, script).with_context(|| format!("writing {}", env_file.display()))?;
    let out = Command::new(home.join("bin/nvcc")).arg("--version").output()?;
    let version = String::from_utf8_lossy(&out.stdout);
    eprintln!("cuda-setup: {}", version.lines().last().unwrap_or("nvcc installed"));
    eprintln!("cuda-setup: now `source {}` and build with `--features cuda`", env_file.display());
    Ok(())
}

/// Writes `stubs/libcuda.so` (soname `libcuda.so.1`): every `cu*` driver entry point of cudarc
/// as a dummy returning 999 (`CUDA_ERROR_UNKNOWN`), so `-lcuda` links without a driver.
fn make_libcuda_stub(stubs: &Path) -> Result<()> {
    let so = stubs.join("libcuda.so");
    if so.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(stubs)?;
    run_cmd(cargo().arg("fetch"))?;
    let sys = find_cudarc_sys().context("cudarc source not found in the cargo registry")?;
    let text = std::fs::read_to_string(&sys)?;
    let mut names: Vec<&str> = text
        .split("pub unsafe fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .filter(|n| n.starts_with("cu") && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    names.sort_unstable();
    names.dedup();
    let c: String = names.iter().map(|n| format!("int {n}(void){{return 999;}}\n")).collect();
    let src = stubs.join("libcuda_stub.c");
    std::fs::write(&src, c)?;
    run_cmd(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
            .arg(&so)
            .arg(&src),
    )?;
    let link = stubs.join("libcuda.so.1");
    if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("libcuda.so", &link)?;
    }
    Ok(())
}

/// `src/driver/sys/mod.rs` of cudarc 0.19 in the cargo registry.
fn find_cudarc_sys() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let src = cargo_home.join("registry/src");
    for index in std::fs::read_dir(src).ok()?.flatten() {
        for krate in std::fs::read_dir(index.path()).ok()?.flatten() {
            let name = krate.file_name();
            if name.to_string_lossy().starts_with("cudarc-0.19.") {
                let p = krate.path().join("src/driver/sys/mod.rs");
                if p.exists() {
                    return Some(p);
                }
            }
        }
    }
    None
}
