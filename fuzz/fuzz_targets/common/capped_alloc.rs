//! Global allocator of every fuzz target: the system allocator, but any single allocation (or
//! reallocation) above [`MAX_ALLOCATION`] aborts, which libFuzzer reports as a crash and saves
//! the input. This makes "no unbounded allocation" an assertion even without a sanitizer
//! (libFuzzer's own -malloc_limit_mb needs one); -rss_limit_mb bounds the total.

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation a fuzz input may cause. Inputs are at most 64 KiB and decoding is
/// capped at 1 MiB of decompressed records per batch, so anything near this is a bug.
pub const MAX_ALLOCATION: usize = 64 << 20;

pub struct CappedAlloc;

fn check(size: usize) {
    if size > MAX_ALLOCATION {
        // No formatting here: we are inside the allocator.
        let msg = b"capped_alloc: single allocation above MAX_ALLOCATION\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg);
        std::process::abort();
    }
}

// SAFETY: every call is forwarded unchanged to `System`, after a size check that aborts.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;
