//! What the engine asks the driver to do, and the errors the driver reports.

use crate::ids::{ConnId, SessionId, Side};
use std::net::SocketAddr;

/// Drained with `Engine::poll_action` until `None`, in order.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a non-blocking TCP connection to `addr` as this connection's upstream
    /// side, replacing (closing) any upstream socket it had: a retry after a
    /// failed or timed-out connect. Report the result with `handle_connected`.
    Connect { conn: ConnId, addr: SocketAddr },
    /// Shut down the write half of `side`'s socket (forward a FIN).
    Shutdown { conn: ConnId, side: Side },
    /// From now on the driver moves this connection's bytes itself (splice
    /// through a pipe): it reports moved counts with `handle_spliced`, a side's
    /// FIN with `handle_read(side, 0)` once every byte from that side has been
    /// written to the other, and errors with `handle_reset`. Only granted when
    /// `EngineConfig::driver_can_splice` is set.
    Splice { conn: ConnId },
    /// Close both sockets and forget the connection; `reset` = abortive close
    /// (SO_LINGER 0, the peer sees RST). The id is stale from now on.
    Close { conn: ConnId, reset: bool },
    /// Open a UDP socket connected to `addr` for this session's upstream side.
    /// Datagrams of the session are sent through it; what it receives is
    /// reported with `handle_upstream_datagram`.
    UdpConnect { session: SessionId, addr: SocketAddr },
    /// The session ended: close its upstream socket. The id is stale from now on.
    UdpClose { session: SessionId },
    /// Active health check: open a TCP connection to `addr` and report with
    /// `handle_probe_result` (connected = healthy), then close it.
    Probe { probe: ProbeId, addr: SocketAddr },
    /// The probe timed out or its target went away: close its socket, report nothing.
    ProbeCancel { probe: ProbeId },
}

/// An active health probe handle; the generation changes with every probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeId {
    pub index: u32,
    pub generation: u32,
}

/// Why an upstream connect failed, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// ECONNREFUSED: nothing listens there.
    Refused,
    /// The engine's connect deadline passed.
    TimedOut,
    /// The socket was reset before the connect completed.
    Reset,
    /// Any other error (unreachable network, no buffer space, ...).
    Other,
}

/// Why the engine refused a new connection at accept time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No stream route matches: the client is closed without a byte written.
    NoRoute,
    /// The route matched but has no usable upstream (logged).
    NoUpstream,
    /// The worker holds `max_connections` already.
    TooManyConnections,
    /// The listener id is unknown, or the worker is shutting down.
    NotAccepting,
}

/// Why a client datagram was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramDrop {
    NoRoute,
    NoUpstream,
    /// The worker holds `udp_sessions_max` sessions already.
    TooManySessions,
    NotAccepting,
}

/// Where the driver sends a reply from an upstream: out of `listener`'s
/// socket to `peer`, from `local` (the address the client sent to, which on a
/// wildcard listener must be set explicitly so the client accepts the reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub listener: crate::ids::ListenerId,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// Why a connection ended (for logs and counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Finished,
    ClientReset,
    UpstreamReset,
    UpstreamUnreachable,
    NoUpstreamNode,
    IdleTimeout,
    Shutdown,
    /// A TLS listener: no stream route for the ClientHello's SNI.
    NoRoute,
    /// A TLS listener: the client sent something other than a ClientHello, or
    /// a ClientHello over the size cap.
    NotTls,
    /// The TLS handshake was refused or failed (no SNI, no certificate, client
    /// certificate missing or foreign); the client got an alert.
    TlsRefused,
    /// A handshake did not finish within `strait.tls.handshake_timeout`.
    HandshakeTimeout,
    /// A TLS record from an established peer was bad, or the upstream's TLS
    /// handshake failed.
    TlsError,
}

impl CloseReason {
    /// Endings that are not a clean close of both directions reset the peers.
    pub fn resets(self) -> bool {
        matches!(
            self,
            CloseReason::ClientReset | CloseReason::UpstreamReset | CloseReason::Shutdown | CloseReason::TlsError
        )
    }
}
