//! The frames the relay reader hands to the decoder: a batch of undecoded frames in one buffer,
//! and the pool that brings emptied buffers back to the reader.
//!
//! Guarantees: the reader reads the socket straight into a batch's buffer, and the batch's frames
//! are ranges of it. Only the bytes of a frame still incomplete when its batch is handed over are
//! copied, once, into the next batch's buffer. The buffer goes back to the pool once the batch is
//! decoded, so the memory of queued frames is bounded by the frame queue. Freeing per-frame
//! buffers on other threads fragmented the heap, and RSS grew from 60 MB to 160 MB over
//! 1 000 000 frames.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

/// Batches of frames read from the relay and not yet decoded (a batch holds up to 128 frames). A
/// full queue stops the reader.
///
/// The queues between the stages are short on purpose. With room for 16 batches each, up to
/// 20 MB of frames waited between the stages, and a frame had left the CPU caches by the time it
/// was decoded. With room for 2, the host took about 6 % less CPU a frame in the benchmark, and
/// 14 MB less RSS.
pub const FRAME_QUEUE_CAPACITY: usize = 2;

/// The maximum number of emptied buffers the pool keeps: enough for every batch the frame queue
/// holds, plus the one the reader fills and the one the decoder reads.
const MAX_POOLED_BUFFERS: usize = FRAME_QUEUE_CAPACITY + 2;
/// A buffer larger than this, in bytes, is freed instead of kept, so that one burst of large
/// frames does not hold memory for the rest of the run.
const MAX_POOLED_BUFFER_BYTES: usize = 4 << 20;

/// Frames read together, in the order read, with their bytes in one buffer.
pub struct RawBatch {
    buffer: Vec<u8>,
    frames: Vec<(Range<usize>, u64)>,
}

impl RawBatch {
    /// Starts an empty batch that writes its frames into `buffer`.
    pub fn new(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        RawBatch { buffer, frames: Vec::new() }
    }

    /// Appends a frame that is already in the buffer, at `range`, read at `received_at_us`
    /// (microseconds since the Unix epoch).
    pub fn push_range(&mut self, range: Range<usize>, received_at_us: u64) {
        debug_assert!(range.end <= self.buffer.len());
        self.frames.push((range, received_at_us));
    }

    /// Returns the buffer, for the reader to read frames into.
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Returns each frame's bytes with the time it was read, in the order read.
    pub fn frames(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.frames.iter().map(|(range, received_at_us)| (&self.buffer[range.clone()], *received_at_us))
    }

    /// Returns the batch's buffer, for the pool.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buffer
    }
}

/// Buffers of decoded batches, waiting to be filled again by the reader. Cheap to clone.
#[derive(Clone, Default)]
pub struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// Returns a pooled buffer, or a new empty one when the pool is empty.
    pub fn take(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default()
    }

    /// Keeps `buffer` for a later batch, unless it is too large or the pool is full.
    pub fn give(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() > MAX_POOLED_BUFFER_BYTES {
            return;
        }
        buffer.clear();
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < MAX_POOLED_BUFFERS {
            pool.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_returns_frames_in_order_with_their_times() {
        let mut batch = RawBatch::new(b"stale".to_vec());
        batch.buffer_mut().extend_from_slice(b"\x82\x05first\x82\x00\x82\x05third");
        batch.push_range(2..7, 1);
        batch.push_range(9..9, 2);
        batch.push_range(11..16, 3);
        let frames: Vec<(&[u8], u64)> = batch.frames().collect();
        assert_eq!(frames, vec![(&b"first"[..], 1), (&b""[..], 2), (&b"third"[..], 3)]);
        assert_eq!(batch.len(), 3);
    }

    #[test]
    fn pool_reuses_buffers_up_to_its_limits() {
        let pool = BufferPool::default();
        let mut buffer = Vec::with_capacity(1024);
        buffer.extend_from_slice(b"left over");
        let address = buffer.as_ptr();
        pool.give(buffer);
        let reused = pool.take();
        assert_eq!(reused.as_ptr(), address, "the same allocation comes back");
        assert!(reused.is_empty(), "a pooled buffer comes back empty");

        pool.give(Vec::with_capacity(MAX_POOLED_BUFFER_BYTES + 1));
        assert_eq!(pool.take().capacity(), 0, "an oversized buffer is not kept");

        for _ in 0..MAX_POOLED_BUFFERS + 5 {
            pool.give(Vec::with_capacity(16));
        }
        assert_eq!(pool.0.lock().unwrap().len(), MAX_POOLED_BUFFERS);
    }
}
