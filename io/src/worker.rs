//! One worker thread: a mio `Poll`, its own listeners, one `Engine`.

use crate::access_log::AccessLog;
use crate::clock::Clock;
use crate::congestion::{is_loopback_peer, LoopbackCongestion};
use crate::conn_io::{conn_token, token_conn, ConnIo, SESSION_TOKEN_BASE, WAKER_TOKEN};
use crate::listeners::BoundListener;
use crate::probe::{ProbeIo, PROBE_TOKEN_BASE};
use crate::splice::PipePool;
use crate::udp::{Replies, SessionIo, BATCH_SLOTS};
use crate::udp_batch::Batch;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;
use strait_engine::{Action, ConnId, ConnectError, Engine, ListenerId, Side, Snapshot, Time};

/// Messages from the rest of the process.
pub enum Control {
    Snapshot(Arc<Snapshot>),
    /// Stop accepting; let connections finish within `drain`, then exit.
    Shutdown {
        drain: Duration,
    },
    /// Reopen the access log at its path (after rotation).
    ReopenLogs,
}

/// Reads and writes per connection per wake-up before others get a turn.
const PUMP_ROUNDS_MAX: usize = 16;
/// Accepts per listener per wake-up before others get a turn.
const ACCEPTS_PER_WAKE: usize = 128;
/// Splice pipes one worker may hold at once (two descriptors each).
const PIPES_MAX: usize = 4096;
/// readiness events fetched per poll call.
const EVENTS_CAPACITY: usize = 1024;

pub struct Worker {
    pub(crate) name: String,
    pub(crate) poll: Poll,
    pub(crate) engine: Engine,
    pub(crate) clock: Clock,
    pub(crate) listeners: Vec<Option<BoundListener>>,
    /// Each listener's bound address, read once (not a getsockname per accept).
    listener_addrs: Vec<Option<std::net::SocketAddr>>,
    pub(crate) conns: Vec<Option<ConnIo>>,
    /// By connection slot: the tag the slot's next socket registration gets.
    next_tags: Vec<u16>,
    /// Splice pipes, held only by directions with bytes in flight.
    pub(crate) pipes: PipePool,
    pub(crate) sessions: Vec<Option<SessionIo>>,
    pub(crate) probes: Vec<Option<ProbeIo>>,
    /// Client datagrams, read many per recvmmsg.
    pub(crate) client_batch: Batch,
    /// Upstream replies waiting for the end of the wake-up (one sendmmsg per listener).
    pub(crate) replies: Replies,
    control: Receiver<Control>,
    /// Connections, sessions and listeners that used up their budget and still have work.
    pub(crate) again: VecDeque<Token>,
    drain_deadline: Option<Time>,
    loopback_congestion: LoopbackCongestion,
    access_log: Option<AccessLog>,
}

