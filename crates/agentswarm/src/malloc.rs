//! How this process uses glibc's allocator.
//!
//! A 500-task soak of `serve` (`agentswarm bench --soak 500`, heaptrack over
//! the same run) found the live heap at 2–4 MB while the anonymous RSS was
//! 15–19 MB and grew by about 0.8 MB a project: the difference was malloc's,
//! not the daemon's data. glibc gives a thread that finds the main arena
//! locked an arena of its own (up to eight per core), tokio's worker and
//! blocking-pool threads each come to hold one, and memory freed into an
//! arena stays in the process. Two arenas (`MALLOC_ARENA_MAX=2` in that
//! soak) took 7–8 MB off; returning free pages when a project ends took
//! another 0.5 MB or so by the end of the soak (docs/benchmarks.md). A
//! `MALLOC_ARENA_MAX` given in the environment is left as it is.

/// Caps glibc's arenas at two. Call before any thread starts: a thread
/// that has an arena keeps it.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes the allocator's tunables; called
        // before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Gives the pages of freed memory in every arena back to the kernel
/// (`malloc_trim(0)`): after a project ends, most of what it allocated is
/// free, and without this it stays in the daemon's RSS.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes each arena's lock and releases free pages;
    // it may run alongside other threads' allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}
