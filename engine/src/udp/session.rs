//! One UDP session and the table of them.
//!
//! The engine decides; it never sees payload bytes, only their lengths: the
//! driver keeps each datagram in its own receive buffer and sends it through the
//! socket the engine names, so forwarding costs no copy.

use crate::ids::{ListenerId, SessionId};
use crate::snapshot::ResolvedUpstream;
use crate::time::Time;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct UdpSession {
    pub listener: ListenerId,
    pub peer: SocketAddr,
    /// The address the client sent to (replies leave from it).
    pub local: SocketAddr,
    pub upstream: Arc<ResolvedUpstream>,
    pub node: usize,
    pub last_activity: Time,
    pub idle_timeout: Duration,
    /// Replies left before the session ends; `None` = unlimited.
    pub responses_left: Option<u32>,
    pub datagrams_up: u64,
    pub datagrams_down: u64,
    pub route_id: String,
    pub started: Time,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl UdpSession {
    pub fn deadline(&self) -> Time {
        self.last_activity + self.idle_timeout
    }
}

/// Sessions by (listener, client address), and their slots.
#[derive(Default)]
pub(crate) struct SessionTable {
    pub slots: slab::Slab<UdpSession>,
    pub generations: Vec<u32>,
    pub by_flow: HashMap<(ListenerId, SocketAddr), u32>,
}

impl SessionTable {
    pub fn find(&self, listener: ListenerId, peer: SocketAddr) -> Option<SessionId> {
        let index = *self.by_flow.get(&(listener, peer))?;
        Some(SessionId { index, generation: self.generations[index as usize] })
    }

    pub fn live(&self, id: SessionId) -> Option<usize> {
        let index = id.index as usize;
        (self.slots.contains(index) && self.generations[index] == id.generation).then_some(index)
    }

    pub fn insert(&mut self, session: UdpSession) -> SessionId {
        let flow = (session.listener, session.peer);
        let index = self.slots.insert(session);
        if index >= self.generations.len() {
            self.generations.resize(index + 1, 0);
        }
        self.by_flow.insert(flow, index as u32);
        SessionId { index: index as u32, generation: self.generations[index] }
    }

    pub fn remove(&mut self, index: usize) -> UdpSession {
        let session = self.slots.remove(index);
        self.by_flow.remove(&(session.listener, session.peer));
        self.generations[index] = self.generations[index].wrapping_add(1);
        session
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
}
