//! Requests to the CPU to load bytes into its caches before they are read.
//!
//! A request is a hint only: it changes no value, and it names only addresses inside the given
//! bytes. On targets without a stable prefetch instruction in `core::arch`, it does nothing.

/// Size of a cache line on x86-64 CPUs, in bytes.
const CACHE_LINE_BYTES: usize = 64;

/// Requests the first `max_bytes` of `bytes` (or all of them) into the caches, every line at once,
/// so that the reads that follow wait for memory once instead of line by line.
#[inline]
pub fn prefetch(bytes: &[u8], max_bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

        let length = bytes.len().min(max_bytes);
        for offset in (0..length).step_by(CACHE_LINE_BYTES) {
            // SAFETY: the pointer is inside `bytes`, and a prefetch only hints the cache.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(offset).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (bytes, max_bytes, CACHE_LINE_BYTES);
    }
}

/// Calls `each` on every item in order, after requesting the bytes of the item after it (at most
/// `max_bytes` of them), so that loading the next item overlaps with the work on this one.
pub fn for_each_ahead<'a, T>(items: impl Iterator<Item = (&'a [u8], T)>, max_bytes: usize, mut each: impl FnMut(&'a [u8], T)) {
    let mut items = items.peekable();
    if let Some((first, _)) = items.peek() {
        prefetch(first, max_bytes);
    }
    while let Some((bytes, value)) = items.next() {
        if let Some((next, _)) = items.peek() {
            prefetch(next, max_bytes);
        }
        each(bytes, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_visited_once_in_order() {
        let long = vec![7u8; 100_000];
        let buffers: Vec<&[u8]> = vec![b"", b"a", &long, b"bc", &long[..65]];
        for count in 0..=buffers.len() {
            let items = buffers[..count].iter().enumerate().map(|(index, bytes)| (*bytes, index));
            let mut visited = Vec::new();
            for_each_ahead(items, 1024, |bytes, index| visited.push((bytes.len(), index)));
            let expected: Vec<(usize, usize)> = buffers[..count].iter().map(|bytes| bytes.len()).zip(0..).collect();
            assert_eq!(visited, expected, "with {count} items");
        }
    }
}
