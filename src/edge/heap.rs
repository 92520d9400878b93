//! The worker's global allocator: shard buffers and other blocks of [`LARGE_BYTES`] or more in
//! page runs of their own ([`crate::pages`]), grown straight from `memory.grow`; everything
//! smaller from the standard allocator. Both are counted, so `/healthz` can show live heap bytes
//! beside the linear memory they took.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};
use std::ptr::null_mut;

use core::arch::wasm32::{memory_grow, memory_size};

use crate::pages::{pages_for, PageRuns, PAGE};

/// From this size on any block takes whole pages: rounding up to a 64 KiB page wastes at most a
/// fifth. Smaller blocks that are whole pages already (shard buffers, see `Pinned::shard_slot_bytes`)
/// take page runs too.
const LARGE_BYTES: usize = 256 * 1024;

struct EdgeHeap {
    runs: UnsafeCell<PageRuns>,
    small_bytes: Cell<usize>,
}

// SAFETY: wasm32-unknown-unknown without the atomics feature runs one thread per isolate, so the
// cells are never touched concurrently.
unsafe impl Sync for EdgeHeap {}

#[global_allocator]
static HEAP: EdgeHeap = EdgeHeap {
    runs: UnsafeCell::new(PageRuns::new()),
    small_bytes: Cell::new(0),
};

fn is_large(layout: Layout) -> bool {
    let size = layout.size();
    layout.align() <= PAGE && (size >= LARGE_BYTES || (size >= PAGE && size.is_multiple_of(PAGE)))
}

unsafe impl GlobalAlloc for EdgeHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout) {
            let ptr = System.alloc(layout);
            if !ptr.is_null() {
                self.small_bytes.set(self.small_bytes.get() + layout.size());
            }
            return ptr;
        }
        // SAFETY: single-threaded (see `Sync`), and nothing below allocates, so this is the
        // only reference to the runs.
        let runs = &mut *self.runs.get();
        let grow = |pages| {
            let first = memory_grow(0, pages);
            (first != usize::MAX).then_some(first)
        };
        match runs.take(pages_for(layout.size()), memory_size(0), grow) {
            Some(page) => (page * PAGE) as *mut u8,
            None => null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !is_large(layout) {
            System.dealloc(ptr, layout);
            self.small_bytes.set(self.small_bytes.get() - layout.size());
            return;
        }
        // SAFETY: as in `alloc`.
        let runs = &mut *self.runs.get();
        runs.give(ptr as usize / PAGE, pages_for(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract for `layout`/`new_size`.
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if !is_large(layout) && !is_large(new_layout) {
            let moved = System.realloc(ptr, layout, new_size);
            if !moved.is_null() {
                let small = self.small_bytes.get() - layout.size() + new_size;
                self.small_bytes.set(small);
            }
            return moved;
        }
        if is_large(layout)
            && is_large(new_layout)
            && pages_for(new_size) == pages_for(layout.size())
        {
            return ptr;
        }
        let moved = self.alloc(new_layout);
        if !moved.is_null() {
            std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        moved
    }
}

/// What the heap holds now, for `/healthz` and `/metrics`.
pub(crate) struct HeapUse {
    /// Bytes allocated and not yet freed, small and large blocks together (large ones in whole pages).
    pub live_bytes: usize,
    /// Of those, the small blocks (request handling, mostly).
    pub small_bytes: usize,
    /// Linear memory page runs grew by, in use or freed for reuse: what shard buffers cost.
    pub page_run_bytes: usize,
}

pub(crate) fn heap_use() -> HeapUse {
    // SAFETY: single-threaded; a shared read while nothing allocates.
    let runs = unsafe { &*HEAP.runs.get() };
    HeapUse {
        live_bytes: HEAP.small_bytes.get() + runs.used_pages() * PAGE,
        small_bytes: HEAP.small_bytes.get(),
        page_run_bytes: runs.grown_pages() * PAGE,
    }
}

/// The size of this isolate's wasm linear memory.
pub(crate) fn wasm_memory_bytes() -> usize {
    memory_size(0) * PAGE
}
