//! The allocator's settings of both daemons, and giving freed heap back to the system
//! after a large one-off allocation.
//!
//! glibc keeps what a thread freed in that thread's arena. Reading a 1M-entry index on
//! the poller's thread peaks near 1.1 GB, and that memory stayed resident beside the
//! fleet the main loop then built, for as long as the process ran: the coordinator's
//! peak RSS at 1M repos was 2.0 GiB, of which ~375 MB was free heap that
//! `malloc_trim` returned (docs/scale.md "Issue 9, sixth session").

/// Return every arena's free pages to the system (`malloc_trim(0)`). Costs a walk of the
/// free lists with each arena locked in turn: call it after an O(repos) step, off the
/// main loop. Nothing on other allocators.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only works on glibc's own free lists under their locks; it
        // takes no pointer and may be called from any thread at any time.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Allocations this big are served by their own mapping and unmapped when freed.
pub const MMAP_THRESHOLD: usize = 256 << 10;

/// The worker's malloc arenas. glibc gives each thread that contends for one an arena of
/// its own, up to 8 per core, and memory freed into one arena serves only that arena: a
/// worker holding 100k repos, whose state writer, runtime and fetch threads each allocate
/// per repo, peaked at 119 MiB with the default and 107 MiB with two arenas
/// (docs/scale.md "Issue 9, seventeenth session"). The worker's threads spend little of
/// their time in malloc, so the contention costs nothing measurable.
pub const WORKER_ARENAS: i32 = 2;

/// Call once at the daemon's start, before its threads: big buffers (a checkpoint's
/// encoding, an index read's parts, large frames) get their own mapping, returned to the
/// system when freed. glibc's default threshold starts at 128 KiB but rises to the size
/// of every such buffer freed (up to 32 MiB), after which they come from the heap and
/// their space stays resident; fixing it kept a 1M coordinator's peak RSS ~70 MB lower
/// (docs/scale.md "Issue 9, sixth session").
///
/// `arenas`: at most that many malloc arenas (`None`: glibc's default, 8 per core).
pub fn tune(arenas: Option<i32>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets glibc's allocation parameters; called before any
        // thread of ours starts.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            if let Some(n) = arenas {
                libc::mallopt(libc::M_ARENA_MAX, n);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}
