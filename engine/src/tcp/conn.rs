//! One proxied TCP connection: pick a node, connect (retrying the next node on
//! failure), then move bytes both ways until both directions are finished.
//! See LIFECYCLE.md beside this file for the states and who releases what.
//!
//! Flows are indexed by the side bytes come *from*: `flows[Client]` holds bytes
//! read from the client and waiting to be written to the upstream.

use crate::action::{Action, CloseReason, ConnectError};
use crate::balancer::{Balancers, InFlight, KeySource};
use crate::buffer::{BufferPool, RingBuffer};
use crate::health::HealthEvent;
use crate::ids::{ConnId, ListenerId, Side};
use crate::rng::Rng;
use crate::snapshot::ResolvedUpstream;
use crate::time::Time;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a connection's methods need from the engine besides the connection.
pub(crate) struct Ctx<'a> {
    pub now: Time,
    pub pool: &'a mut BufferPool,
    pub actions: &'a mut VecDeque<Action>,
    pub balancers: &'a mut Balancers,
    pub rng: &'a mut Rng,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A connect to `node` is in flight; it fails at `deadline`.
    Connecting { deadline: Time },
    /// The upstream accepted; bytes flow both ways.
    Streaming,
}

/// Whether the connection lives on after an event.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Open,
    /// A `Close` action has been queued; the engine must free the slot.
    Closed,
}

#[derive(Default)]
pub(crate) struct Flow {
    /// Present only while bytes are in flight (or a read is under way).
    pub buffer: Option<RingBuffer>,
    /// The source side sent FIN.
    pub eof: bool,
    /// The FIN has been passed on (the destination's write half is shut).
    pub shutdown_sent: bool,
    pub bytes: u64,
}

impl Flow {
    fn pending(&self) -> usize {
        self.buffer.as_ref().map_or(0, RingBuffer::len)
    }
}

pub(crate) struct TcpConn {
    pub listener: ListenerId,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub route_id: String,
    pub upstream: Arc<ResolvedUpstream>,
    pub phase: Phase,
    /// Index into `upstream.addrs` of the node being tried or used.
    pub node: usize,
    pub tried: Vec<usize>,
    pub first_pick: Time,
    /// When the connect in flight started (for EWMA).
    pub connect_started: Time,
    /// This connection counted against its node (least_conn); dropped with it.
    pub in_flight: Option<InFlight>,
    pub flows: [Flow; 2],
    pub last_activity: Time,
}

impl TcpConn {
    /// Starts a connection on a matched route: picks the first node and asks the
    /// driver to connect. Never waits for client bytes (MySQL greets first).
    pub fn start(
        ctx: &mut Ctx<'_>,
        id: ConnId,
        listener: ListenerId,
        local: SocketAddr,
        peer: SocketAddr,
        route_id: String,
        upstream: Arc<ResolvedUpstream>,
    ) -> Result<TcpConn, CloseReason> {
        let key = KeySource { local, peer };
        let pick = ctx.balancers.pick(&upstream, &[], key, ctx.rng).ok_or(CloseReason::NoUpstreamNode)?;
        let deadline = ctx.now + upstream.config.connect_timeout();
        ctx.actions.push_back(Action::Connect { conn: id, addr: upstream.addrs[pick.node] });
        Ok(TcpConn {
            listener,
            local,
            peer,
            route_id,
            upstream,
            phase: Phase::Connecting { deadline },
            node: pick.node,
            tried: vec![pick.node],
            first_pick: ctx.now,
            connect_started: ctx.now,
            in_flight: pick.in_flight,
            flows: Default::default(),
            last_activity: ctx.now,
        })
    }

    pub fn is_streaming(&self) -> bool {
        self.phase == Phase::Streaming
    }

