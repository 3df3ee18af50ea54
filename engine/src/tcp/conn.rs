//! One proxied TCP connection: pick a node, connect (retrying the next node on
//! failure), then move bytes both ways until both directions are finished.
//! See LIFECYCLE.md beside this file for the states and who releases what.
//!
//! Flows are indexed by the side bytes come *from*: `flows[Client]` holds bytes
//! read from the client and waiting to be written to the upstream. They always
//! hold plaintext. A side that speaks TLS has a `TlsLayer` whose ciphertext
//! buffers the driver reads into and writes from instead (`tls/layer.rs`); a
//! connection without TLS has `tls: None` and pays one branch for it.

use crate::action::{Action, CloseReason, ConnectError};
use crate::balancer::{Balancers, InFlight, KeySource};
use crate::buffer::{BufferPool, RingBuffer};
use crate::engine::EngineConfig;
use crate::health::HealthEvent;
use crate::ids::{ConnId, ListenerId, Side};
use crate::rng::Rng;
use crate::router::MatchInput;
use crate::snapshot::{ResolvedUpstream, Snapshot};
use crate::time::Time;
use crate::tls::client_hello::{peek_sni, Peek};
use crate::tls::layer::TlsLayer;
use crate::tls::{Refuse, CLIENT_HELLO_BYTES_MAX};
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
    pub snapshot: &'a Snapshot,
    pub config: &'a EngineConfig,
    pub records: &'a mut crate::session_record::Records,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A TLS listener: buffering the ClientHello to read its SNI; no route yet.
    Hello { deadline: Time },
    /// Terminating TLS: route chosen, handshake with the client under way, no
    /// upstream socket yet (the node is picked once the client is verified).
    Handshaking { deadline: Time },
    /// A connect to `node` is in flight; it fails at `deadline`.
    Connecting { deadline: Time },
    /// The upstream accepted; bytes flow both ways. With `tls: None` this is
    /// plain streaming: the bytes are moved untouched (a splice candidate).
    Streaming,
    /// A refused or failed TLS handshake: writing the alert to the client,
    /// then closing. No upstream socket.
    Refusing { deadline: Time },
}

/// What a TLS-enabled listener does with a ClientHello (spec §1.1, §4.6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListenTls {
    /// A plain listener (a connection here has TLS only toward its upstream).
    Plain,
    Terminate,
    Passthrough,
    /// `tls` and `tls_passthrough`: the matched route's `tls_passthrough` decides.
    Mixed,
}

/// TLS state of a connection that has any: per side layers, the SNI, the handshake deadline.
pub(crate) struct TlsState {
    pub listen: ListenTls,
    /// The connection's SNI: the ClientHello's, else `fallback_sni`.
    pub sni: Option<String>,
    /// A handshake (client or upstream) must be done by then.
    pub handshake_deadline: Option<Time>,
    /// Indexed by side.
    pub layers: [Option<TlsLayer>; 2],
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
    pub fn pending(&self) -> usize {
        self.buffer.as_ref().map_or(0, RingBuffer::len)
    }
}

pub(crate) struct TcpConn {
    pub listener: ListenerId,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Empty until routed (TLS listeners route after the ClientHello).
    pub route_id: String,
    /// `None` only before routing (`Hello`) and when refused there.
    pub upstream: Option<Arc<ResolvedUpstream>>,
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
    pub accepted: Time,
    /// The node of the last connect asked for (`$upstream_addr`).
    pub upstream_addr: Option<SocketAddr>,
    pub last_activity: Time,
    /// The driver moves the bytes itself (splice) and reports only counts,
    /// FINs and resets; the engine's buffers stay unused.
    pub spliced: bool,
    /// A read filled half a buffer or more: bulk traffic, worth splicing.
    /// Small request/response traffic stays on read/write, which costs less
    /// per message than a trip through a pipe (HAProxy's splice-auto idea).
    pub bulk_seen: bool,
    /// `None` for a connection without TLS on either side.
    pub tls: Option<Box<TlsState>>,
}

