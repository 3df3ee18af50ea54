//! Per-direction byte buffers and the pool they come from.
//!
//! A connection holds a buffer only while bytes are in flight in that
//! direction: an idle connection owns no buffer memory. Buffers return to a
//! bounded per-worker pool when they drain, so steady-state forwarding
//! allocates nothing.
//!
//! A `RingBuffer` is a fixed-capacity ring. The driver reads straight into
//! `free_mut()` and writes straight from `data()`; each returns the contiguous
//! part, so a wrapped ring costs one extra syscall, never a copy.

pub struct RingBuffer {
    bytes: Box<[u8]>,
    /// Index of the first unread byte.
    head: usize,
    /// Number of bytes stored.
    len: usize,
}

impl RingBuffer {
    pub fn with_capacity(capacity: usize) -> RingBuffer {
        assert!(capacity > 0, "a buffer has room for at least one byte");
        RingBuffer { bytes: vec![0; capacity].into_boxed_slice(), head: 0, len: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.bytes.len()
    }

    /// The contiguous stored bytes starting at the head.
    pub fn data(&self) -> &[u8] {
        let end = (self.head + self.len).min(self.bytes.len());
        &self.bytes[self.head..end]
    }

    /// The contiguous free space after the stored bytes.
    pub fn free_mut(&mut self) -> &mut [u8] {
        let cap = self.bytes.len();
        let tail = (self.head + self.len) % cap;
        let end = if tail >= self.head && self.len < cap { cap } else { self.head };
        if self.len == cap {
            return &mut self.bytes[0..0];
        }
        &mut self.bytes[tail..end]
    }

    /// Marks `n` bytes of `free_mut()` as written.
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.free_mut().len(), "a commit never exceeds the free space handed out");
        self.len += n;
    }

    /// Drops `n` bytes from the head (they were written out).
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.data().len(), "a consume never exceeds the data handed out");
        self.len -= n;
        self.head = if self.len == 0 { 0 } else { (self.head + n) % self.bytes.len() };
    }

    /// Appends as much of `src` as fits; returns how much was taken.
    pub fn push(&mut self, mut src: &[u8]) -> usize {
        let mut taken = 0;
        while !src.is_empty() {
            let free = self.free_mut();
            let n = free.len().min(src.len());
            if n == 0 {
                break;
            }
            free[..n].copy_from_slice(&src[..n]);
            self.commit(n);
            src = &src[n..];
            taken += n;
        }
        taken
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// A bounded stack of spare buffers of one size.
pub struct BufferPool {
    buffer_bytes: usize,
    spare: Vec<RingBuffer>,
    spare_max: usize,
    /// Buffers handed out and not yet returned: for invariants and metrics.
    outstanding: usize,
}

impl BufferPool {
    pub fn new(buffer_bytes: usize, spare_max: usize) -> BufferPool {
        BufferPool { buffer_bytes, spare: Vec::new(), spare_max, outstanding: 0 }
    }

    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    pub fn take(&mut self) -> RingBuffer {
        self.outstanding += 1;
        self.spare.pop().unwrap_or_else(|| RingBuffer::with_capacity(self.buffer_bytes))
    }

    pub fn give_back(&mut self, mut buffer: RingBuffer) {
        debug_assert!(self.outstanding > 0, "only buffers taken from the pool are given back");
        self.outstanding -= 1;
        if self.spare.len() < self.spare_max && buffer.capacity() == self.buffer_bytes {
            buffer.clear();
            self.spare.push(buffer);
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_wraps_without_losing_or_reordering_bytes() {
        let mut ring = RingBuffer::with_capacity(8);
        assert_eq!(ring.push(b"abcdef"), 6);
        ring.consume(4);
        assert_eq!(ring.push(b"ghijkl"), 6, "the freed head space is reused");
        assert!(ring.is_full());
        let mut out = Vec::new();
        while !ring.is_empty() {
            let d = ring.data().to_vec();
            ring.consume(d.len());
            out.extend(d);
        }
        assert_eq!(out, b"efghijkl");
    }

    #[test]
    fn full_ring_offers_no_free_space() {
        let mut ring = RingBuffer::with_capacity(4);
        ring.push(b"abcd");
        assert!(ring.free_mut().is_empty());
    }

    #[test]
    fn pool_reuses_buffers_and_bounds_spares() {
        let mut pool = BufferPool::new(16, 1);
        let a = pool.take();
        let b = pool.take();
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.spare.len(), 1, "spares beyond the limit are freed");
        assert_eq!(pool.outstanding(), 0);
    }
}
