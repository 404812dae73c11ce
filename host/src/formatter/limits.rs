//! Per-store resource limits of a guest, and the record of which limit a failed call hit.

/// Limits the linear memory and tables of one guest store and remembers when a growth request was
/// refused, so that the resulting trap can be reported as a memory limit rather than as the
/// misleading trap the guest's allocator raises when it gets no memory.
pub struct GuestLimiter {
    max_memory_bytes: usize,
    max_table_elements: usize,
    /// Memory of all linear memories in the store, in bytes.
    memory_bytes: usize,
    /// The highest `memory_bytes` seen since the store was created.
    pub peak_memory_bytes: usize,
    /// Set when a memory growth was refused; cleared by the caller before each call.
    pub memory_limit_hit: bool,
}

impl GuestLimiter {
    pub fn new(max_memory_bytes: usize) -> Self {
        GuestLimiter {
            max_memory_bytes,
            max_table_elements: 1_000_000,
            memory_bytes: 0,
            peak_memory_bytes: 0,
            memory_limit_hit: false,
        }
    }

    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_bytes - current.min(self.memory_bytes) + desired;
        if total > self.max_memory_bytes {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        self.memory_bytes = total;
        self.peak_memory_bytes = self.peak_memory_bytes.max(total);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}
