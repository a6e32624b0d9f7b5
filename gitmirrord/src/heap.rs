//! Giving freed heap back to the system after a large one-off allocation.
//!
//! glibc keeps what a thread freed in that thread's arena. Reading a 1M-entry index on
//! the poller's thread peaks near 1.1 GB, and that memory stayed resident beside the
//! fleet the main loop then built, for as long as the process ran: the coordinator's
//! peak RSS at 1M repos was 2.0 GiB, of which ~375 MB was free heap that
//! `malloc_trim` returned (docs/scale.md "Coordinator RSS: freed heap kept by glibc").

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
