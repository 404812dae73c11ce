//! An allocator for guests whose allocations all end with the call that made them.
//!
//! During a `format`, `format-batch` or `format-packed` call, the host allocates the events in
//! the guest, the guest allocates its messages, and the canonical ABI frees all of it by the end
//! of the call's post-return. A stateless formatter therefore has no live allocation between calls. This arena
//! bumps a pointer through one fixed chunk and rewinds it whenever the count of live allocations
//! drops to zero, so an allocation costs a few instructions and a free costs a decrement.
//!
//! Guarantees: an allocation that does not fit in the rest of the chunk goes to the system
//! allocator. A guest that keeps allocations across calls therefore only loses the speed-up, and
//! its memory stays bounded by the chunk plus what the system allocator holds.
//!
//! The arena is for single-threaded WebAssembly guests only: it takes no lock.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

/// The chunk's size. A batch of 128 events of the real capture, with their messages, takes an
/// estimated 600 KiB (about 4.5 KiB an event).
const CHUNK_BYTES: usize = 4 << 20;
/// The chunk's alignment, enough for any type a guest allocates.
const CHUNK_ALIGN: usize = 16;

/// A bump allocator over one chunk, with the system allocator behind it, for single-threaded
/// guests.
pub struct CallArena {
    state: UnsafeCell<ArenaState>,
}

struct ArenaState {
    /// The chunk, allocated on first use; null before.
    chunk: *mut u8,
    /// The offset in the chunk where the next allocation may start.
    next: usize,
    /// Allocations in the chunk not freed yet.
    live: usize,
}

// SAFETY: WebAssembly guests run on one thread, so the state is never accessed concurrently.
unsafe impl Sync for CallArena {}

impl CallArena {
    pub const fn new() -> Self {
        CallArena { state: UnsafeCell::new(ArenaState { chunk: std::ptr::null_mut(), next: 0, live: 0 }) }
    }
}

impl Default for CallArena {
    fn default() -> Self {
        CallArena::new()
    }
}

impl ArenaState {
    /// Returns the offset of `pointer` in the chunk, if it points into the chunk.
    fn offset_of(&self, pointer: *mut u8) -> Option<usize> {
        let offset = (pointer as usize).checked_sub(self.chunk as usize)?;
        (!self.chunk.is_null() && offset < CHUNK_BYTES).then_some(offset)
    }
}

unsafe impl GlobalAlloc for CallArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded (see `Sync` above), and no reference to the state outlives a call.
        let state = unsafe { &mut *self.state.get() };
        if state.chunk.is_null() {
            // SAFETY: the layout has a non-zero size and a power-of-two alignment.
            state.chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK_BYTES, CHUNK_ALIGN)) };
            if state.chunk.is_null() {
                return unsafe { System.alloc(layout) };
            }
        }
        let base = state.chunk as usize;
        let start = (base + state.next).next_multiple_of(layout.align()) - base;
        match start.checked_add(layout.size()) {
            Some(end) if end <= CHUNK_BYTES => {
                state.next = end;
                state.live += 1;
                // SAFETY: `start` lies inside the chunk.
                unsafe { state.chunk.add(start) }
            }
            _ => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        let state = unsafe { &mut *self.state.get() };
        if state.offset_of(pointer).is_some() {
            state.live -= 1;
            if state.live == 0 {
                state.next = 0;
            }
        } else {
            // SAFETY: a pointer outside the chunk came from `System.alloc` with this layout.
            unsafe { System.dealloc(pointer, layout) }
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let state = unsafe { &mut *self.state.get() };
        if let Some(offset) = state.offset_of(pointer) {
            let is_last = offset + layout.size() == state.next;
            if is_last && offset + new_size <= CHUNK_BYTES {
                state.next = offset + new_size;
                return pointer;
            }
            if new_size <= layout.size() {
                return pointer;
            }
        }
        // SAFETY: the caller guarantees that `new_size` rounded up to the alignment fits `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(pointer, moved, layout.size().min(new_size));
                self.dealloc(pointer, layout);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn arena_rewinds_when_nothing_is_live() {
        let arena = CallArena::new();
        unsafe {
            let first = arena.alloc(layout(100));
            let second = arena.alloc(layout(100));
            assert_ne!(first, second);
            arena.dealloc(second, layout(100));
            arena.dealloc(first, layout(100));
            assert_eq!(arena.alloc(layout(100)), first);
        }
    }

    #[test]
    fn live_allocation_prevents_rewind() {
        let arena = CallArena::new();
        unsafe {
            let live = arena.alloc(layout(100));
            let freed = arena.alloc(layout(100));
            arena.dealloc(freed, layout(100));
            let next = arena.alloc(layout(100));
            assert_ne!(next, live);
            assert_ne!(next, freed);
        }
    }

    #[test]
    fn oversized_allocation_uses_system_allocator() {
        let arena = CallArena::new();
        unsafe {
            let small = arena.alloc(layout(8));
            let large = arena.alloc(layout(CHUNK_BYTES));
            assert!(!large.is_null());
            let state = &*arena.state.get();
            assert!(state.offset_of(small).is_some());
            assert!(state.offset_of(large).is_none());
            arena.dealloc(large, layout(CHUNK_BYTES));
        }
    }

    #[test]
    fn realloc_keeps_contents() {
        let arena = CallArena::new();
        unsafe {
            let moved = arena.alloc(layout(4));
            let _blocker = arena.alloc(layout(4));
            moved.copy_from_nonoverlapping([1u8, 2, 3, 4].as_ptr(), 4);
            let grown = arena.realloc(moved, layout(4), 64);
            assert_ne!(grown, moved);
            assert_eq!(std::slice::from_raw_parts(grown, 4), &[1, 2, 3, 4]);
            let in_place = arena.realloc(grown, layout(64), 128);
            assert_eq!(in_place, grown);
        }
    }

    #[test]
    fn full_chunk_falls_back_to_system() {
        let arena = CallArena::new();
        unsafe {
            let _filling = arena.alloc(layout(CHUNK_BYTES - 16));
            let overflow = arena.alloc(layout(64));
            assert!(!overflow.is_null());
            assert!((*arena.state.get()).offset_of(overflow).is_none());
            arena.dealloc(overflow, layout(64));
        }
    }
}
