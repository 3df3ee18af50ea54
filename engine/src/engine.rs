//! The per-worker engine: owns connections, timers, buffers, balancer state
//! and the current config snapshot. See the crate docs for the call order.

use crate::action::{Action, CloseReason, ConnectError, Refusal};
use crate::balancer::Balancers;
use crate::buffer::BufferPool;
use crate::config::{ListenSpec, Protocol};
use crate::ids::{ConnId, ListenerId, Side};
use crate::rng::Rng;
use crate::router::MatchInput;
use crate::snapshot::{RouteTarget, Snapshot};
use crate::tcp::conn::{Ctx, Outcome, TcpConn};
use crate::time::Time;
use slab::Slab;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

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
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            seed: 0,
            buffer_bytes: 64 * 1024,
            max_connections: 10_620,
            spare_buffers_max: 256,
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
}

pub struct Engine {
    listeners: Vec<ListenSpec>,
    snapshot: Arc<Snapshot>,
    config: EngineConfig,
    conns: Slab<TcpConn>,
    /// Generation of every slot ever used, bumped when a slot is freed.
    generations: Vec<u32>,
    /// One entry per live connection: (deadline, slot). Exact, never stale.
    timers: BTreeSet<(Time, u32)>,
    /// The deadline each slot is filed under in `timers`.
    armed: Vec<Option<Time>>,
    actions: VecDeque<Action>,
    pool: BufferPool,
    balancers: Balancers,
    #[allow(dead_code)] // reserved for randomized balancers (ewma's two choices)
    rng: Rng,
    accepting: bool,
    stats: EngineStats,
}

impl Engine {
    pub fn new(
        listeners: Vec<ListenSpec>,
        snapshot: Arc<Snapshot>,
        config: EngineConfig,
    ) -> Engine {
        let pool = BufferPool::new(config.buffer_bytes, config.spare_buffers_max);
        Engine {
            listeners,
            snapshot,
            rng: Rng::new(config.seed),
            config,
            conns: Slab::new(),
            generations: Vec::new(),
            timers: BTreeSet::new(),
            armed: Vec::new(),
            actions: VecDeque::new(),
            pool,
            balancers: Balancers::default(),
            accepting: true,
            stats: EngineStats::default(),
        }
    }

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
        let spec = self
            .listeners
            .get(listener.0 as usize)
            .ok_or(Refusal::NotAccepting)?;
        if !self.accepting || spec.protocol != Protocol::Tcp {
            return Err(Refusal::NotAccepting);
        }
        if self.conns.len() >= self.config.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let input = MatchInput {
            server_addr: local.ip(),
            server_port: local.port(),
            remote_addr: peer.ip(),
            sni: None,
        };
        let (_, route, target) = self.snapshot.find_route(&input).ok_or(Refusal::NoRoute)?;
        let upstream = match target {
            RouteTarget::Upstream(upstream) => upstream.clone(),
            RouteTarget::Unavailable(why) => {
                log::error!("stream route [{}]: {why}", route.id);
                return Err(Refusal::NoUpstream);
            }
        };
        let route_id = route.id.clone();
        let entry = self.conns.vacant_entry();
        let index = entry.key();
        if index >= self.generations.len() {
            self.generations.resize(index + 1, 0);
            self.armed.resize(index + 1, None);
        }
        let id = ConnId {
            index: index as u32,
            generation: self.generations[index],
        };
        let mut ctx = Ctx {
            now,
            pool: &mut self.pool,
            actions: &mut self.actions,
            balancers: &mut self.balancers,
        };
        match TcpConn::start(&mut ctx, id, listener, local, peer, route_id, upstream) {
            Ok(conn) => {
                entry.insert(conn);
                self.rearm(index);
                Ok(id)
            }
            Err(reason) => {
                log::error!(
                    "stream route [{}]: no valid upstream node ({reason:?})",
                    route.id
                );
                Err(Refusal::NoUpstream)
            }
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
        let index = self.live_index(conn)?;
        self.conns[index].read_buf(&mut self.pool, side)
    }

    /// `n` bytes were read from `side` into `read_buf`; `n == 0` is a FIN.
    pub fn handle_read(&mut self, now: Time, conn: ConnId, side: Side, n: usize) {
        self.with_conn(now, conn, |c, ctx| c.on_read(ctx, conn, side, n));
    }

    /// A read of `side` would block.
    pub fn handle_read_blocked(&mut self, conn: ConnId, side: Side) {
        if let Some(index) = self.live_index(conn) {
            self.conns[index].on_read_blocked(&mut self.pool, side);
        }
    }