    /// When the engine must look at this connection again.
    pub fn deadline(&self) -> Time {
        match self.phase {
            Phase::Connecting { deadline } => deadline,
            Phase::Streaming => self.last_activity + self.upstream.config.idle_timeout(),
        }
    }

    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> Outcome {
        debug_assert!(
            matches!(self.phase, Phase::Connecting { .. }),
            "only a connecting connection completes a connect"
        );
        self.phase = Phase::Streaming;
        self.last_activity = ctx.now;
        self.report_health(HealthEvent::Success);
        ctx.balancers.observe_connect(&self.upstream, self.node, ctx.now, ctx.now - self.connect_started);
        // A client FIN that arrived while connecting is passed on once its bytes are.
        self.forward_eof_if_drained(ctx, id, Side::Client)
    }

    /// The connect to the current node failed (refused, unreachable, timed out):
    /// try the next untried node within `retries` and `retry_timeout`, or give up.
    pub fn on_connect_failed(&mut self, ctx: &mut Ctx<'_>, id: ConnId, error: ConnectError) -> Outcome {
        debug_assert!(matches!(self.phase, Phase::Connecting { .. }), "only a connecting connection fails a connect");
        log::warn!(
            "stream route [{}]: connect to {} failed ({error:?}), try {} of {}",
            self.route_id,
            self.upstream.addrs[self.node],
            self.tried.len(),
            self.upstream.config.max_tries()
        );
        self.report_health(if error == ConnectError::TimedOut {
            HealthEvent::Timeout
        } else {
            HealthEvent::TcpFailure
        });
        // The failed node no longer carries this connection.
        self.in_flight = None;
        let config = &self.upstream.config;
        let out_of_time = !config.retry_timeout.is_zero() && ctx.now >= self.first_pick + config.retry_timeout;
        if self.tried.len() >= config.max_tries() || out_of_time {
            return self.close(ctx, id, CloseReason::UpstreamUnreachable);
        }
        let key = KeySource { local: self.local, peer: self.peer };
        let Some(pick) = ctx.balancers.pick(&self.upstream, &self.tried, key, ctx.rng) else {
            return self.close(ctx, id, CloseReason::UpstreamUnreachable);
        };
        self.node = pick.node;
        self.in_flight = pick.in_flight;
        self.tried.push(pick.node);
        self.connect_started = ctx.now;
        self.phase = Phase::Connecting { deadline: ctx.now + config.connect_timeout() };
        ctx.actions.push_back(Action::Connect { conn: id, addr: self.upstream.addrs[pick.node] });
        Outcome::Open
    }

