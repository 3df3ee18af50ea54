//! Batched datagram I/O: recvmmsg(2) and sendmmsg(2) over a fixed set of
//! slots, so one syscall moves many datagrams.
//!
//! Each slot holds a whole datagram (64 KiB): the slots are reserved address
//! space, but only the pages a datagram touches become resident, so a batch of
//! small DNS messages costs a few pages.

use socket2::SockAddr;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

pub const SLOT_BYTES: usize = 65536;
/// Datagrams per recvmmsg/sendmmsg call at most (the scratch arrays live on the stack).
pub const BATCH_MAX: usize = 32;

pub struct Batch {
    bytes: Vec<u8>,
    lens: Vec<usize>,
    /// Source (after a receive) or destination (before a send) of each slot.
    addrs: Vec<Option<SockAddr>>,
    /// The datagram's destination address (received with IP_PKTINFO), or the
    /// source address to send from; `None` = let the kernel choose.
    locals: Vec<Option<IpAddr>>,
    filled: usize,
}

/// Room for one IP_PKTINFO or IPV6_PKTINFO control message, aligned for cmsghdr.
type Control = [u64; 8];

impl Default for Batch {
    /// An empty placeholder (no slots), for taking a batch out of a struct.
    fn default() -> Batch {
        Batch { bytes: Vec::new(), lens: Vec::new(), addrs: Vec::new(), locals: Vec::new(), filled: 0 }
    }
}

impl Batch {
    pub fn new(slots: usize) -> Batch {
        assert!(slots <= BATCH_MAX, "a batch has at most BATCH_MAX slots");
        Batch {
            bytes: vec![0; slots * SLOT_BYTES],
            lens: vec![0; slots],
            addrs: vec![None; slots],
            locals: vec![None; slots],
            filled: 0,
        }
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

    /// The address slot `slot` was sent to, when the socket reports it (wildcard listeners).
    pub fn destination_ip(&self, slot: usize) -> Option<IpAddr> {
        self.locals[slot]
    }

    /// Sets the address slot `slot` leaves from (`None`: the kernel chooses).
    pub fn set_source_ip(&mut self, slot: usize, from: Option<IpAddr>) {
        self.locals[slot] = from;
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
        let mut control: [Control; BATCH_MAX] = [[0; 8]; BATCH_MAX];
        for i in 0..free {
            let slot = self.filled + i;
            iovecs[i] =
                libc::iovec { iov_base: self.bytes[slot * SLOT_BYTES..].as_mut_ptr().cast(), iov_len: SLOT_BYTES };
            let header = &mut headers[i].msg_hdr;
            header.msg_name = (&mut storage[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = control[i].as_mut_ptr().cast();
            header.msg_controllen = size_of::<Control>();
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
            self.locals[slot] = packet_destination(&headers[i].msg_hdr);
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
        let mut control: [Control; BATCH_MAX] = [[0; 8]; BATCH_MAX];
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
            if let Some(from) = self.locals[slot] {
                set_packet_source(header, &mut control[count], from);
            }
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

/// The destination address of a received datagram, from its IP_PKTINFO /
/// IPV6_PKTINFO control message (present only when the socket asked for it).
fn packet_destination(header: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: the kernel filled msg_control with well-formed cmsghdrs of msg_controllen bytes.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                    return Some(IpAddr::V4(u32::from_be(info.ipi_addr.s_addr).into()));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                    return Some(IpAddr::V6(info.ipi6_addr.s6_addr.into()));
                }
                _ => cmsg = libc::CMSG_NXTHDR(header, cmsg),
            }
        }
    }
    None
}

/// Attaches a control message making the datagram leave from `from`.
fn set_packet_source(header: &mut libc::msghdr, control: &mut Control, from: IpAddr) {
    let (level, kind, len) = match from {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>()),
    };
    header.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations; `control` has room for
    // one pktinfo message (checked by the assert), and CMSG_FIRSTHDR points into it.
    unsafe {
        header.msg_controllen = libc::CMSG_SPACE(len as u32) as usize;
        assert!(header.msg_controllen <= size_of::<Control>(), "a pktinfo control message fits its buffer");
        let cmsg = libc::CMSG_FIRSTHDR(header);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(len as u32) as usize;
        let data = libc::CMSG_DATA(cmsg);
        match from {
            IpAddr::V4(v4) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr { s_addr: u32::from(v4).to_be() },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(data as *mut libc::in_pktinfo, info);
            }
            IpAddr::V6(v6) => {
                let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: v6.octets() }, ipi6_ifindex: 0 };
                std::ptr::write_unaligned(data as *mut libc::in6_pktinfo, info);
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