impl TcpConn {
    fn new(
        ctx: &Ctx<'_>,
        listener: ListenerId,
        local: SocketAddr,
        peer: SocketAddr,
        phase: Phase,
        tls: Option<Box<TlsState>>,
    ) -> TcpConn {
        TcpConn {
            listener,
            local,
            peer,
            route_id: String::new(),
            upstream: None,
            phase,
            node: 0,
            tried: Vec::new(),
            first_pick: ctx.now,
            connect_started: ctx.now,
            in_flight: None,
            flows: Default::default(),
            accepted: ctx.now,
            upstream_addr: None,
            last_activity: ctx.now,
            spliced: false,
            bulk_seen: false,
            tls,
        }
    }

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
        let mut conn = TcpConn::new(ctx, listener, local, peer, Phase::Streaming, None);
        conn.route_id = route_id;
        conn.upstream = Some(upstream);
        conn.pick_and_connect(ctx, id)?;
        Ok(conn)
    }

    /// Accepts a connection on a `tls` / `tls_passthrough` listener: nothing is
    /// routed until the ClientHello is read (`on_hello`).
    pub fn hello(
        ctx: &mut Ctx<'_>,
        listener: ListenerId,
        local: SocketAddr,
        peer: SocketAddr,
        listen: ListenTls,
    ) -> TcpConn {
        let deadline = ctx.now + ctx.config.tls_handshake_timeout;
        let tls = TlsState { listen, sni: None, handshake_deadline: Some(deadline), layers: [None, None] };
        TcpConn::new(ctx, listener, local, peer, Phase::Hello { deadline }, Some(Box::new(tls)))
    }

    fn upstream(&self) -> &Arc<ResolvedUpstream> {
        self.upstream.as_ref().expect("a connection past Hello has an upstream")
    }

    /// Picks the first node and asks for the connect (`Connecting`).
    fn pick_and_connect(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> Result<(), CloseReason> {
        let upstream = self.upstream().clone();
        let key = KeySource { local: self.local, peer: self.peer };
        let pick = ctx.balancers.pick(&upstream, &[], key, ctx.rng).ok_or(CloseReason::NoUpstreamNode)?;
        self.upstream_addr = Some(upstream.addrs[pick.node]);
        ctx.actions.push_back(Action::Connect { conn: id, addr: upstream.addrs[pick.node] });
        self.phase = Phase::Connecting { deadline: ctx.now + upstream.config.connect_timeout() };
        self.node = pick.node;
        self.tried = vec![pick.node];
        self.first_pick = ctx.now;
        self.connect_started = ctx.now;
        self.in_flight = pick.in_flight;
        Ok(())
    }

    pub fn is_streaming(&self) -> bool {
        self.phase == Phase::Streaming
    }

    /// Streaming with no TLS on either side: the bytes need no engine work
    /// beyond counting (where a driver could splice).
    pub fn is_plain_streaming(&self) -> bool {
        self.phase == Phase::Streaming && self.tls.as_ref().is_none_or(|t| t.layers.iter().all(Option::is_none))
    }

    fn layer(&self, side: Side) -> Option<&TlsLayer> {
        self.tls.as_ref()?.layers[side.index()].as_ref()
    }

    fn layer_mut(&mut self, side: Side) -> Option<&mut TlsLayer> {
        self.tls.as_mut()?.layers[side.index()].as_mut()
    }

    /// When the engine must look at this connection again.
    pub fn deadline(&self) -> Time {
        let phase = match self.phase {
            Phase::Hello { deadline }
            | Phase::Handshaking { deadline }
            | Phase::Connecting { deadline }
            | Phase::Refusing { deadline } => deadline,
            Phase::Streaming => self.last_activity + self.upstream().config.idle_timeout(),
        };
        match self.tls.as_ref().and_then(|t| t.handshake_deadline) {
            Some(handshake) => phase.min(handshake),
            None => phase,
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
        ctx.balancers.observe_connect(self.upstream(), self.node, ctx.now, ctx.now - self.connect_started);
        if let Some(config) = self.upstream().tls.clone() {
            let Ok(config) = config else {
                return self.close(ctx, id, CloseReason::TlsError);
            };
            let tls = self.tls.get_or_insert_with(|| {
                Box::new(TlsState {
                    listen: ListenTls::Plain,
                    sni: None,
                    handshake_deadline: None,
                    layers: [None, None],
                })
            });
            let name = crate::tls::upstream::server_name(tls.sni.as_deref());
            match rustls::ClientConnection::new(config, name) {
                Ok(connection) => {
                    tls.layers[Side::Upstream.index()] = Some(TlsLayer::client(connection, ctx.pool.buffer_bytes()));
                    tls.handshake_deadline = Some(ctx.now + ctx.config.tls_handshake_timeout);
                }
                Err(e) => {
                    log::error!("stream route [{}]: cannot start TLS to the upstream: {e}", self.route_id);
                    return self.close(ctx, id, CloseReason::TlsError);
                }
            }
        }
        if self.tls.is_some() {
            return self.after_tls_io(ctx, id);
        }
        // A client FIN that arrived while connecting is passed on once its bytes are.
        self.forward_eof_if_drained(ctx, id, Side::Client)
    }

    /// The connect to the current node failed (refused, unreachable, timed out):
    /// try the next untried node within `retries` and `retry_timeout`, or give up.
    pub fn on_connect_failed(&mut self, ctx: &mut Ctx<'_>, id: ConnId, error: ConnectError) -> Outcome {
        debug_assert!(matches!(self.phase, Phase::Connecting { .. }), "only a connecting connection fails a connect");
        let upstream = self.upstream().clone();
        log::warn!(
            "stream route [{}]: connect to {} failed ({error:?}), try {} of {}",
            self.route_id,
            upstream.addrs[self.node],
            self.tried.len(),
            upstream.config.max_tries()
        );
        self.report_health(if error == ConnectError::TimedOut {
            HealthEvent::Timeout
        } else {
            HealthEvent::TcpFailure
        });
        // The failed node no longer carries this connection.
        self.in_flight = None;
        let config = &upstream.config;
        let out_of_time = !config.retry_timeout.is_zero() && ctx.now >= self.first_pick + config.retry_timeout;
        if self.tried.len() >= config.max_tries() || out_of_time {
            return self.close(ctx, id, CloseReason::UpstreamUnreachable);
        }
        let key = KeySource { local: self.local, peer: self.peer };
        let Some(pick) = ctx.balancers.pick(&upstream, &self.tried, key, ctx.rng) else {
            return self.close(ctx, id, CloseReason::UpstreamUnreachable);
        };
        self.node = pick.node;
        self.in_flight = pick.in_flight;
        self.tried.push(pick.node);
        self.connect_started = ctx.now;
        self.phase = Phase::Connecting { deadline: ctx.now + config.connect_timeout() };
        self.upstream_addr = Some(upstream.addrs[pick.node]);
        ctx.actions.push_back(Action::Connect { conn: id, addr: upstream.addrs[pick.node] });
        Outcome::Open
    }

    /// Free space to read `side`'s bytes into, or `None` when the driver must
    /// not read that side now (buffer full: back-pressure; FIN seen; upstream
    /// not connected yet).
    pub fn read_buf<'a>(&'a mut self, pool: &mut BufferPool, side: Side) -> Option<&'a mut [u8]> {
        if self.tls.is_some() {
            if matches!(self.phase, Phase::Refusing { .. }) {
                return None;
            }
            if self.layer(side).is_some() {
                return self.layer_mut(side).expect("checked above").read_buf(pool);
            }
        }
        // A spliced connection's bytes never pass through the engine.
        if self.spliced || (side == Side::Upstream && !self.is_streaming()) {
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
        if self.tls.is_some() {
            if let Some(layer) = self.layer_mut(side) {
                layer.on_read(n);
                self.last_activity = ctx.now;
                return self.after_tls_io(ctx, id);
            }
        }
        let flow = &mut self.flows[side.index()];
        if n == 0 {
            flow.eof = true;
            if flow.pending() == 0 {
                Self::release_buffer(ctx.pool, flow);
            }
            if matches!(self.phase, Phase::Hello { .. }) {
                return self.on_hello(ctx, id);
            }
            if self.tls.is_some() {
                // A FIN from a plain side bound for a TLS side is passed on as
                // close_notify first; only a pump queues it.
                return self.after_tls_io(ctx, id);
            }
            return self.forward_eof_if_drained(ctx, id, side);
        }
        let buffer = flow.buffer.as_mut().expect("a read fills a buffer handed out by read_buf");
        self.bulk_seen |= n >= buffer.capacity() / 2;
        buffer.commit(n);
        flow.bytes += n as u64;
        self.last_activity = ctx.now;
        if matches!(self.phase, Phase::Hello { .. }) {
            return self.on_hello(ctx, id);
        }
        if self.tls.is_some() {
            // Plaintext from a plain side may be bound for a TLS side.
            return self.after_tls_io(ctx, id);
        }
        Outcome::Open
    }

    /// The driver's read of `side` would block: an unused buffer goes back to
    /// the pool so idle connections hold no buffer memory.
    pub fn on_read_blocked(&mut self, pool: &mut BufferPool, side: Side) {
        if let Some(layer) = self.layer_mut(side) {
            layer.on_read_blocked(pool);
            return;
        }
        if matches!(self.phase, Phase::Hello { .. }) {
            // The ClientHello bytes so far stay.
            return;
        }
        let flow = &mut self.flows[side.index()];
        if flow.pending() == 0 {
            Self::release_buffer(pool, flow);
        }
    }

    /// Bytes waiting to be written to `side`.
    pub fn write_buf(&self, side: Side) -> &[u8] {
        if let Some(layer) = self.layer(side) {
            return layer.write_buf();
        }
        if self.spliced || (side == Side::Upstream && !self.is_streaming()) {
            return &[];
        }
        self.flows[side.other().index()].buffer.as_ref().map_or(&[], RingBuffer::data)
    }

    /// The driver wrote `n` bytes of `write_buf(side)` to `side`.
    pub fn on_written(&mut self, ctx: &mut Ctx<'_>, id: ConnId, side: Side, n: usize) -> Outcome {
        self.last_activity = ctx.now;
        if self.tls.is_some() {
            if let Some(layer) = self.layer_mut(side) {
                layer.on_written(ctx.pool, n);
                if matches!(self.phase, Phase::Refusing { .. }) {
                    return self.close_if_refusal_sent(ctx, id);
                }
                return self.after_tls_io(ctx, id);
            }
        }
        let source = side.other();
        let flow = &mut self.flows[source.index()];
        let buffer = flow.buffer.as_mut().expect("a write drains a buffer handed out by write_buf");
        buffer.consume(n);
        if buffer.is_empty() {
            Self::release_buffer(ctx.pool, flow);
            if matches!(self.phase, Phase::Refusing { .. }) {
                return self.close_if_refusal_sent(ctx, id);
            }
            if self.tls.is_some() {
                return self.after_tls_io(ctx, id);
            }
            return self.forward_eof_if_drained(ctx, id, source);
        }
        Outcome::Open
    }

    /// Once `source` has sent FIN and all its bytes are delivered, shut the
    /// destination's write half: half-close is forwarded, the other direction
    /// keeps flowing. When both directions are finished the connection closes.
    /// A TLS destination is drained once its close_notify is written too.
    fn forward_eof_if_drained(&mut self, ctx: &mut Ctx<'_>, id: ConnId, source: Side) -> Outcome {
        let destination = source.other();
        let destination_drained = self.layer(destination).is_none_or(|l| l.close_notify_sent && l.output_drained());
        let flow = &mut self.flows[source.index()];
        let destination_ready = destination == Side::Client || self.phase == Phase::Streaming;
        if flow.eof && !flow.shutdown_sent && flow.pending() == 0 && destination_ready && destination_drained {
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
        if side == Side::Upstream && matches!(self.phase, Phase::Connecting { .. }) {
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
        if self.tls.as_ref().and_then(|t| t.handshake_deadline).is_some_and(|d| ctx.now >= d) {
            log::info!("{} -> {}: TLS handshake timed out", self.peer, self.local);
            return self.close(ctx, id, CloseReason::HandshakeTimeout);
        }
        match self.phase {
            Phase::Hello { .. } | Phase::Handshaking { .. } => self.close(ctx, id, CloseReason::HandshakeTimeout),
            Phase::Refusing { .. } => self.close(ctx, id, CloseReason::TlsRefused),
            Phase::Connecting { .. } => self.on_connect_failed(ctx, id, ConnectError::TimedOut),
            Phase::Streaming => self.close(ctx, id, CloseReason::IdleTimeout),
        }
    }

    /// Closes both sides now (shutdown drain deadline, config removal).
    pub fn abort(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) -> Outcome {
        self.close(ctx, id, reason)
    }

    // ---- splice (the driver moves plain bytes itself) ----------------------

    /// Plain streaming, bulk traffic seen, and both flows empty (bytes read
    /// before the grant go first, in order): the driver may take the bytes over.
    pub fn can_splice(&self) -> bool {
        !self.spliced
            && self.bulk_seen
            && self.is_plain_streaming()
            && self.flows.iter().all(|f| f.buffer.is_none() && !f.eof)
    }

    /// Hands the bytes to the driver: the engine's buffers are not used again.
    pub fn start_splice(&mut self, pool: &mut BufferPool) {
        debug_assert!(self.can_splice(), "only plain streaming connections with empty flows are spliced");
        for flow in &mut self.flows {
            Self::release_buffer(pool, flow);
        }
        self.spliced = true;
    }

    /// The driver moved `n` bytes from `side` to the other side.
    pub fn on_spliced(&mut self, now: Time, side: Side, n: usize) {
        self.flows[side.index()].bytes += n as u64;
        self.last_activity = now;
    }

    // ---- TLS ---------------------------------------------------------------

    /// `Hello`: more ClientHello bytes (or the client's FIN) arrived.
    fn on_hello(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> Outcome {
        let flow = &self.flows[Side::Client.index()];
        let data = flow.buffer.as_ref().map_or(&[][..], RingBuffer::data);
        match peek_sni(data) {
            Peek::NeedMore if data.len() >= CLIENT_HELLO_BYTES_MAX.min(ctx.pool.buffer_bytes()) => {
                log::info!("{} -> {}: ClientHello larger than {} bytes, closed", self.peer, self.local, data.len());
                self.close(ctx, id, CloseReason::NotTls)
            }
            Peek::NeedMore if flow.eof => self.close(ctx, id, CloseReason::NotTls),
            Peek::NeedMore => Outcome::Open,
            Peek::NotTls => {
                log::info!("{} -> {}: not a TLS ClientHello on a TLS listener, closed", self.peer, self.local);
                self.close(ctx, id, CloseReason::NotTls)
            }
            Peek::Sni(sni) => self.on_client_hello(ctx, id, sni),
        }
    }

    /// The ClientHello is complete: route by its SNI, then terminate or pass through.
    fn on_client_hello(&mut self, ctx: &mut Ctx<'_>, id: ConnId, sni: Option<String>) -> Outcome {
        let sni = sni.or_else(|| ctx.config.fallback_sni.clone());
        let input = MatchInput {
            server_addr: self.local.ip(),
            server_port: self.local.port(),
            remote_addr: self.peer.ip(),
            sni: sni.as_deref(),
        };
        let (passthrough_route, route_id, upstream) = match ctx.snapshot.route(&input) {
            Ok((route, upstream)) => (route.tls_passthrough, route.id.clone(), upstream),
            Err(_) => {
                log::info!("{} -> {} (sni {:?}): not hit any route", self.peer, self.local, sni);
                return self.close(ctx, id, CloseReason::NoRoute);
            }
        };
        self.route_id = route_id;
        self.upstream = Some(upstream);
        let tls = self.tls.as_mut().expect("a Hello connection has TLS state");
        tls.sni = sni.clone();
        let passthrough = match tls.listen {
            ListenTls::Passthrough => true,
            ListenTls::Mixed => passthrough_route,
            ListenTls::Terminate | ListenTls::Plain => false,
        };
        if passthrough {
            // The ClientHello stays in the client flow and goes to the node untouched.
            tls.handshake_deadline = None;
            return match self.pick_and_connect(ctx, id) {
                Ok(()) => Outcome::Open,
                Err(reason) => self.close(ctx, id, reason),
            };
        }
        let Some(name) = sni else {
            log::info!(
                "{} -> {}: failed to find SNI: please check if the client requests via IP or uses an outdated protocol",
                self.peer,
                self.local
            );
            return self.refuse(ctx, Refuse::HandshakeFailure);
        };
        let Some((ssl_id, config)) = ctx.snapshot.certs().find(&name) else {
            log::info!("{} -> {}: failed to match any SSL certificate by SNI: {name}", self.peer, self.local);
            return self.refuse(ctx, Refuse::UnrecognizedName);
        };
        log::debug!("{} -> {}: sni {name}: ssl [{ssl_id}], stream route [{}]", self.peer, self.local, self.route_id);
        let hello = self.flows[Side::Client.index()].buffer.take();
        let layer = TlsLayer::accepting(config.clone(), Some(name), hello, ctx.pool.buffer_bytes());
        tls.layers[Side::Client.index()] = Some(layer);
        let deadline = tls.handshake_deadline.unwrap_or(ctx.now + ctx.config.tls_handshake_timeout);
        self.phase = Phase::Handshaking { deadline };
        self.after_tls_io(ctx, id)
    }

    /// Refuses a handshake before any TLS session exists: a fatal alert in the
    /// clear, then close.
    fn refuse(&mut self, ctx: &mut Ctx<'_>, why: Refuse) -> Outcome {
        for flow in &mut self.flows {
            Self::release_buffer(ctx.pool, flow);
        }
        // write_buf(Client) of a side without TLS layer is the upstream flow.
        let mut alert = ctx.pool.take();
        alert.push(&why.alert_record());
        self.flows[Side::Upstream.index()].buffer = Some(alert);
        self.phase = Phase::Refusing { deadline: ctx.now + ctx.config.tls_handshake_timeout };
        Outcome::Open
    }

    /// `Refusing`: once the alert is written, close.
    fn close_if_refusal_sent(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> Outcome {
        if self.write_buf(Side::Client).is_empty() {
            return self.close(ctx, id, CloseReason::TlsRefused);
        }
        Outcome::Open
    }

    /// After bytes moved on a connection with TLS: run each TLS layer, note
    /// finished handshakes, and pass FINs on.
    fn after_tls_io(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> Outcome {
        let both = self.tls.as_ref().is_some_and(|t| t.layers.iter().all(Option::is_some));
        // With TLS on both sides, plaintext one layer produced may be what the
        // other must encrypt: a second round moves it.
        for _ in 0..if both { 2 } else { 1 } {
            for side in Side::BOTH {
                let Some(tls) = self.tls.as_mut() else { break };
                let Some(layer) = tls.layers[side.index()].as_mut() else { continue };
                let [client, upstream] = &mut self.flows;
                let (from_peer, to_peer) = match side {
                    Side::Client => (client, upstream),
                    Side::Upstream => (upstream, client),
                };
                match layer.pump(ctx.pool, from_peer, to_peer) {
                    Ok(pumped) if pumped.handshake_done => {
                        if let Outcome::Closed = self.on_handshake_done(ctx, id, side) {
                            return Outcome::Closed;
                        }
                    }
                    Ok(_) => {}
                    Err(why) => return self.on_tls_failed(ctx, id, side, &why),
                }
            }
        }
        if matches!(self.phase, Phase::Handshaking { .. }) {
            if self.layer(Side::Client).is_some_and(|l| l.eof_in) {
                return self.close(ctx, id, CloseReason::TlsRefused);
            }
            return Outcome::Open;
        }
        if let Outcome::Closed = self.forward_eof_if_drained(ctx, id, Side::Client) {
            return Outcome::Closed;
        }
        self.forward_eof_if_drained(ctx, id, Side::Upstream)
    }

    fn on_handshake_done(&mut self, ctx: &mut Ctx<'_>, id: ConnId, side: Side) -> Outcome {
        let tls = self.tls.as_mut().expect("a TLS layer lives in TLS state");
        if tls.handshake_deadline.is_some() {
            let pending = match self.phase {
                // The upstream's handshake may still be under way.
                Phase::Streaming => side == Side::Client && tls.layers[Side::Upstream.index()].is_some(),
                _ => false,
            };
            if !pending {
                tls.handshake_deadline = None;
            }
        }
        if side == Side::Client && matches!(self.phase, Phase::Handshaking { .. }) {
            // The client is verified: now pick the node and connect.
            if let Err(reason) = self.pick_and_connect(ctx, id) {
                return self.close(ctx, id, reason);
            }
        }
        Outcome::Open
    }

    fn on_tls_failed(&mut self, ctx: &mut Ctx<'_>, id: ConnId, side: Side, why: &str) -> Outcome {
        match side {
            Side::Client => {
                log::info!("{} -> {}: TLS with the client failed: {why}", self.peer, self.local);
                if matches!(self.phase, Phase::Hello { .. } | Phase::Handshaking { .. }) {
                    // No upstream socket yet: write rustls's alert, then close.
                    self.phase = Phase::Refusing { deadline: ctx.now + ctx.config.tls_handshake_timeout };
                    return self.close_if_refusal_sent(ctx, id);
                }
                self.close(ctx, id, CloseReason::TlsError)
            }
            Side::Upstream => {
                log::warn!(
                    "stream route [{}]: TLS with upstream {} failed: {why}",
                    self.route_id,
                    self.upstream().addrs[self.node]
                );
                self.close(ctx, id, CloseReason::TlsError)
            }
        }
    }

    fn close(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) -> Outcome {
        for flow in &mut self.flows {
            Self::release_buffer(ctx.pool, flow);
        }
        if let Some(tls) = self.tls.as_mut() {
            for layer in tls.layers.iter_mut().flatten() {
                layer.release_buffers(ctx.pool);
            }
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
        let now = ctx.now;
        ctx.records.push_with(|| crate::session_record::SessionRecord {
            protocol: crate::config::Protocol::Tcp,
            peer: self.peer,
            local: self.local,
            route_id: self.route_id.clone(),
            upstream: self.upstream_addr,
            status: reason.status(),
            bytes_from_client: self.flows[Side::Client.index()].bytes,
            bytes_from_upstream: self.flows[Side::Upstream.index()].bytes,
            duration: self.accepted.until(now),
        });
        Outcome::Closed
    }

    /// Passive health: what this connection saw of its node.
    fn report_health(&self, event: HealthEvent) {
        let Some(upstream) = &self.upstream else { return };
        if let (Some(node), Some(checks)) = (upstream.health.get(self.node), &upstream.config.checks) {
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
        let flows = self.flows.iter().filter(|f| f.buffer.is_some()).count();
        match &self.tls {
            None => flows,
            Some(tls) => flows + tls.layers.iter().flatten().map(TlsLayer::buffers_held).sum::<usize>(),
        }
    }
}
