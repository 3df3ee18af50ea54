//! The worker's UDP side: client datagrams on UDP listeners, one connected
//! socket per session towards its upstream node, replies sent back from the
//! listener's socket. The engine decides (session, node, end of session); this
//! file only moves datagrams.
//!
//! Batching (recvmmsg/sendmmsg, `udp_batch.rs`): client datagrams are read many
//! per call; replies from every session are received straight into one reply
//! batch and leave in one sendmmsg per listener at the end of the wake-up. A
//! receive that returns fewer datagrams than it had room for means the socket
//! is drained, which saves the extra call that would only say EAGAIN.

use crate::conn_io::session_token;
use crate::listeners::BoundListener;
use crate::udp_batch::Batch;
use crate::worker::Worker;
use mio::net::UdpSocket;
use mio::{Interest, Token};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use strait_engine::{ListenerId, SessionId};

/// Datagrams handled per socket per wake-up before other sockets get a turn.
const DATAGRAMS_PER_WAKE: usize = 256;
/// Datagrams per batch.
pub const BATCH_SLOTS: usize = crate::udp_batch::BATCH_MAX;

pub struct SessionIo {
    pub id: SessionId,
    pub socket: UdpSocket,
}

/// Replies waiting to leave, and the listener each one leaves from.
pub struct Replies {
    pub batch: Batch,
    pub listener: [u32; BATCH_SLOTS],
}

impl Default for Replies {
    fn default() -> Replies {
        Replies { batch: Batch::default(), listener: [0; BATCH_SLOTS] }
    }
}

impl Worker {
    /// Client datagrams on UDP listener `index`.
    pub(crate) fn on_udp_listener(&mut self, index: usize) {
        let (Some(Some(BoundListener::Udp(socket))), Some(local)) =
            (self.listeners.get(index), self.listener_addr(index))
        else {
            return;
        };
        let fd = socket.as_raw_fd();
        let mut batch = std::mem::take(&mut self.client_batch);
        let mut handled = 0;
        let mut exhausted = false;
        loop {
            batch.clear();
            let n = batch.receive(fd).unwrap_or_else(|e| {
                log::debug!("{}: recvmmsg on {local} failed: {e}", self.name);
                0
            });
            for slot in 0..n {
                let Some(peer) = batch.source(slot) else { continue };
                // On a wildcard listener the datagram's own destination is the server address.
                let local = batch.destination_ip(slot).map_or(local, |ip| SocketAddr::new(ip, local.port()));
                let data = batch.datagram(slot);
                let now = self.clock.now();
                let Ok(session) =
                    self.engine.handle_client_datagram(now, ListenerId(index as u32), local, peer, data.len())
                else {
                    continue;
                };
                // A new session's UdpConnect is queued: its socket must exist before the send.
                self.perform_actions();
                let Some(entry) = self.session_mut(session) else { continue };
                match entry.socket.send(data) {
                    Ok(_) => {}
                    // The socket's send buffer is full: UDP may drop, and does.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => {
                        self.engine.handle_upstream_error(now, session);
                        self.perform_actions();
                    }
                }
            }
            handled += n;
            if n < batch.capacity() {
                break;
            }
            if handled >= DATAGRAMS_PER_WAKE {
                exhausted = true;
                break;
            }
        }
        self.client_batch = batch;
        if exhausted {
            self.again.push_back(Token(index));
        }
    }

    /// Replies on a session's upstream socket, received into the reply batch.
    pub(crate) fn on_session(&mut self, slot: usize) {
        let mut replies = std::mem::take(&mut self.replies);
        let mut handled = 0;
        let mut exhausted = false;
        loop {
            let Some(Some(entry)) = self.sessions.get(slot) else { break };
            let (id, fd) = (entry.id, entry.socket.as_raw_fd());
            if replies.batch.len() == replies.batch.capacity() {
                self.send_replies(&mut replies);
            }
            let before = replies.batch.len();
            let free = replies.batch.capacity() - before;
            let now = self.clock.now();
            let n = match replies.batch.receive(fd) {
                Ok(n) => n,
                // ECONNREFUSED: the node answered with ICMP port unreachable.
                Err(_) => {
                    self.engine.handle_upstream_error(now, id);
                    self.perform_actions();
                    break;
                }
            };
            for s in before..before + n {
                let len = replies.batch.datagram(s).len();
                let reply = self.engine.handle_upstream_datagram(now, id, len);
                replies.batch.set_destination(s, reply.map(|r| r.peer));
                // Answer from the address the client sent to (wildcard listeners only: a
                // listener bound to one address already sends from it).
                let wildcard = reply.is_some_and(|r| {
                    self.listener_addr(r.listener.0 as usize).is_some_and(|a| a.ip().is_unspecified())
                });
                replies.batch.set_source_ip(s, reply.filter(|_| wildcard).map(|r| r.local.ip()));
                replies.listener[s] = reply.map_or(0, |r| r.listener.0);
            }
            // proxy_responses may have ended the session: its socket closes here.
            self.perform_actions();
            handled += n;
            if n < free {
                break;
            }
            if handled >= DATAGRAMS_PER_WAKE {
                exhausted = true;
                break;
            }
        }
        self.replies = replies;
        if exhausted {
            if let Some(Some(entry)) = self.sessions.get(slot) {
                self.again.push_back(session_token(entry.id));
            }
        }
    }

    /// Sends every waiting reply, one sendmmsg per listener.
    pub(crate) fn flush_replies(&mut self) {
        if self.replies.batch.is_empty() {
            return;
        }
        let mut replies = std::mem::take(&mut self.replies);
        self.send_replies(&mut replies);
        self.replies = replies;
    }

    fn send_replies(&mut self, replies: &mut Replies) {
        let filled = replies.batch.len();
        // One sendmmsg per distinct listener, found without allocating (a batch has at most 32 slots).
        for slot in 0..filled {
            let listener = replies.listener[slot];
            if replies.listener[..slot].contains(&listener) {
                continue;
            }
            if let Some(Some(BoundListener::Udp(socket))) = self.listeners.get(listener as usize) {
                replies.batch.send(socket.as_raw_fd(), |s| replies.listener[s] == listener);
            }
        }
        replies.batch.clear();
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
                // Dropping closes the socket, which also takes it out of the epoll set.
                *entry = None;
            }
        }
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut SessionIo> {
        self.sessions.get_mut(id.index as usize).and_then(Option::as_mut).filter(|e| e.id == id)
    }
}
