//! The per-worker engine: owns TCP connections, UDP sessions, timers, buffers,
//! balancer state and the current config snapshot. See the crate docs for the
//! call order.

use crate::action::{Action, CloseReason, ConnectError, DatagramDrop, ProbeId, Refusal, ReplyTo};
use crate::balancer::{Balancers, KeySource};
use crate::buffer::BufferPool;
use crate::config::{ListenSpec, Protocol};
use crate::health::prober::Prober;
use crate::health::HealthEvent;
use crate::ids::{ConnId, ListenerId, SessionId, Side};
use crate::rng::Rng;
use crate::router::MatchInput;
use crate::session_record::{Records, SessionRecord};
use crate::snapshot::{ResolvedUpstream, Snapshot};
use crate::tcp::conn::{Ctx, ListenTls, Outcome, TcpConn};
use crate::time::Time;
use crate::udp::session::{SessionTable, UdpSession};
use slab::Slab;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Limits and knobs of one engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Seeds every random choice the engine makes.
    pub seed: u64,
    /// Bytes per direction per connection while data is in flight.
    pub buffer_bytes: usize,
    /// Proxied TCP connections this engine holds at most.
    pub max_connections: usize,
    /// Drained buffers kept for reuse at most.
    pub spare_buffers_max: usize,
    /// UDP sessions this engine holds at most (each costs the driver a socket).
    pub udp_sessions_max: usize,
    /// Idle timeout of a UDP session whose upstream sets no `timeout`.
    pub udp_idle_timeout: Duration,
    /// Replies after which a UDP session ends (nginx's `proxy_responses`; 1 suits
    /// DNS); 0 = unlimited. An upstream's `proxy_responses` overrides it.
    pub udp_proxy_responses: u32,
    /// Run active health probes from this engine (one worker per process does).
    pub run_active_checks: bool,
    /// The driver can move plain TCP bytes itself (splice): the engine grants
    /// it per connection with `Action::Splice` once nothing needs its buffers.
    pub driver_can_splice: bool,
    /// `strait.tls.handshake_timeout`: from accept to a finished client
    /// handshake (ClientHello peek included), and from connect to a finished
    /// upstream handshake.
    pub tls_handshake_timeout: Duration,
    /// `apisix.ssl.fallback_sni`: the SNI assumed when a TLS client sends none
    /// (certificate choice and routing; spec §1.7). Not applied to plaintext
    /// connections (spec §8.8).
    pub fallback_sni: Option<String>,
    /// Collect a `SessionRecord` per finished connection and session (the access
    /// log); the driver drains them with `poll_session_record`.
    pub session_records: bool,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            seed: 0,
            buffer_bytes: 64 * 1024,
            max_connections: 10_620,
            spare_buffers_max: 256,
            udp_sessions_max: 16_384,
            udp_idle_timeout: Duration::from_secs(600),
            udp_proxy_responses: 0,
            run_active_checks: true,
            driver_can_splice: false,
            tls_handshake_timeout: crate::tls::DEFAULT_HANDSHAKE_TIMEOUT,
            fallback_sni: None,
            session_records: false,
        }
    }
}

/// Counters a worker can report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub accepted: u64,
    pub refused_no_route: u64,
    pub refused_no_upstream: u64,
    pub refused_limit: u64,
    pub connect_failures: u64,
    pub closed: u64,
    pub udp_sessions_opened: u64,
    pub udp_sessions_closed: u64,
    pub udp_datagrams_dropped: u64,
}

/// Who a timer entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerOwner {
    Tcp(u32),
    Udp(u32),
    Probe(u32),
}

