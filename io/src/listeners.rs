//! Binding listening sockets, one set per worker, with SO_REUSEPORT.

use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::net::SocketAddr;
use strait_engine::config::{self, ListenSpec};

/// A listener that could not be bound, with the OS error.
#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub error: std::io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failed to bind {}: {}", self.addr, self.error)
    }
}

/// The accept backlog: large enough for connection bursts (nginx uses 511 by
/// default; the kernel caps it at net.core.somaxconn).
const BACKLOG: i32 = 4096;

pub fn bind_tcp(spec: &ListenSpec) -> Result<mio::net::TcpListener, BindError> {
    let err = |error| BindError { addr: spec.addr, error };
    let socket = Socket::new(Domain::for_address(spec.addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    prepare(&socket, spec.addr).map_err(err)?;
    // Inherited by every accepted socket: no setsockopt per connection.
    socket.set_nodelay(true).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

pub fn bind_udp(spec: &ListenSpec) -> Result<mio::net::UdpSocket, BindError> {
    let err = |error| BindError { addr: spec.addr, error };
    let socket = Socket::new(Domain::for_address(spec.addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    prepare(&socket, spec.addr).map_err(err)?;
    if spec.addr.ip().is_unspecified() {
        // A wildcard listener must learn each datagram's destination: for routing
        // on server_addr, and to answer from the address the client sent to.
        receive_destination_addresses(&socket, spec.addr).map_err(err)?;
    }
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

fn prepare(socket: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    socket.set_reuse_address(true)?;
    // Each worker binds the same address; the kernel spreads connections and
    // keeps a UDP flow on one worker.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]:9100` and `9100` (= 0.0.0.0:9100) are separate listeners, as in nginx.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())
}

/// Every listener of one worker, in the engine's `ListenerId` order.
pub enum BoundListener {
    Tcp(mio::net::TcpListener),
    Udp(mio::net::UdpSocket),
}

pub fn bind_all(specs: &[ListenSpec]) -> Result<Vec<BoundListener>, BindError> {
    specs
        .iter()
        .map(|spec| match spec.protocol {
            config::Protocol::Tcp => bind_tcp(spec).map(BoundListener::Tcp),
            config::Protocol::Udp => bind_udp(spec).map(BoundListener::Udp),
        })
        .collect()
}

fn receive_destination_addresses(socket: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name) = if addr.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
