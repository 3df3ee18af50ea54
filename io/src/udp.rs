//! The worker's UDP side: client datagrams on UDP listeners, one connected
//! socket per session towards its upstream node, replies sent back from the
//! listener's socket. The engine decides (session, node, end of session); this
//! file only moves datagrams, each straight from the worker's one receive
//! buffer, without a copy or an allocation per datagram.

use crate::conn_io::session_token;
use crate::listeners::BoundListener;
use crate::worker::Worker;
use mio::net::UdpSocket;
use mio::{Interest, Token};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use strait_engine::{ListenerId, SessionId};

/// Datagrams handled per socket per wake-up before other sockets get a turn.
const DATAGRAMS_PER_WAKE: usize = 256;
/// The largest UDP payload over IPv4 is 65507 bytes; IPv6 jumbograms aside, this holds any datagram.
pub const DATAGRAM_BYTES_MAX: usize = 65536;

pub struct SessionIo {
    pub id: SessionId,
    pub socket: UdpSocket,
}

impl Worker {
    /// Client datagrams on UDP listener `index`.
    pub(crate) fn on_udp_listener(&mut self, index: usize) {
        let mut buf = std::mem::take(&mut self.datagram);
        let local = match self.listeners.get(index) {
            Some(Some(BoundListener::Udp(_))) => self.listener_addr(index),
            _ => None,
        };
        let Some(local) = local else {
            self.datagram = buf;
            return;
        };
        let mut exhausted = true;
        for _ in 0..DATAGRAMS_PER_WAKE {
            let Some(Some(BoundListener::Udp(socket))) = self.listeners.get(index) else { break };
            let (len, peer) = match socket.recv_from(&mut buf) {
                Ok(pair) => pair,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    exhausted = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("{}: recv on {local} failed: {e}", self.name);
                    continue;
                }
            };
            let now = self.clock.now();
            let Ok(session) = self.engine.handle_client_datagram(now, ListenerId(index as u32), local, peer, len)
            else {
                continue;
            };
            // A new session's UdpConnect is queued: its socket must exist before the send.
            self.perform_actions();
            let Some(entry) = self.session_mut(session) else { continue };
            match entry.socket.send(&buf[..len]) {
                Ok(_) => {}
                // The socket's send buffer is full: UDP may drop, and does.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.engine.handle_upstream_error(now, session);
                    self.perform_actions();
                }
            }
        }
        self.datagram = buf;
        if exhausted {
            self.again.push_back(Token(index));
        }
    }

    /// Replies on a session's upstream socket.
    pub(crate) fn on_session(&mut self, slot: usize) {
        let mut buf = std::mem::take(&mut self.datagram);
        let mut exhausted = true;
        for _ in 0..DATAGRAMS_PER_WAKE {
            let Some(Some(entry)) = self.sessions.get_mut(slot) else {
                exhausted = false;
                break;
            };
            let id = entry.id;
            let now = self.clock.now();
            let len = match entry.socket.recv(&mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    exhausted = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    // ECONNREFUSED: the node answered with ICMP port unreachable.
                    self.engine.handle_upstream_error(now, id);
                    self.perform_actions();
                    exhausted = false;
                    break;
                }
            };
            let Some(reply) = self.engine.handle_upstream_datagram(now, id, len) else { continue };
            if let Some(Some(BoundListener::Udp(listener))) = self.listeners.get(reply.listener.0 as usize) {
                let _ = listener.send_to(&buf[..len], reply.peer);
            }
            self.perform_actions();
        }
        self.datagram = buf;
        if exhausted {
            if let Some(Some(entry)) = self.sessions.get(slot) {
                self.again.push_back(session_token(entry.id));
            }
        }
    }

    pub(crate) fn udp_connect(&mut self, id: SessionId, addr: SocketAddr) {
        let unspecified = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let result = UdpSocket::bind(SocketAddr::new(unspecified, 0)).and_then(|mut socket| {
            socket.connect(addr)?;
            self.poll.registry().register(&mut socket, session_token(id), Interest::READABLE)?;
            Ok(socket)
        });
        match result {
            Ok(socket) => {
                let slot = id.index as usize;
                if slot >= self.sessions.len() {
                    self.sessions.resize_with(slot + 1, || None);
                }
                self.sessions[slot] = Some(SessionIo { id, socket });
            }
            Err(e) => {
                log::warn!("{}: udp socket to {addr}: {e}", self.name);
                let now = self.clock.now();
                self.engine.handle_upstream_error(now, id);
            }
        }
    }

    pub(crate) fn udp_close(&mut self, id: SessionId) {
        if let Some(entry) = self.sessions.get_mut(id.index as usize) {
            if entry.as_ref().is_some_and(|e| e.id == id) {
                if let Some(mut session) = entry.take() {
                    let _ = self.poll.registry().deregister(&mut session.socket);
                }
            }
        }
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut SessionIo> {
        self.sessions.get_mut(id.index as usize).and_then(Option::as_mut).filter(|e| e.id == id)
    }
}