    /// Free space to read `side`'s bytes into, or `None` when the driver must
    /// not read that side now (buffer full: back-pressure; FIN seen; upstream
    /// not connected yet).
    pub fn read_buf<'a>(&'a mut self, pool: &mut BufferPool, side: Side) -> Option<&'a mut [u8]> {
        if side == Side::Upstream && !self.is_streaming() {
            return None;
        }
        let flow = &mut self.flows[side.index()];
        if flow.eof {
            return None;
        }
        let buffer = flow.buffer.get_or_insert_with(|| pool.take());
        let free = buffer.free_mut();
        if free.is_empty() {
            None
        } else {
            Some(free)
        }
    }

    /// The driver read `n` bytes from `side` into `read_buf`; 0 means FIN.
    pub fn on_read(&mut self, ctx: &mut Ctx<'_>, id: ConnId, side: Side, n: usize) -> Outcome {
        let flow = &mut self.flows[side.index()];
        if n == 0 {
            flow.eof = true;
            if flow.pending() == 0 {
                Self::release_buffer(ctx.pool, flow);
            }
            return self.forward_eof_if_drained(ctx, id, side);
        }
        let buffer = flow.buffer.as_mut().expect("a read fills a buffer handed out by read_buf");
        buffer.commit(n);
        flow.bytes += n as u64;
        self.last_activity = ctx.now;
        Outcome::Open
    }

    /// The driver's read of `side` would block: an unused buffer goes back to
    /// the pool so idle connections hold no buffer memory.
    pub fn on_read_blocked(&mut self, pool: &mut BufferPool, side: Side) {
        let flow = &mut self.flows[side.index()];
        if flow.pending() == 0 {
            Self::release_buffer(pool, flow);
        }
    }

    /// Bytes waiting to be written to `side`.
    pub fn write_buf(&self, side: Side) -> &[u8] {
        if side == Side::Upstream && !self.is_streaming() {
            return &[];
        }
        self.flows[side.other().index()].buffer.as_ref().map_or(&[], RingBuffer::data)
    }

    /// The driver wrote `n` bytes of `write_buf(side)` to `side`.
    pub fn on_written(&mut self, ctx: &mut Ctx<'_>, id: ConnId, side: Side, n: usize) -> Outcome {
        let source = side.other();
        let flow = &mut self.flows[source.index()];
        let buffer = flow.buffer.as_mut().expect("a write drains a buffer handed out by write_buf");
        buffer.consume(n);
        self.last_activity = ctx.now;
        if buffer.is_empty() {
            Self::release_buffer(ctx.pool, flow);
            return self.forward_eof_if_drained(ctx, id, source);
        }
        Outcome::Open
    }

    /// Once `source` has sent FIN and all its bytes are delivered, shut the
    /// destination's write half: half-close is forwarded, the other direction
    /// keeps flowing. When both directions are finished the connection closes.
    fn forward_eof_if_drained(&mut self, ctx: &mut Ctx<'_>, id: ConnId, source: Side) -> Outcome {
        let destination = source.other();
        let flow = &mut self.flows[source.index()];
        let destination_ready = destination == Side::Client || self.phase == Phase::Streaming;
        if flow.eof && !flow.shutdown_sent && flow.pending() == 0 && destination_ready {
            flow.shutdown_sent = true;
            ctx.actions.push_back(Action::Shutdown { conn: id, side: destination });
        }
        if self.flows.iter().all(|f| f.shutdown_sent) {
            return self.close(ctx, id, CloseReason::Finished);
        }
        Outcome::Open
    }

    /// A side reset the connection (or a read or write on it failed): the
    /// other side is reset too, so neither peer mistakes it for a clean end.
    pub fn on_reset(&mut self, ctx: &mut Ctx<'_>, id: ConnId, side: Side) -> Outcome {
        if side == Side::Upstream && !self.is_streaming() {
            return self.on_connect_failed(ctx, id, ConnectError::Reset);
        }
        let reason = match side {
            Side::Client => CloseReason::ClientReset,
            Side::Upstream => {
                // Only upstream-side failures count against a node (spec §8.16).
                self.report_health(HealthEvent::TcpFailure);
                CloseReason::UpstreamReset
            }
        };
        self.close(ctx, id, reason)
    }

    /// The deadline passed: a connect timed out, or the connection was idle too long.
    pub fn on_deadline(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> Outcome {
        match self.phase {
            Phase::Connecting { .. } => self.on_connect_failed(ctx, id, ConnectError::TimedOut),
            Phase::Streaming => self.close(ctx, id, CloseReason::IdleTimeout),
        }
    }

    /// Closes both sides now (shutdown drain deadline, config removal).
    pub fn abort(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) -> Outcome {
        self.close(ctx, id, reason)
    }

    fn close(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) -> Outcome {
        for flow in &mut self.flows {
            Self::release_buffer(ctx.pool, flow);
        }
        log::debug!(
            "stream route [{}]: {} -> {} (listener {}) closed ({reason:?}), {} bytes up, {} bytes down",
            self.route_id,
            self.peer,
            self.local,
            self.listener.0,
            self.flows[0].bytes,
            self.flows[1].bytes
        );
        ctx.actions.push_back(Action::Close { conn: id, reset: reason.resets() });
        Outcome::Closed
    }

    /// Passive health: what this connection saw of its node.
    fn report_health(&self, event: HealthEvent) {
        if let (Some(node), Some(checks)) = (self.upstream.health.get(self.node), &self.upstream.config.checks) {
            node.report(event, checks.passive_thresholds());
        }
    }

    fn release_buffer(pool: &mut BufferPool, flow: &mut Flow) {
        if let Some(buffer) = flow.buffer.take() {
            pool.give_back(buffer);
        }
    }

    /// Buffers this connection holds (for invariant checks).
    pub fn buffers_held(&self) -> usize {
        self.flows.iter().filter(|f| f.buffer.is_some()).count()
    }
}