    /// Bytes waiting to be written to `side` (empty: nothing to write).
    pub fn write_buf(&self, conn: ConnId, side: Side) -> &[u8] {
        match self.live_index(conn) {
            Some(index) => self.conns[index].write_buf(side),
            None => &[],
        }
    }

    /// `n` bytes of `write_buf(side)` were written to `side`.
    pub fn handle_written(&mut self, now: Time, conn: ConnId, side: Side, n: usize) {
        self.with_conn(now, conn, |c, ctx| c.on_written(ctx, conn, side, n));
    }

    /// `side` was reset by its peer, or reading or writing it failed.
    pub fn handle_reset(&mut self, now: Time, conn: ConnId, side: Side) {
        self.with_conn(now, conn, |c, ctx| c.on_reset(ctx, conn, side));
    }

    /// Handles every deadline that is due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(&(deadline, index)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            self.armed[index as usize] = None;
            let index = index as usize;
            let id = ConnId {
                index: index as u32,
                generation: self.generations[index],
            };
            if self.conns[index].deadline() > now {
                // Activity moved the idle deadline: file it again (lazy re-arm keeps
                // reads and writes free of timer work).
                self.rearm(index);
                continue;
            }
            self.with_conn(now, id, |c, ctx| c.on_deadline(ctx, id));
        }
        self.check_invariants();
    }

    /// A new config: new connections use it; established ones keep the route
    /// and upstream they started with.
    pub fn handle_snapshot(&mut self, _now: Time, snapshot: Arc<Snapshot>) {
        self.balancers.retain_keys(snapshot.upstream_keys());
        self.snapshot = snapshot;
        self.check_invariants();
    }

    /// Stop taking new connections; established ones run on.
    pub fn begin_shutdown(&mut self) {
        self.accepting = false;
    }

    /// Closes every connection with a reset (the drain deadline passed).
    pub fn abort_all(&mut self, now: Time) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .map(|(index, _)| ConnId {
                index: index as u32,
                generation: self.generations[index],
            })
            .collect();
        for id in ids {
            self.with_conn(now, id, |c, ctx| c.abort(ctx, id, CloseReason::Shutdown));
        }
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
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

    /// The number of armed timers (one per live connection).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    fn live_index(&self, conn: ConnId) -> Option<usize> {
        let index = conn.index as usize;
        (self.conns.contains(index) && self.generations[index] == conn.generation).then_some(index)
    }

    /// Runs one transition on a live connection, then frees it if it closed or
    /// re-files its deadline. Events for stale ids are ignored.
    fn with_conn(
        &mut self,
        now: Time,
        conn: ConnId,
        f: impl FnOnce(&mut TcpConn, &mut Ctx<'_>) -> Outcome,
    ) {
        let Some(index) = self.live_index(conn) else {
            return;
        };
        let mut ctx = Ctx {
            now,
            pool: &mut self.pool,
            actions: &mut self.actions,
            balancers: &mut self.balancers,
        };
        match f(&mut self.conns[index], &mut ctx) {
            Outcome::Open => self.rearm(index),
            Outcome::Closed => self.free(index),
        }
        self.check_invariants();
    }

    /// Files the connection's deadline in the timer set, if it moved earlier
    /// (a later deadline is found lazily when the earlier one fires).
    fn rearm(&mut self, index: usize) {
        let deadline = self.conns[index].deadline();
        match self.armed[index] {
            Some(armed) if armed <= deadline => {}
            Some(armed) => {
                self.timers.remove(&(armed, index as u32));
                self.timers.insert((deadline, index as u32));
                self.armed[index] = Some(deadline);
            }
            None => {
                self.timers.insert((deadline, index as u32));
                self.armed[index] = Some(deadline);
            }
        }
    }

    fn free(&mut self, index: usize) {
        let conn = self.conns.remove(index);
        debug_assert_eq!(
            conn.buffers_held(),
            0,
            "a closed connection holds no buffer"
        );
        if let Some(armed) = self.armed[index].take() {
            self.timers.remove(&(armed, index as u32));
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
            self.conns.len(),
            "every live connection has exactly one timer, closed ones none"
        );
        for (index, conn) in &self.conns {
            assert!(
                self.armed[index].is_some_and(|t| t <= conn.deadline()),
                "a connection's timer fires no later than its deadline"
            );
        }
        let held: usize = self.conns.iter().map(|(_, c)| c.buffers_held()).sum();
        assert_eq!(
            held,
            self.pool.outstanding(),
            "the pool's outstanding buffers are exactly those connections hold"
        );
        assert!(
            self.conns.len() <= self.config.max_connections,
            "connections never exceed the limit"
        );
    }
}
