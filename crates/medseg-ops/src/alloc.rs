//! Allocator tuning for CPU runs.
//!
//! Every candle op allocates its output, and on these machines the first touch of fresh pages
//! runs at ≈ 1 GB/s. glibc returns large blocks (≥ 128 KiB by default) to the kernel with
//! `munmap` on free, so each op pays the page faults again. Raising the mmap and trim thresholds
//! keeps freed blocks in the heap for reuse. Only binaries should call this (it is process-wide).

/// Raises glibc's mmap/trim thresholds so large buffers are recycled instead of unmapped.
/// Returns whether the settings were applied (false on non-glibc targets).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; both values are in range for
        // 64-bit glibc (the thresholds are capped at HEAP_MAX internally).
        unsafe {
            let a = libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            let b = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            a == 1 && b == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
