//! Batched datagram I/O: recvmmsg(2) and sendmmsg(2) over a fixed set of
//! slots, so one syscall moves many datagrams.
//!
//! Each slot holds a whole datagram (64 KiB): the slots are reserved address
//! space, but only the pages a datagram touches become resident, so a batch of
//! small DNS messages costs a few pages.

use socket2::SockAddr;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

pub const SLOT_BYTES: usize = 65536;
/// Datagrams per recvmmsg/sendmmsg call at most (the scratch arrays live on the stack).
pub const BATCH_MAX: usize = 32;

pub struct Batch {
    bytes: Vec<u8>,
    lens: Vec<usize>,
    /// Source (after a receive) or destination (before a send) of each slot.
    addrs: Vec<Option<SockAddr>>,
    filled: usize,
}

impl Default for Batch {
    /// An empty placeholder (no slots), for taking a batch out of a struct.
    fn default() -> Batch {
        Batch { bytes: Vec::new(), lens: Vec::new(), addrs: Vec::new(), filled: 0 }
    }
}

impl Batch {
    pub fn new(slots: usize) -> Batch {
        assert!(slots <= BATCH_MAX, "a batch has at most BATCH_MAX slots");
        Batch { bytes: vec![0; slots * SLOT_BYTES], lens: vec![0; slots], addrs: vec![None; slots], filled: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    pub fn clear(&mut self) {
        self.filled = 0;
    }

    pub fn datagram(&self, slot: usize) -> &[u8] {
        &self.bytes[slot * SLOT_BYTES..slot * SLOT_BYTES + self.lens[slot]]
    }

    pub fn source(&self, slot: usize) -> Option<SocketAddr> {
        self.addrs[slot].as_ref().and_then(SockAddr::as_socket)
    }

    /// Sets where slot `slot` goes; `None` drops it at the next send.
    pub fn set_destination(&mut self, slot: usize, to: Option<SocketAddr>) {
        self.addrs[slot] = to.map(SockAddr::from);
    }

    /// Receives into the free slots without blocking; returns how many
    /// datagrams arrived (0 = none waiting). Fewer than the free slots means
    /// the socket is drained, so no extra call to see EAGAIN is needed.
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let free = self.capacity() - self.filled;
        if free == 0 {
            return Ok(0);
        }
        // SAFETY: zeroed sockaddr_storage, iovec and mmsghdr are valid initial values.
        let mut storage: [libc::sockaddr_storage; BATCH_MAX] = unsafe { zeroed() };
        let mut iovecs: [libc::iovec; BATCH_MAX] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH_MAX] = unsafe { zeroed() };
        for i in 0..free {
            let slot = self.filled + i;
            iovecs[i] =
                libc::iovec { iov_base: self.bytes[slot * SLOT_BYTES..].as_mut_ptr().cast(), iov_len: SLOT_BYTES };
            let header = &mut headers[i].msg_hdr;
            header.msg_name = (&mut storage[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
        }
        // SAFETY: every header points at live buffers owned by this frame or by `self.bytes`.
        let n =
            unsafe { libc::recvmmsg(fd, headers.as_mut_ptr(), free as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(error),
            };
        }
        let n = n as usize;
        for i in 0..n {
            let slot = self.filled + i;
            self.lens[slot] = headers[i].msg_len as usize;
            let len = headers[i].msg_hdr.msg_namelen;
            // SAFETY: the kernel wrote a socket address of `len` bytes into storage[i].
            self.addrs[slot] = (len > 0).then(|| unsafe { SockAddr::new(storage[i], len) });
        }
        self.filled += n;
        Ok(n)
    }

    /// Sends the slots `select` picks that have a destination out of `fd`.
    /// Datagrams the socket cannot take now are dropped (UDP may drop).
    pub fn send(&mut self, fd: RawFd, select: impl Fn(usize) -> bool) {
        // SAFETY: zeroed iovec and mmsghdr are valid initial values.
        let mut iovecs: [libc::iovec; BATCH_MAX] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH_MAX] = unsafe { zeroed() };
        let mut count = 0;
        for slot in 0..self.filled {
            let Some(to) = self.addrs[slot].as_ref().filter(|_| select(slot)) else { continue };
            iovecs[count] =
                libc::iovec { iov_base: self.bytes[slot * SLOT_BYTES..].as_mut_ptr().cast(), iov_len: self.lens[slot] };
            let header = &mut headers[count].msg_hdr;
            header.msg_name = to.as_ptr() as *mut libc::c_void;
            header.msg_namelen = to.len();
            header.msg_iov = &mut iovecs[count];
            header.msg_iovlen = 1;
            count += 1;
        }
        let headers = &mut headers[..count];
        let mut sent = 0;
        while sent < headers.len() {
            let rest = &mut headers[sent..];
            // SAFETY: every header points at live buffers owned by this frame or by `self`.
            let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, libc::MSG_DONTWAIT) };
            if n > 0 {
                sent += n as usize;
                continue;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                // A datagram the kernel refuses (e.g. an unreachable client): skip it.
                io::ErrorKind::WouldBlock => break,
                _ => sent += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_receives_many_and_sends_each_to_its_destination() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let clients: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(format!("hello {i}").as_bytes(), server.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::new(8);
        let mut got = 0;
        while got < 3 {
            got += batch.receive(server.as_raw_fd()).unwrap();
        }
        for slot in 0..3 {
            let from = batch.source(slot).unwrap();
            let index = clients.iter().position(|c| c.local_addr().unwrap() == from).unwrap();
            assert_eq!(batch.datagram(slot), format!("hello {index}").as_bytes());
        }
        batch.set_destination(1, None);
        batch.send(server.as_raw_fd(), |_| true);
        batch.clear();
        let mut answered = 0;
        for c in &clients {
            c.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
            let mut buf = [0u8; 64];
            if let Ok(n) = c.recv(&mut buf) {
                assert!(buf[..n].starts_with(b"hello"));
                answered += 1;
            }
        }
        assert_eq!(answered, 2, "the slot without a destination is dropped");
        assert!(batch.is_empty());
    }
}
