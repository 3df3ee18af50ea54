//! The in-memory network: one `Pipe` per TCP connection between the proxy and
//! a peer (the client, or the upstream node it reached). A pipe holds both
//! directions and the peer's side of the story (what it sent, what it read),
//! so byte integrity is checked where bytes land, not inferred afterwards.
//!
//! Bytes are not random: byte `i` of a stream is `pattern_byte(k, dir, i)`,
//! so a receiver can tell a lost, duplicated or reordered byte at once
//! without anyone keeping a copy of what was sent.

use std::collections::VecDeque;

/// Direction of a stream, named by its sender.
pub const FROM_CLIENT: u8 = 0;
pub const FROM_UPSTREAM: u8 = 1;

/// Byte `i` of stream `dir` of simulated connection `k`.
pub fn pattern_byte(k: u64, dir: u8, i: u64) -> u8 {
    let mut x = (k << 1 | u64::from(dir))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    x ^= x >> 29;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    (x >> 32) as u8
}

pub struct Pipe {
    /// The simulated connection this pipe belongs to (seeds the pattern).
    pub k: u64,
    /// Direction of the bytes the peer sends; it receives the other one.
    pub sends: u8,
    // peer -> proxy
    /// Sent by the peer, not yet read by the proxy (kernel receive buffer).
    pub inbox: VecDeque<u8>,
    pub peer_sent: u64,
    /// The peer shut its write half after `peer_sent` bytes.
    pub peer_fin: bool,
    /// The proxy has read that FIN (`handle_read(.., 0)`).
    pub fin_read: bool,
    // proxy -> peer
    /// Written by the proxy, not yet read by the peer (socket send buffer).
    pub outbox: VecDeque<u8>,
    /// Room in the socket send buffer: a slow reader fills it.
    pub outbox_cap: usize,
    pub proxy_written: u64,
    pub peer_received: u64,
    /// The proxy shut its write half (a forwarded FIN or a clean close).
    pub proxy_fin: bool,
    pub peer_saw_eof: bool,
    pub peer_saw_reset: bool,
    /// Reads whatever arrives at once; a slow peer reads only when told to.
    pub eager: bool,
}

impl Pipe {
    pub fn new(k: u64, sends: u8, outbox_cap: usize, eager: bool) -> Pipe {
        Pipe {
            k,
            sends,
            inbox: VecDeque::new(),
            peer_sent: 0,
            peer_fin: false,
            fin_read: false,
            outbox: VecDeque::new(),
            outbox_cap,
            proxy_written: 0,
            peer_received: 0,
            proxy_fin: false,
            peer_saw_eof: false,
            peer_saw_reset: false,
            eager,
        }
    }

    /// Whether the peer may still send (no FIN, no reset seen).
    pub fn peer_can_send(&self) -> bool {
        !self.peer_fin && !self.peer_saw_reset
    }

    /// The peer sends `n` more bytes of its stream.
    pub fn peer_send(&mut self, n: u64) {
        assert!(self.peer_can_send(), "sim bug: a peer sends after its FIN");
        for i in self.peer_sent..self.peer_sent + n {
            self.inbox.push_back(pattern_byte(self.k, self.sends, i));
        }
        self.peer_sent += n;
    }

    /// The proxy's socket has something to report to a read: bytes or a FIN.
    pub fn readable(&self) -> bool {
        !self.inbox.is_empty() || (self.peer_fin && !self.fin_read)
    }

    /// The proxy reads up to `buf.len()` bytes.
    pub fn proxy_read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.inbox.len());
        for (slot, byte) in buf.iter_mut().zip(self.inbox.drain(..n)) {
            *slot = byte;
        }
        n
    }

    pub fn outbox_space(&self) -> usize {
        self.outbox_cap.saturating_sub(self.outbox.len())
    }

    /// The proxy writes `data` (already cut to the space available).
    pub fn proxy_write(&mut self, data: &[u8]) {
        assert!(!self.proxy_fin, "no byte is written to a side after its write half was shut (k={})", self.k);
        debug_assert!(data.len() <= self.outbox_space(), "sim bug: write past space");
        self.outbox.extend(data);
        self.proxy_written += data.len() as u64;
    }

    /// The peer reads up to `max` bytes, checking each against its stream.
    /// Returns how many it read.
    pub fn peer_read(&mut self, max: usize) -> usize {
        let n = max.min(self.outbox.len());
        let expect_dir = 1 - self.sends;
        for byte in self.outbox.drain(..n) {
            let want = pattern_byte(self.k, expect_dir, self.peer_received);
            assert_eq!(
                byte, want,
                "bytes arrive in order, none lost or duplicated: connection k={} stream {} offset {}",
                self.k, expect_dir, self.peer_received
            );
            self.peer_received += 1;
        }
        if self.outbox.is_empty() && self.proxy_fin && !self.peer_saw_eof {
            self.peer_saw_eof = true;
        }
        n
    }

    /// The proxy closed the socket. A clean close delivers what the kernel
    /// still holds, then EOF; an abortive one (RST) discards it.
    pub fn proxy_close(&mut self, reset: bool) {
        if reset {
            self.outbox.clear();
            self.peer_saw_reset = true;
        } else {
            self.proxy_fin = true;
            self.peer_read(usize::MAX);
        }
        // Bytes the peer sent that the proxy never read die with the socket.
        self.inbox.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_delivers_its_pattern_in_order() {
        let mut p = Pipe::new(3, FROM_CLIENT, 4, true);
        p.peer_send(10);
        let mut buf = [0u8; 10];
        assert_eq!(p.proxy_read(&mut buf), 10);
        // Echo the client's stream back as if it were the upstream's: only the
        // right direction's pattern is accepted.
        let mut other = Pipe::new(3, FROM_UPSTREAM, 16, true);
        other.proxy_write(&buf);
        assert_eq!(other.peer_read(usize::MAX), 10);
    }

    #[test]
    #[should_panic(expected = "bytes arrive in order")]
    fn a_swapped_byte_is_caught() {
        let mut p = Pipe::new(3, FROM_CLIENT, 4, true);
        p.peer_send(2);
        let mut buf = [0u8; 2];
        p.proxy_read(&mut buf);
        buf.swap(0, 1);
        let mut other = Pipe::new(3, FROM_UPSTREAM, 16, true);
        if buf[0] == buf[1] {
            panic!("bytes arrive in order (patterns collided; test is moot)");
        }
        other.proxy_write(&buf);
        other.peer_read(usize::MAX);
    }
}
