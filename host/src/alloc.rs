//! Giving freed memory back to the operating system after a burst.
//!
//! The binary allocates with mimalloc (`main.rs`). mimalloc keeps freed memory to reuse it: a
//! block freed by another thread than the one that allocated it waits until its owner thread
//! allocates again, and freed pages go back to the OS only after a delay, when some thread next
//! allocates. After a burst (a Fetch storm, a compression bomb refused) a proxy that goes quiet
//! therefore keeps its peak resident size, whatever the frame pool and the memory budget gave
//! back. So:
//!
//! - [`release_on_every_worker`] (called by the proxy's periodic trimmer once a burst is over)
//!   asks every runtime worker thread to collect its freed memory, and wakes the idle ones;
//! - [`on_worker_park`], the runtime's `on_thread_park` hook, does it on each worker the next
//!   time that worker goes idle: a forced `mi_collect` (its own pages with blocks other threads
//!   freed, then a purge of every free range, returned to the OS at once). Parking is frequent;
//!   the hook costs one atomic load unless a release was asked for since that thread's last.
//!
//! And [`disable_transparent_huge_pages`] at start-up: mimalloc asks for transparent huge pages
//! on its arenas, so every purge of a freed 2 MiB range followed by a new allocation there
//! faulted in a fresh huge page that the kernel zeroed in full, whatever the allocation used of
//! it. Under whole-value encryption that zeroing was 44-48 % of Kapsule's CPU (BENCHMARKS.md,
//! "Encryption path without frame copies"); with 4 KiB pages only the bytes touched are zeroed.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

// Linked with the allocator the binary uses (and harmless where it is not the global one).
extern crate mimalloc as _;

#[allow(unsafe_code)]
mod ffi {
    extern "C" {
        /// mimalloc: collects the calling thread's heap and purges free memory (`force`: now,
        /// not after the purge delay).
        pub fn mi_collect(force: bool);
    }

    /// Safe wrapper: `mi_collect` takes no pointers and may be called from any thread at any
    /// time.
    pub fn collect() {
        // SAFETY: no arguments besides a bool; mimalloc initialises itself on first use.
        unsafe { mi_collect(true) }
    }
}

/// Turns transparent huge pages off for the whole process (Linux `PR_SET_THP_DISABLE`, inherited
/// by every mapping, present or future): see the module docs. Call once at start-up; elsewhere
/// than Linux, or when the kernel refuses, nothing changes (a performance setting, not a
/// correctness one), and the error is returned for the caller to log.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory this
        // process holds, only how future page faults are served.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Releases asked for so far.
static EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The release this thread last carried out.
    static DONE: Cell<u64> = const { Cell::new(0) };
}

/// Asks every runtime worker to give its freed memory back to the OS the next time it is idle,
/// and does it at once on the calling thread.
pub fn request_release() {
    EPOCH.fetch_add(1, Relaxed);
    on_worker_park();
}

/// [`request_release`], then wakes the runtime's idle workers (a no-op task each) so that they
/// park again, and so collect, now rather than at their next request.
pub async fn release_on_every_worker() {
    request_release();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let mut woken = tokio::task::JoinSet::new();
    for _ in 0..workers {
        woken.spawn(async {});
    }
    woken.join_all().await;
}

/// The runtime's `on_thread_park` hook: carries out a release asked for since this thread's
/// last one (see the module docs).
pub fn on_worker_park() {
    let epoch = EPOCH.load(Relaxed);
    DONE.with(|done| {
        if done.get() != epoch {
            done.set(epoch);
            ffi::collect();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_once_disabled() {
        disable_transparent_huge_pages().unwrap();
        // SAFETY: PR_GET_THP_DISABLE takes and returns integers only.
        #[allow(unsafe_code)]
        let state = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(state, 1);
    }

    #[test]
    fn a_release_runs_once_per_thread_and_request() {
        request_release();
        let epoch = EPOCH.load(Relaxed);
        assert_eq!(DONE.with(Cell::get), epoch);
        // Parking again does nothing new; another thread does its own once.
        on_worker_park();
        assert_eq!(DONE.with(Cell::get), epoch);
        std::thread::spawn(move || {
            assert_ne!(DONE.with(Cell::get), EPOCH.load(Relaxed));
            on_worker_park();
            assert_eq!(DONE.with(Cell::get), EPOCH.load(Relaxed));
        })
        .join()
        .unwrap();
    }
}
