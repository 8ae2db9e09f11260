//! Gives memory back to the system after streaming sessions end. glibc keeps freed heap pages in
//! its arenas, so a server that once held hundreds of clients that stopped reading would stay at
//! that peak for good; `malloc_trim` hands the free pages back. It runs on an interval, on the
//! next ticks after sessions end (a closed connection's buffers are freed a moment after its
//! session), so a quiet server does nothing. [`fix_allocator_thresholds`] keeps glibc from
//! raising the thresholds that decide which buffers stay in its arenas.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::periodic;

/// How often ended sessions are looked for.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Trims after the last session end: enough for buffers freed a little later to go back too.
const TRIMS_AFTER_AN_END: u32 = 2;

#[derive(Debug, Default)]
pub struct MemoryReturn {
    trims_due: AtomicU32,
}

impl MemoryReturn {
    /// Starts the interval for as long as the returned handle is referenced. Needs a Tokio
    /// runtime.
    pub fn start(every: Duration) -> Arc<Self> {
        let this = Arc::new(MemoryReturn::default());
        periodic::while_alive(&this, every, |this| {
            let due = this.trims_due.load(Ordering::Relaxed);
            if due > 0 {
                // A session ending meanwhile sets it back to the full count, which wins.
                let _ = this.trims_due.compare_exchange(
                    due,
                    due - 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                trim();
            }
        });
        this
    }

    pub fn session_ended(&self) {
        self.trims_due.store(TRIMS_AFTER_AN_END, Ordering::Relaxed);
    }
}

/// glibc's default mmap and trim thresholds, kept fixed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const THRESHOLD_BYTES: libc::c_int = 128 * 1024;

/// Fixes glibc's mmap and trim thresholds at their defaults, for the whole process. Left to
/// glibc, freeing one large buffer raises the mmap threshold to its size and the trim threshold
/// to twice that (up to 32 and 64 MiB): later buffers that size stay in the arenas instead of
/// being unmapped when freed, and a worker thread's arena keeps a free top below the trim
/// threshold, which `malloc_trim` never trims. Call once, before the server starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn fix_allocator_thresholds() {
    for parameter in [libc::M_MMAP_THRESHOLD, libc::M_TRIM_THRESHOLD] {
        // SAFETY: mallopt only sets a parameter of glibc's allocator, under its own lock; both
        // thresholds accept any size at any time.
        unsafe {
            libc::mallopt(parameter, THRESHOLD_BYTES);
        }
    }
}

/// Other allocators have no such thresholds.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_allocator_thresholds() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas; it takes no
    // pointer and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory by themselves, or have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
