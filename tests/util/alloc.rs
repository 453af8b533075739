//! A counting global allocator, for the tests that prove a hot path
//! allocates nothing. A test target installs it with
//! `#[global_allocator] static GLOBAL: util::alloc::Counting = util::alloc::Counting;`
//! (it replaces the allocator of the whole binary, so only targets that need
//! it do) and then reads [`thread_allocations`] (this thread only, immune to
//! the test harness's other threads) or [`process_allocations`] (every
//! thread, for work spread over a worker pool).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts every allocation and reallocation, per thread and in total, and
/// forwards it to the system allocator.
pub struct Counting;

static PROCESS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // const-initialised with no destructor: touching it never allocates.
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    PROCESS.fetch_add(1, Ordering::Relaxed);
    // `try_with`: a thread being torn down still frees (and may allocate).
    let _ = THREAD.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator, so its
// contract is the caller's; counting touches only an atomic and a
// const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above, i.e. from System.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations and reallocations made so far by this thread.
pub fn thread_allocations() -> u64 {
    THREAD.with(Cell::get)
}

/// Allocations and reallocations made so far by every thread.
pub fn process_allocations() -> u64 {
    PROCESS.load(Ordering::SeqCst)
}

/// Allocations and reallocations `f` makes on this thread.
pub fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = thread_allocations();
    f();
    thread_allocations() - before
}
