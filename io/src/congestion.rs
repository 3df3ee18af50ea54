//! Congestion control for streaming connections whose peer is on this host
//! (`strait.loopback_tcp_congestion`).
//!
//! Loopback has no path to model and no queue to keep short, yet with the
//! default qdisc BBR paces every burst with a high-resolution timer; on a bulk
//! flow that costs the proxy about a quarter of its CPU per byte. Only
//! connections the engine hands to splice (the streaming ones) are switched, so
//! short request/response connections pay no extra system call.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

pub struct LoopbackCongestion {
    /// The algorithm to set; `None` when it is what the system uses anyway.
    name: Option<String>,
}

impl LoopbackCongestion {
    pub fn new(configured: Option<&str>) -> LoopbackCongestion {
        let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
        let name = configured.filter(|name| *name != system.trim()).map(str::to_string);
        LoopbackCongestion { name }
    }

    /// Switches `socket` (whose peer is on this host) to the configured algorithm.
    /// A refusal (module not loaded, not allowed) leaves the system's in place.
    pub fn apply(&self, socket: &mio::net::TcpStream) {
        let Some(name) = &self.name else { return };
        // SAFETY: setsockopt reads `name.len()` bytes from a live string; the
        // kernel copies the name and needs no terminating NUL when given the length.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        if result < 0 {
            log::debug!("TCP_CONGESTION {name}: {}", std::io::Error::last_os_error());
        }
    }
}

/// Whether `peer` is this host over loopback (127.0.0.0/8, ::1, ::ffff:127.x).
pub fn is_loopback_peer(peer: &SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers_are_recognised_in_every_spelling() {
        for peer in ["127.0.0.1:80", "127.8.9.10:80", "[::1]:80", "[::ffff:127.0.0.1]:80"] {
            assert!(is_loopback_peer(&peer.parse().unwrap()), "{peer}");
        }
        for peer in ["10.0.0.1:80", "[2001:db8::1]:80", "[::ffff:10.0.0.1]:80", "0.0.0.0:80"] {
            assert!(!is_loopback_peer(&peer.parse().unwrap()), "{peer}");
        }
    }

    #[test]
    fn nothing_is_set_when_the_system_already_uses_the_algorithm() {
        let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
        assert!(LoopbackCongestion::new(Some(system.trim())).name.is_none());
        assert!(LoopbackCongestion::new(None).name.is_none());
    }
}
