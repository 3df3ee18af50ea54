//! What the access log says about one finished TCP connection or UDP session
//! (`EngineConfig::session_records`). The engine only collects the facts; the
//! driver adds the wall-clock time and writes the line.

use crate::action::{CloseReason, Refusal};
use crate::config::Protocol;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

/// Records waiting for the driver; beyond this the oldest are dropped (the
/// driver drains after every call, so this bound is only a safety net).
const QUEUED_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub protocol: Protocol,
    /// The client.
    pub peer: SocketAddr,
    /// The address the client connected (or sent) to.
    pub local: SocketAddr,
    /// Empty when no route matched.
    pub route_id: String,
    /// The last upstream node connected (or sent) to, if any.
    pub upstream: Option<SocketAddr>,
    /// nginx's stream `$status`: 200 served, 400 bad client (TLS), 403 no route
    /// for the SNI, 500 ended by Strait, 502 upstream failed, 503 refused.
    pub status: u16,
    /// Bytes read from the client (sent on to the upstream).
    pub bytes_from_client: u64,
    /// Bytes read from the upstream (sent on to the client).
    pub bytes_from_upstream: u64,
    /// From accept (or the first datagram) to the end.
    pub duration: Duration,
}

impl CloseReason {
    /// The `$status` nginx's stream module would log for a session ending this way.
    pub fn status(self) -> u16 {
        match self {
            CloseReason::Finished | CloseReason::ClientReset | CloseReason::IdleTimeout => 200,
            CloseReason::UpstreamReset | CloseReason::UpstreamUnreachable | CloseReason::TlsError => 502,
            CloseReason::NoUpstreamNode => 503,
            CloseReason::Shutdown => 500,
            CloseReason::NoRoute => 403,
            CloseReason::NotTls | CloseReason::TlsRefused | CloseReason::HandshakeTimeout => 400,
        }
    }
}

impl Refusal {
    /// The `$status` of a connection refused at accept.
    pub fn status(self) -> u16 {
        match self {
            Refusal::NoRoute | Refusal::NoUpstream | Refusal::TooManyConnections | Refusal::NotAccepting => 503,
        }
    }
}

/// The queue the engine fills and the driver drains; collects nothing unless enabled.
#[derive(Default)]
pub(crate) struct Records {
    enabled: bool,
    queue: VecDeque<SessionRecord>,
}

impl Records {
    pub fn new(enabled: bool) -> Records {
        Records { enabled, queue: VecDeque::new() }
    }

    /// Queues the record `make` builds; `make` runs only when records are
    /// collected (building one clones the route id).
    pub fn push_with(&mut self, make: impl FnOnce() -> SessionRecord) {
        if !self.enabled {
            return;
        }
        if self.queue.len() >= QUEUED_MAX {
            self.queue.pop_front();
        }
        self.queue.push_back(make());
    }

    pub fn pop(&mut self) -> Option<SessionRecord> {
        self.queue.pop_front()
    }
}