pub struct Engine {
    listeners: Vec<ListenSpec>,
    snapshot: Arc<Snapshot>,
    config: EngineConfig,
    conns: Slab<TcpConn>,
    /// Generation of every connection slot ever used, bumped when it is freed.
    generations: Vec<u32>,
    sessions: SessionTable,
    /// One entry per live connection and session: (deadline, owner). Exact, never stale.
    timers: BTreeSet<(Time, TimerOwner)>,
    /// The deadline each connection slot is filed under in `timers`.
    conn_armed: Vec<Option<Time>>,
    /// The deadline each session slot is filed under in `timers`.
    session_armed: Vec<Option<Time>>,
    prober: Prober,
    /// The deadline each probe target is filed under in `timers`.
    probe_armed: Vec<Option<Time>>,
    actions: VecDeque<Action>,
    pool: BufferPool,
    balancers: Balancers,
    rng: Rng,
    accepting: bool,
    stats: EngineStats,
    records: Records,
}

impl Engine {
    pub fn new(listeners: Vec<ListenSpec>, snapshot: Arc<Snapshot>, config: EngineConfig) -> Engine {
        let pool = BufferPool::new(config.buffer_bytes, config.spare_buffers_max);
        let session_records = config.session_records;
        let mut engine = Engine {
            listeners,
            snapshot,
            rng: Rng::new(config.seed),
            config,
            conns: Slab::new(),
            generations: Vec::new(),
            sessions: SessionTable::default(),
            timers: BTreeSet::new(),
            conn_armed: Vec::new(),
            session_armed: Vec::new(),
            prober: Prober::default(),
            probe_armed: Vec::new(),
            actions: VecDeque::new(),
            pool,
            balancers: Balancers::default(),
            accepting: true,
            stats: EngineStats::default(),
            records: Records::new(session_records),
        };
        // Targets of the first config are probed at the first `handle_timeout`.
        engine.sync_probes(Time::ZERO);
        engine
    }

    // ---- TCP ---------------------------------------------------------------

