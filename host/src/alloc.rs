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
