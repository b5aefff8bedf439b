//! Keeping the agent's resident memory small: glibc's allocator keeps one arena
//! per thread and holds on to freed pages. The agent caps the arenas at start and
//! hands free pages back to the kernel after pods go away.

/// Caps glibc malloc arenas (the agent runs few threads). Call once, early.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Fixed thresholds (glibc otherwise raises the mmap threshold up to 32 MiB
        // after large frees, keeping big buffers in the heap for good): buffers of
        // 128 KiB and more are mapped and unmapped, and free space at the top of
        // the heap beyond 128 KiB goes back to the kernel at once.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// Returns free heap pages to the kernel (after a pod's worker has finished).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases unused memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