    /// A TCP connection was accepted on `listener` (`local` = the address it
    /// arrived on, `peer` = the client). Routes it and asks for the upstream
    /// connect at once. On `Err` the driver closes the socket without writing.
    pub fn handle_accept(
        &mut self,
        now: Time,
        listener: ListenerId,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<ConnId, Refusal> {
        let result = self.accept(now, listener, local, peer);
        match result {
            Ok(_) => self.stats.accepted += 1,
            Err(Refusal::NoRoute) => {
                self.stats.refused_no_route += 1;
                log::info!("{peer} -> {local}: not hit any route");
            }
            Err(Refusal::NoUpstream) => self.stats.refused_no_upstream += 1,
            Err(Refusal::TooManyConnections) => {
                self.stats.refused_limit += 1;
                log::warn!(
                    "{peer} -> {local}: refused, {} connections is this worker's limit",
                    self.config.max_connections
                );
            }
            Err(Refusal::NotAccepting) => {}
        }
        if let Err(refusal) = result {
            self.records.push_with(|| SessionRecord {
                protocol: Protocol::Tcp,
                peer,
                local,
                route_id: String::new(),
                upstream: None,
                status: refusal.status(),
                bytes_from_client: 0,
                bytes_from_upstream: 0,
                duration: Duration::ZERO,
            });
        }
        self.check_invariants();
        result
    }

    fn accept(
        &mut self,
        now: Time,
        listener: ListenerId,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<ConnId, Refusal> {
        let spec = self.listening_on(listener, Protocol::Tcp).ok_or(Refusal::NotAccepting)?;
        let listen_tls = match (spec.tls, spec.tls_passthrough) {
            (false, false) => ListenTls::Plain,
            (true, false) => ListenTls::Terminate,
            (false, true) => ListenTls::Passthrough,
            (true, true) => ListenTls::Mixed,
        };
        if self.conns.len() >= self.config.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        if listen_tls != ListenTls::Plain {
            return Ok(self.accept_tls(now, listener, local, peer, listen_tls));
        }
        let (route_id, upstream) = match self.route(local, peer) {
            Ok(found) => found,
            Err(DatagramDrop::NoRoute) => return Err(Refusal::NoRoute),
            Err(_) => return Err(Refusal::NoUpstream),
        };
        let id = self.next_conn_id();
        match TcpConn::start(&mut self.ctx(now), id, listener, local, peer, route_id, upstream) {
            Ok(conn) => {
                let index = self.conns.insert(conn);
                debug_assert_eq!(index, id.index as usize, "a connection lands in the slot its id names");
                self.rearm_conn(index);
                Ok(id)
            }
            Err(reason) => {
                log::error!("{peer} -> {local}: no valid upstream node ({reason:?})");
                Err(Refusal::NoUpstream)
            }
        }
    }

    /// A connection on a `tls` / `tls_passthrough` listener: routed once its
    /// ClientHello is read, so nothing is connected yet.
    fn accept_tls(
        &mut self,
        now: Time,
        listener: ListenerId,
        local: SocketAddr,
        peer: SocketAddr,
        listen: ListenTls,
    ) -> ConnId {
        let id = self.next_conn_id();
        let conn = TcpConn::hello(&mut self.ctx(now), listener, local, peer, listen);
        let index = self.conns.insert(conn);
        debug_assert_eq!(index, id.index as usize, "a connection lands in the slot its id names");
        self.rearm_conn(index);
        id
    }

    /// The id the next connection gets: slab's next slot and that slot's generation.
    fn next_conn_id(&mut self) -> ConnId {
        let index = self.conns.vacant_key();
        if index >= self.generations.len() {
            self.generations.resize(index + 1, 0);
            self.conn_armed.resize(index + 1, None);
        }
        ConnId { index: index as u32, generation: self.generations[index] }
    }

    /// What a connection's transitions may touch besides the connection.
    fn ctx(&mut self, now: Time) -> Ctx<'_> {
        Ctx {
            now,
            pool: &mut self.pool,
            actions: &mut self.actions,
            balancers: &mut self.balancers,
            rng: &mut self.rng,
            snapshot: &self.snapshot,
            config: &self.config,
            records: &mut self.records,
        }
    }

    /// The upstream connect asked for by `Action::Connect` finished.
    pub fn handle_connected(&mut self, now: Time, conn: ConnId, result: Result<(), ConnectError>) {
        self.with_conn(now, conn, |c, ctx| match result {
            _ if c.is_streaming() => Outcome::Open,
            Ok(()) => c.on_connected(ctx, conn),
            Err(error) => c.on_connect_failed(ctx, conn, error),
        });
        if result.is_err() {
            self.stats.connect_failures += 1;
        }
    }

    /// Free space to read `side`'s bytes into; `None` = do not read that side
    /// now (back-pressure, FIN already seen, or not connected yet).
    pub fn read_buf(&mut self, conn: ConnId, side: Side) -> Option<&mut [u8]> {
        let index = self.live_conn(conn)?;
        self.conns[index].read_buf(&mut self.pool, side)
    }

    /// `n` bytes were read from `side` into `read_buf`; `n == 0` is a FIN.
    pub fn handle_read(&mut self, now: Time, conn: ConnId, side: Side, n: usize) {
        self.with_conn(now, conn, |c, ctx| c.on_read(ctx, conn, side, n));
    }

    /// A read of `side` would block.
    pub fn handle_read_blocked(&mut self, conn: ConnId, side: Side) {
        if let Some(index) = self.live_conn(conn) {
            self.conns[index].on_read_blocked(&mut self.pool, side);
        }
    }

    /// Bytes waiting to be written to `side` (empty: nothing to write).
    pub fn write_buf(&self, conn: ConnId, side: Side) -> &[u8] {
        match self.live_conn(conn) {
            Some(index) => self.conns[index].write_buf(side),
            None => &[],
        }
    }

    /// `n` bytes of `write_buf(side)` were written to `side`.
    pub fn handle_written(&mut self, now: Time, conn: ConnId, side: Side, n: usize) {
        self.with_conn(now, conn, |c, ctx| c.on_written(ctx, conn, side, n));
    }

    /// `n` bytes moved from `side` to the other side by the driver itself
    /// (after `Action::Splice`).
    pub fn handle_spliced(&mut self, now: Time, conn: ConnId, side: Side, n: usize) {
        if let Some(index) = self.live_conn(conn) {
            self.conns[index].on_spliced(now, side, n);
        }
    }

    /// `side` was reset by its peer, or reading or writing it failed.
    pub fn handle_reset(&mut self, now: Time, conn: ConnId, side: Side) {
        self.with_conn(now, conn, |c, ctx| c.on_reset(ctx, conn, side));
    }

    // ---- UDP ---------------------------------------------------------------

    /// A datagram of `len` bytes arrived on UDP `listener` from `peer`
    /// (`local` = the address it was sent to). On `Ok` the driver sends the
    /// datagram through the session's upstream socket, after performing the
    /// queued actions (a new session queues its `UdpConnect` first). On `Err`
    /// it is dropped.
    pub fn handle_client_datagram(
        &mut self,
        now: Time,
        listener: ListenerId,
        local: SocketAddr,
        peer: SocketAddr,
        len: usize,
    ) -> Result<SessionId, DatagramDrop> {
        let result = self.client_datagram(now, listener, local, peer, len);
        if let Err(reason) = result {
            self.stats.udp_datagrams_dropped += 1;
            log::debug!("{peer} -> {local}: datagram dropped ({reason:?})");
        }
        self.check_invariants();
        result
    }

    fn client_datagram(
        &mut self,
        now: Time,
        listener: ListenerId,
        local: SocketAddr,
        peer: SocketAddr,
        len: usize,
    ) -> Result<SessionId, DatagramDrop> {
        if let Some(id) = self.sessions.find(listener, peer) {
            let index = id.index as usize;
            let session = &mut self.sessions.slots[index];
            session.last_activity = now;
            session.datagrams_up += 1;
            session.bytes_up += len as u64;
            return Ok(id);
        }
        self.listening_on(listener, Protocol::Udp).ok_or(DatagramDrop::NotAccepting)?;
        if self.sessions.len() >= self.config.udp_sessions_max {
            log::warn!(
                "{peer} -> {local}: datagram dropped, {} sessions is this worker's limit",
                self.config.udp_sessions_max
            );
            return Err(DatagramDrop::TooManySessions);
        }
        let (route_id, upstream) = self.route(local, peer)?;
        let pick = self.balancers.pick(&upstream, &[], KeySource { local, peer }, &mut self.rng).ok_or_else(|| {
            log::error!("stream route [{route_id}]: no valid upstream node");
            DatagramDrop::NoUpstream
        })?;
        let node = pick.node;
        let idle_timeout = match upstream.config.timeout {
            Some(_) => upstream.config.idle_timeout(),
            None => self.config.udp_idle_timeout,
        };
        let responses = upstream.config.proxy_responses.unwrap_or(self.config.udp_proxy_responses);
        let addr = upstream.addrs[node];
        let id = self.sessions.insert(UdpSession {
            listener,
            peer,
            local,
            upstream,
            node,
            last_activity: now,
            idle_timeout,
            responses_left: (responses > 0).then_some(responses),
            datagrams_up: 1,
            datagrams_down: 0,
            route_id,
            started: now,
            bytes_up: len as u64,
            bytes_down: 0,
        });
        let index = id.index as usize;
        if index >= self.session_armed.len() {
            self.session_armed.resize(index + 1, None);
        }
        self.stats.udp_sessions_opened += 1;
        self.actions.push_back(Action::UdpConnect { session: id, addr });
        self.rearm_session(index);
        Ok(id)
    }

    /// A datagram of `len` bytes arrived on `session`'s upstream socket. Returns
    /// where to send it (out of the listener's socket, to the client), or `None`
    /// for a stale session.
    pub fn handle_upstream_datagram(&mut self, now: Time, session: SessionId, len: usize) -> Option<ReplyTo> {
        let index = self.sessions.live(session)?;
        let entry = &mut self.sessions.slots[index];
        entry.last_activity = now;
        entry.datagrams_down += 1;
        entry.bytes_down += len as u64;
        let reply = ReplyTo { listener: entry.listener, peer: entry.peer, local: entry.local };
        if let Some(left) = entry.responses_left.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.close_session(now, index, CloseReason::Finished);
            }
        }
        self.check_invariants();
        Some(reply)
    }

    /// Sending to or receiving from `session`'s upstream failed (ICMP port
    /// unreachable shows as ECONNREFUSED): the session ends, so the client's
    /// next datagram picks a node afresh.
    pub fn handle_upstream_error(&mut self, now: Time, session: SessionId) {
        if let Some(index) = self.sessions.live(session) {
            let entry = &self.sessions.slots[index];
            log::warn!(
                "udp session {} -> {}: upstream error, session ends",
                entry.peer,
                entry.upstream.addrs[entry.node]
            );
            if let (Some(node), Some(checks)) = (entry.upstream.health.get(entry.node), &entry.upstream.config.checks) {
                node.report(HealthEvent::TcpFailure, checks.passive_thresholds());
            }
            self.close_session(now, index, CloseReason::UpstreamUnreachable);
        }
        self.check_invariants();
    }

    /// Ends a UDP session; `reason` gives its `$status` in the access log.
    fn close_session(&mut self, now: Time, index: usize, reason: CloseReason) {
        let generation = self.sessions.generations[index];
        let session = self.sessions.remove(index);
        self.records.push_with(|| SessionRecord {
            protocol: Protocol::Udp,
            peer: session.peer,
            local: session.local,
            route_id: session.route_id.clone(),
            upstream: session.upstream.addrs.get(session.node).copied(),
            status: reason.status(),
            bytes_from_client: session.bytes_up,
            bytes_from_upstream: session.bytes_down,
            duration: session.started.until(now),
        });
        if let Some(armed) = self.session_armed[index].take() {
            self.timers.remove(&(armed, TimerOwner::Udp(index as u32)));
        }
        log::debug!(
            "udp session {}: closed ({reason:?}), {} datagrams up, {} down",
            session.peer,
            session.datagrams_up,
            session.datagrams_down
        );
        self.stats.udp_sessions_closed += 1;
        self.actions.push_back(Action::UdpClose { session: SessionId { index: index as u32, generation } });
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    // ---- time, config, shutdown --------------------------------------------

    /// Handles every deadline that is due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(&(deadline, owner)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            match owner {
                TimerOwner::Tcp(index) => {
                    let index = index as usize;
                    self.conn_armed[index] = None;
                    if self.conns[index].deadline() > now {
                        // Activity moved the idle deadline: file it again (lazy re-arm
                        // keeps reads and writes free of timer work).
                        self.rearm_conn(index);
                        continue;
                    }
                    let id = ConnId { index: index as u32, generation: self.generations[index] };
                    self.with_conn(now, id, |c, ctx| c.on_deadline(ctx, id));
                }
                TimerOwner::Probe(index) => {
                    let index = index as usize;
                    self.probe_armed[index] = None;
                    self.prober.on_deadline(index, now, &mut self.actions);
                    self.rearm_probe(index);
                }
                TimerOwner::Udp(index) => {
                    let index = index as usize;
                    self.session_armed[index] = None;
                    if self.sessions.slots[index].deadline() > now {
                        self.rearm_session(index);
                    } else {
                        self.close_session(now, index, CloseReason::IdleTimeout);
                    }
                }
            }
        }
        self.check_invariants();
    }

    /// A new config: new connections and sessions use it; established ones keep
    /// the route and upstream they started with.
    pub fn handle_snapshot(&mut self, now: Time, snapshot: Arc<Snapshot>) {
        self.balancers.retain_keys(snapshot.upstream_keys());
        self.snapshot = snapshot;
        self.sync_probes(now);
        self.check_invariants();
    }

    /// An active probe asked for by `Action::Probe` finished: `Ok` = the node
    /// accepted the connection. Stale probes (timed out, target gone) are ignored.
    pub fn handle_probe_result(&mut self, now: Time, probe: ProbeId, result: Result<(), ConnectError>) {
        if let Some(index) = self.prober.on_result(probe, now, result.is_ok()) {
            self.rearm_probe(index);
        }
        self.check_invariants();
    }

    /// Probe targets follow the config's upstreams that have `checks`.
    fn sync_probes(&mut self, now: Time) {
        if !self.config.run_active_checks {
            return;
        }
        let (added, removed) = self.prober.sync(now, self.snapshot.upstreams(), &mut self.actions);
        for index in removed {
            if let Some(armed) = self.probe_armed[index].take() {
                self.timers.remove(&(armed, TimerOwner::Probe(index as u32)));
            }
        }
        for index in added {
            if index >= self.probe_armed.len() {
                self.probe_armed.resize(index + 1, None);
            }
            self.rearm_probe(index);
        }
    }

    fn rearm_probe(&mut self, index: usize) {
        let deadline = self.prober.targets[index].deadline();
        // A probe's deadline may move later (probe started, result in): re-file exactly.
        if let Some(armed) = self.probe_armed[index].take() {
            self.timers.remove(&(armed, TimerOwner::Probe(index as u32)));
        }
        rearm(&mut self.timers, &mut self.probe_armed[index], deadline, TimerOwner::Probe(index as u32));
    }

    /// Stop taking new connections and sessions; established ones run on.
    pub fn begin_shutdown(&mut self) {
        self.accepting = false;
    }

    /// Closes every connection with a reset and ends every session (the drain
    /// deadline passed).
    pub fn abort_all(&mut self, now: Time) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .map(|(index, _)| ConnId { index: index as u32, generation: self.generations[index] })
            .collect();
        for id in ids {
            self.with_conn(now, id, |c, ctx| c.abort(ctx, id, CloseReason::Shutdown));
        }
        let sessions: Vec<usize> = self.sessions.slots.iter().map(|(index, _)| index).collect();
        for index in sessions {
            self.close_session(now, index, CloseReason::Shutdown);
        }
        let probes: Vec<usize> = self.prober.targets.iter().map(|(index, _)| index).collect();
        for index in probes {
            if let Some(armed) = self.probe_armed[index].take() {
                self.timers.remove(&(armed, TimerOwner::Probe(index as u32)));
            }
        }
        self.prober = Prober::default();
        self.check_invariants();
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next finished connection or session to log (only with
    /// `EngineConfig::session_records`).
    #[must_use]
    pub fn poll_session_record(&mut self) -> Option<SessionRecord> {
        self.records.pop()
    }

    /// The next time `handle_timeout` must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first().map(|&(t, _)| t)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    pub fn listeners(&self) -> &[ListenSpec] {
        &self.listeners
    }

    /// Buffers handed out by the pool and not yet returned.
    pub fn buffers_in_use(&self) -> usize {
        self.pool.outstanding()
    }

    /// The number of armed timers (one per live connection and session).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    // ---- internals ---------------------------------------------------------

    fn listening_on(&self, listener: ListenerId, protocol: Protocol) -> Option<&ListenSpec> {
        let spec = self.listeners.get(listener.0 as usize)?;
        (self.accepting && spec.protocol == protocol).then_some(spec)
    }

    /// The route for a new connection or session and its upstream.
    fn route(&self, local: SocketAddr, peer: SocketAddr) -> Result<(String, Arc<ResolvedUpstream>), DatagramDrop> {
        let input =
            MatchInput { server_addr: local.ip(), server_port: local.port(), remote_addr: peer.ip(), sni: None };
        self.snapshot.route(&input).map(|(route, upstream)| (route.id.clone(), upstream))
    }

    fn live_conn(&self, conn: ConnId) -> Option<usize> {
        let index = conn.index as usize;
        (self.conns.contains(index) && self.generations[index] == conn.generation).then_some(index)
    }

    /// Runs one transition on a live connection, then frees it if it closed or
    /// re-files its deadline. Events for stale ids are ignored.
    fn with_conn(&mut self, now: Time, conn: ConnId, f: impl FnOnce(&mut TcpConn, &mut Ctx<'_>) -> Outcome) {
        let Some(index) = self.live_conn(conn) else { return };
        let mut ctx = Ctx {
            now,
            pool: &mut self.pool,
            actions: &mut self.actions,
            balancers: &mut self.balancers,
            rng: &mut self.rng,
            snapshot: &self.snapshot,
            config: &self.config,
            records: &mut self.records,
        };
        match f(&mut self.conns[index], &mut ctx) {
            Outcome::Open => {
                if self.config.driver_can_splice && self.conns[index].can_splice() {
                    self.conns[index].start_splice(&mut self.pool);
                    self.actions.push_back(Action::Splice { conn });
                }
                self.rearm_conn(index);
            }
            Outcome::Closed => self.free_conn(index),
        }
        self.check_invariants();
    }

    fn rearm_conn(&mut self, index: usize) {
        let deadline = self.conns[index].deadline();
        rearm(&mut self.timers, &mut self.conn_armed[index], deadline, TimerOwner::Tcp(index as u32));
    }

    fn rearm_session(&mut self, index: usize) {
        let deadline = self.sessions.slots[index].deadline();
        rearm(&mut self.timers, &mut self.session_armed[index], deadline, TimerOwner::Udp(index as u32));
    }

    fn free_conn(&mut self, index: usize) {
        let conn = self.conns.remove(index);
        debug_assert_eq!(conn.buffers_held(), 0, "a closed connection holds no buffer");
        if let Some(armed) = self.conn_armed[index].take() {
            self.timers.remove(&(armed, TimerOwner::Tcp(index as u32)));
        }
        self.generations[index] = self.generations[index].wrapping_add(1);
        self.stats.closed += 1;
    }

    /// Debug-only consistency checks after each public mutating call.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert_eq!(
            self.timers.len(),
            self.conns.len() + self.sessions.len() + self.prober.targets.len(),
            "every live connection, session and probe target has exactly one timer, closed ones none"
        );
        for (index, conn) in &self.conns {
            assert!(
                self.conn_armed[index].is_some_and(|t| t <= conn.deadline()),
                "a connection's timer fires no later than its deadline"
            );
        }
        for (index, session) in &self.sessions.slots {
            assert!(
                self.session_armed[index].is_some_and(|t| t <= session.deadline()),
                "a session's timer fires no later than its deadline"
            );
            assert_eq!(
                self.sessions.by_flow.get(&(session.listener, session.peer)),
                Some(&(index as u32)),
                "flows map to their session"
            );
        }
        assert_eq!(self.sessions.by_flow.len(), self.sessions.len(), "one flow key per session");
        let held: usize = self.conns.iter().map(|(_, c)| c.buffers_held()).sum();
        assert_eq!(held, self.pool.outstanding(), "the pool's outstanding buffers are exactly those connections hold");
        assert!(self.conns.len() <= self.config.max_connections, "connections never exceed the limit");
        assert!(self.sessions.len() <= self.config.udp_sessions_max, "sessions never exceed the limit");
    }
}

/// Files a deadline in the timer set if it moved earlier than the one filed (a
/// later deadline is found lazily when the earlier one fires).
fn rearm(timers: &mut BTreeSet<(Time, TimerOwner)>, armed: &mut Option<Time>, deadline: Time, owner: TimerOwner) {
    match *armed {
        Some(at) if at <= deadline => {}
        Some(at) => {
            timers.remove(&(at, owner));
            timers.insert((deadline, owner));
            *armed = Some(deadline);
        }
        None => {
            timers.insert((deadline, owner));
            *armed = Some(deadline);
        }
    }
}