impl Worker {
    pub fn new(
        name: String,
        poll: Poll,
        engine: Engine,
        mut listeners: Vec<BoundListener>,
        control: Receiver<Control>,
        loopback_congestion: LoopbackCongestion,
        access_log: Option<AccessLog>,
    ) -> io::Result<Worker> {
        for (index, listener) in listeners.iter_mut().enumerate() {
            match listener {
                BoundListener::Tcp(l) => poll.registry().register(l, Token(index), Interest::READABLE)?,
                BoundListener::Udp(s) => poll.registry().register(s, Token(index), Interest::READABLE)?,
            }
        }
        Ok(Worker {
            name,
            poll,
            engine,
            clock: Clock::new(),
            listener_addrs: listeners
                .iter()
                .map(|l| match l {
                    BoundListener::Tcp(l) => l.local_addr().ok(),
                    BoundListener::Udp(s) => s.local_addr().ok(),
                })
                .collect(),
            listeners: listeners.into_iter().map(Some).collect(),
            conns: Vec::new(),
            next_tags: Vec::new(),
            pipes: PipePool::new(PIPES_MAX),
            sessions: Vec::new(),
            probes: Vec::new(),
            client_batch: Batch::new(BATCH_SLOTS),
            replies: Replies { batch: Batch::new(BATCH_SLOTS), listener: [0; BATCH_SLOTS] },
            control,
            again: VecDeque::new(),
            drain_deadline: None,
            loopback_congestion,
            access_log,
        })
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        // Swapped with `again` each wake-up, so neither deque reallocates.
        let mut retry = VecDeque::new();
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                log::error!("{}: poll failed: {e}; worker exits", self.name);
                return;
            }
            std::mem::swap(&mut retry, &mut self.again);
            for event in events.iter() {
                self.on_event(event);
            }
            for token in retry.drain(..) {
                self.on_ready(token);
            }
            self.flush_replies();
            let now = self.clock.now();
            self.engine.handle_timeout(now);
            self.perform_actions();
            self.write_access_log(now);
            if self.drain_deadline.is_some() {
                if self.engine.connection_count() == 0 {
                    log::info!("{}: drained, exiting", self.name);
                    return;
                }
                if self.drain_deadline.is_some_and(|d| now >= d) {
                    log::warn!("{}: drain timeout, closing {} connections", self.name, self.engine.connection_count());
                    self.engine.abort_all(now);
                    self.perform_actions();
                    self.write_access_log(now);
                    return;
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.clock.now();
        let flush = self.access_log.as_ref().and_then(AccessLog::flush_deadline);
        let deadlines = [self.engine.poll_timeout(), self.drain_deadline, flush];
        // Round up to the next millisecond: epoll's resolution; waking early would spin.
        deadlines.into_iter().flatten().min().map(|t| now.until(t) + Duration::from_micros(999))
    }

    fn on_event(&mut self, event: &mio::event::Event) {
        let token = event.token();
        if token == WAKER_TOKEN {
            self.on_control();
            return;
        }
        if token.0 >= self.listeners.len() && token.0 < SESSION_TOKEN_BASE {
            let (slot, side, tag) = token_conn(self.listeners.len(), token);
            let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
            if conn.tags[side.index()] != tag {
                // For a socket replaced or closed since this event was fetched.
                return;
            }
            let ready = &mut conn.ready[side.index()];
            ready.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
            ready.read_closed |= event.is_read_closed() || event.is_error();
            ready.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
        }
        self.on_ready(token);
    }

    fn on_ready(&mut self, token: Token) {
        if token.0 >= PROBE_TOKEN_BASE {
            self.on_probe(token.0 - PROBE_TOKEN_BASE);
        } else if token.0 >= SESSION_TOKEN_BASE {
            self.on_session(token.0 - SESSION_TOKEN_BASE);
        } else if token.0 < self.listeners.len() {
            match self.listeners[token.0] {
                Some(BoundListener::Tcp(_)) => self.accept(token.0),
                Some(BoundListener::Udp(_)) => self.on_udp_listener(token.0),
                None => {}
            }
        } else {
            let (slot, _, _) = token_conn(self.listeners.len(), token);
            self.pump(slot);
        }
    }

    fn on_control(&mut self) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Snapshot(snapshot)) => {
                    let now = self.clock.now();
                    log::debug!("{}: config version {}", self.name, snapshot.version);
                    self.engine.handle_snapshot(now, snapshot);
                }
                Ok(Control::Shutdown { drain }) => self.begin_drain(drain),
                Ok(Control::ReopenLogs) => {
                    if let Some(log) = self.access_log.as_mut() {
                        log.reopen();
                    }
                }
                Err(TryRecvError::Empty) => return,
                // The process is going away without a proper shutdown.
                Err(TryRecvError::Disconnected) => {
                    self.begin_drain(Duration::ZERO);
                    return;
                }
            }
        }
    }

    fn begin_drain(&mut self, drain: Duration) {
        if self.drain_deadline.is_some() {
            return;
        }
        for listener in &mut self.listeners {
            match listener {
                Some(BoundListener::Tcp(l)) => drop(self.poll.registry().deregister(l)),
                Some(BoundListener::Udp(s)) => drop(self.poll.registry().deregister(s)),
                None => {}
            }
            // Dropping closes the socket: the kernel stops queueing connections for us.
            *listener = None;
        }
        self.engine.begin_shutdown();
        self.drain_deadline = Some(self.clock.now() + drain);
        log::info!("{}: stopped accepting; draining {} connections", self.name, self.engine.connection_count());
    }

    fn accept(&mut self, index: usize) {
        let bound_addr = self.listener_addr(index);
        for _ in 0..ACCEPTS_PER_WAKE {
            let Some(Some(BoundListener::Tcp(listener))) = self.listeners.get(index) else {
                return;
            };
            let (stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the connection queued and try later.
                    log::error!("{}: accept failed: {e}", self.name);
                    return;
                }
            };
            // A listener bound to one address needs no getsockname per connection.
            let local = match bound_addr {
                Some(addr) if !addr.ip().is_unspecified() => addr,
                _ => match stream.local_addr() {
                    Ok(addr) => addr,
                    Err(_) => continue,
                },
            };
            let now = self.clock.now();
            let Ok(id) = self.engine.handle_accept(now, ListenerId(index as u32), local, peer) else {
                // Refused (no route, limit): closing without writing a byte.
                continue;
            };
            // TCP_NODELAY comes from the listener (accepted sockets inherit it on Linux).
            let tag = self.next_tag(id.index as usize);
            let mut conn = ConnIo::new(id, stream, tag, is_loopback_peer(&peer));
            let token = conn_token(self.listeners.len(), id, Side::Client, tag);
            let client = conn.socket(Side::Client).expect("a new connection has its client socket");
            if let Err(e) = self.poll.registry().register(client, token, Interest::READABLE | Interest::WRITABLE) {
                log::error!("{}: register failed: {e}", self.name);
                self.engine.handle_reset(now, id, Side::Client);
            }
            let slot = id.index as usize;
            if slot >= self.conns.len() {
                self.conns.resize_with(slot + 1, || None);
            }
            self.conns[slot] = Some(conn);
            self.perform_actions();
        }
        // Budget used up with connections possibly still queued.
        self.again.push_back(Token(index));
    }

    /// Moves bytes on one connection until nothing moves or the budget is spent.
    fn pump(&mut self, slot: usize) {
        for _ in 0..PUMP_ROUNDS_MAX {
            let Some(Some(conn)) = self.conns.get_mut(slot) else {
                return;
            };
            let id = conn.id;
            if conn.connecting {
                if !conn.ready[Side::Upstream.index()].writable && !conn.ready[Side::Upstream.index()].readable {
                    // Still connecting; the client side may still be read into the engine.
                } else {
                    self.finish_connect(slot);
                    continue;
                }
            }
            let spliced = self.conns.get(slot).and_then(Option::as_ref).is_some_and(|c| c.spliced);
            let progress = if spliced { self.pump_spliced_once(slot, id) } else { self.pump_once(slot, id) };
            self.perform_actions();
            if !progress {
                return;
            }
        }
        let listeners = self.listeners.len();
        if let Some(Some(conn)) = self.conns.get(slot) {
            self.again.push_back(conn_token(listeners, conn.id, Side::Client, conn.tags[Side::Client.index()]));
        }
    }

    /// One read and one write attempt per side. Returns whether anything moved.
    fn pump_once(&mut self, slot: usize, id: ConnId) -> bool {
        let now = self.clock.now();
        let mut progress = false;
        for side in Side::BOTH {
            let Some(Some(conn)) = self.conns.get_mut(slot) else {
                return false;
            };
            if conn.ready[side.index()].readable {
                if let (Some(socket), Some(buf)) = (conn.sockets[side.index()].as_mut(), self.engine.read_buf(id, side))
                {
                    let offered = buf.len();
                    match socket.read(buf) {
                        Ok(n) => {
                            // A read that leaves room drained the socket: with epoll's
                            // edge trigger, any byte arriving later raises a new event,
                            // so the read that would only say EAGAIN is skipped. Not
                            // once the peer closed: its FIN, queued behind the bytes,
                            // raises no new event and must still be read (as 0).
                            if n < offered && !conn.ready[side.index()].read_closed {
                                conn.ready[side.index()].readable = false;
                            }
                            self.engine.handle_read(now, id, side, n);
                            progress = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            conn.ready[side.index()].readable = false;
                            self.engine.handle_read_blocked(id, side);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                        Err(_) => {
                            self.engine.handle_reset(now, id, side);
                            return true;
                        }
                    }
                }
            }
            let Some(Some(conn)) = self.conns.get_mut(slot) else {
                return progress;
            };
            if conn.ready[side.index()].writable {
                let data = self.engine.write_buf(id, side);
                if let (false, Some(socket)) = (data.is_empty(), conn.sockets[side.index()].as_mut()) {
                    match socket.write(data) {
                        Ok(n) => {
                            self.engine.handle_written(now, id, side, n);
                            progress = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => conn.ready[side.index()].writable = false,
                        Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                        Err(_) => {
                            self.engine.handle_reset(now, id, side);
                            return true;
                        }
                    }
                }
            }
        }
        progress
    }

    /// The upstream socket of a connecting connection became ready: find out
    /// whether the connect succeeded.
    fn finish_connect(&mut self, slot: usize) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return;
        };
        let id = conn.id;
        let Some(socket) = conn.socket(Side::Upstream) else {
            return;
        };
        // Events for this socket carry its own tag (stale ones were dropped), and
        // epoll reports a connecting socket only once the connect is decided:
        // no error means connected, without a getpeername to make sure.
        let outcome = match socket.take_error() {
            Ok(Some(e)) | Err(e) => Err(connect_error(&e)),
            Ok(None) => Ok(()),
        };
        conn.connecting = false;
        if outcome.is_err() {
            conn.ready[Side::Upstream.index()] = Default::default();
        }
        let now = self.clock.now();
        self.engine.handle_connected(now, id, outcome);
        self.perform_actions();
    }

    pub(crate) fn perform_actions(&mut self) {
        let mut next = None;
        while let Some(action) = next.take().or_else(|| self.engine.poll_action()) {
            match action {
                Action::Connect { conn, addr } => self.connect(conn, addr),
                Action::Shutdown { conn, side } => {
                    // A shutdown right before a clean close of the same connection is
                    // redundant: close sends the FIN (both peers are done, nothing is unread).
                    next = self.engine.poll_action();
                    if matches!(next, Some(Action::Close { conn: c, reset: false }) if c == conn) {
                        continue;
                    }
                    if let Some(socket) = self.conn_mut(conn).and_then(|c| c.socket(side)) {
                        let _ = socket.shutdown(Shutdown::Write);
                    }
                }
                Action::Close { conn, reset } => self.close(conn, reset),
                Action::Splice { conn } => {
                    let slot = self.conns.get_mut(conn.index as usize).and_then(Option::as_mut);
                    if let Some(c) = slot.filter(|c| c.id == conn) {
                        c.spliced = true;
                        // A streaming connection: worth a system call per local side.
                        for (socket, _) in c.sockets.iter().zip(c.loopback).filter(|(_, local)| *local) {
                            if let Some(socket) = socket {
                                self.loopback_congestion.apply(socket);
                            }
                        }
                    }
                }
                Action::UdpConnect { session, addr } => self.udp_connect(session, addr),
                Action::UdpClose { session } => self.udp_close(session),
                Action::Probe { probe, addr } => self.probe_start(probe, addr),
                Action::ProbeCancel { probe } => self.probe_cancel(probe),
            }
        }
    }

    fn connect(&mut self, id: ConnId, addr: std::net::SocketAddr) {
        let tag = self.next_tag(id.index as usize);
        let token = conn_token(self.listeners.len(), id, Side::Upstream, tag);
        let registry = self.poll.registry();
        let Some(conn) = self.conns.get_mut(id.index as usize).and_then(Option::as_mut).filter(|c| c.id == id) else {
            return;
        };
        if let Some(mut old) = conn.sockets[Side::Upstream.index()].take() {
            let _ = registry.deregister(&mut old);
        }
        conn.ready[Side::Upstream.index()] = Default::default();
        conn.tags[Side::Upstream.index()] = tag;
        conn.loopback[Side::Upstream.index()] = is_loopback_peer(&addr);
        let result = mio::net::TcpStream::connect(addr).and_then(|mut stream| {
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                conn.sockets[Side::Upstream.index()] = Some(stream);
                conn.connecting = true;
            }
            Err(e) => {
                conn.connecting = false;
                let now = self.clock.now();
                self.engine.handle_connected(now, id, Err(connect_error(&e)));
            }
        }
    }

    fn close(&mut self, id: ConnId, reset: bool) {
        let Some(entry) = self.conns.get_mut(id.index as usize) else {
            return;
        };
        if entry.as_ref().is_none_or(|c| c.id != id) {
            return;
        }
        let conn = entry.take().expect("checked above");
        for pipe in conn.pipes.into_iter().flatten() {
            self.pipes.give_back(pipe);
        }
        // No epoll_ctl(DEL): closing a descriptor removes it from the epoll set.
        for socket in conn.sockets.into_iter().flatten() {
            if reset {
                // SO_LINGER 0: close sends RST, so the peer sees an abort, not a clean end.
                let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
            }
        }
    }

    /// Writes the lines of the connections and sessions that ended, and flushes
    /// the buffered ones that have waited long enough.
    fn write_access_log(&mut self, now: Time) {
        let Some(log) = self.access_log.as_mut() else { return };
        while let Some(record) = self.engine.poll_session_record() {
            log.write(now, &record);
        }
        if log.flush_deadline().is_some_and(|due| now >= due) {
            log.flush();
        }
    }

    /// A fresh tag for a socket about to be registered in connection slot `slot`.
    fn next_tag(&mut self, slot: usize) -> u16 {
        if slot >= self.next_tags.len() {
            self.next_tags.resize(slot + 1, 0);
        }
        let tag = self.next_tags[slot];
        self.next_tags[slot] = tag.wrapping_add(1);
        tag
    }

    pub(crate) fn listener_addr(&self, index: usize) -> Option<std::net::SocketAddr> {
        self.listener_addrs.get(index).copied().flatten()
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut ConnIo> {
        self.conns.get_mut(id.index as usize).and_then(Option::as_mut).filter(|c| c.id == id)
    }
}

pub(crate) fn connect_error(e: &io::Error) -> ConnectError {
    match e.kind() {
        ErrorKind::ConnectionRefused => ConnectError::Refused,
        ErrorKind::TimedOut => ConnectError::TimedOut,
        ErrorKind::ConnectionReset => ConnectError::Reset,
        _ => ConnectError::Other,
    }
}
