//! The simulated driver: feeds the real `Engine` exactly as the mio driver
//! would (events in, `poll_action` drained after every call, `poll_timeout`
//! honoured on a virtual clock), steps the world through the grammar, and
//! checks every action the engine asks for against what must be true.

mod probes;
mod udp;

use crate::grammar::{Step, Swarm};
use crate::invariants::{allowed_picks, expected_upstream, may_find_none, ExpectedUpstream, HealthSeen, WrrCheck};
use crate::models::{node_addr, ConfigModel, NodeBehaviour, NODE_ADDRS};
use crate::net::{Pipe, FROM_CLIENT, FROM_UPSTREAM};
use crate::rng::Rng;
use crate::trace::Trace;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::router::{reference, MatchInput};
use strait_engine::snapshot::{ResolvedUpstream, RouteTarget};
use strait_engine::{Action, ConnId, ConnectError, Engine, EngineConfig, ListenerId, ProbeId, Refusal, Side, Time};
use strait_engine::{SessionId, Snapshot};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

/// Rounds of the per-connection I/O loop before it counts as a livelock.
const PUMP_ROUNDS_MAX: usize = 1_000_000;
/// Wake-ups the final drain may take before a leftover connection is a leak.
const DRAIN_WAKEUPS_MAX: usize = 100_000;

const PEER_IPS: [&str; 8] =
    ["127.0.0.1", "10.1.2.3", "10.2.0.9", "192.168.1.5", "::1", "2001:db8::5", "::ffff:10.1.2.3", "8.8.8.8"];
const LOCAL_V4: [&str; 2] = ["127.0.0.1", "10.0.0.1"];
const LOCAL_V6: [&str; 3] = ["::1", "2001:db8::1", "::ffff:127.0.0.1"];

/// What the simulator knows about one proxied connection.
struct SimConn {
    k: u64,
    client: Pipe,
    /// Present once a connect succeeded.
    upstream: Option<Pipe>,
    expected: ExpectedUpstream,
    /// The upstream as the engine resolved it when the connection was
    /// accepted: its nodes' health is what the control plane shows.
    resolved: Arc<ResolvedUpstream>,
    /// Node indexes tried, in order.
    tried: Vec<usize>,
    /// Bumped per `Connect`: completions of older attempts are dropped, as a
    /// driver drops the socket a retry replaces.
    attempt: u32,
    attempt_started: Time,
    /// A failure of the current attempt was reported to the engine.
    attempt_failed: bool,
    first_pick: Time,
    /// The simulator fed a reset of a streaming side or of the client.
    fed_reset: bool,
    /// `Shutdown` seen per side (index = `Side::index`).
    shutdown: [bool; 2],
    /// When the engine last saw bytes move (its idle clock).
    last_activity: Time,
}

impl SimConn {
    fn pipe(&mut self, side: Side) -> Option<&mut Pipe> {
        match side {
            Side::Client => Some(&mut self.client),
            Side::Upstream => self.upstream.as_mut(),
        }
    }
}

enum Event {
    ConnectDone {
        conn: ConnId,
        attempt: u32,
        result: Result<(), ConnectError>,
    },
    /// A datagram from a UDP session's node arrives at the proxy.
    UdpReply {
        session: SessionId,
    },
    /// The proxy's session socket gets an ICMP port unreachable (ECONNREFUSED).
    UdpError {
        session: SessionId,
    },
    /// An active probe's connect finished.
    ProbeDone {
        probe: ProbeId,
        result: Result<(), ConnectError>,
    },
}

/// Counts that show a run exercised what it claims to.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub steps: u64,
    pub accepted: u64,
    pub refused: u64,
    pub finished: u64,
    pub reset_closes: u64,
    pub idle_closes: u64,
    /// Idle closes while the engine still held bytes it had read.
    pub idle_closes_dropping_bytes: u64,
    pub unreachable_closes: u64,
    pub retries: u64,
    pub bytes_delivered: u64,
    pub wrr_windows: u64,
    pub udp_sessions: u64,
    pub udp_datagrams_up: u64,
    pub udp_replies: u64,
    pub udp_dropped: u64,
    pub udp_idle_closes: u64,
    pub udp_response_closes: u64,
    pub udp_error_closes: u64,
    pub probes: u64,
    pub probe_timeouts: u64,
    /// Picks made while some node of the upstream was unhealthy.
    pub picks_with_unhealthy: u64,
}

impl SimStats {
    /// Adds another run's counts to these.
    pub fn add(&mut self, o: &SimStats) {
        self.steps += o.steps;
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.finished += o.finished;
        self.reset_closes += o.reset_closes;
        self.idle_closes += o.idle_closes;
        self.idle_closes_dropping_bytes += o.idle_closes_dropping_bytes;
        self.unreachable_closes += o.unreachable_closes;
        self.retries += o.retries;
        self.bytes_delivered += o.bytes_delivered;
        self.wrr_windows += o.wrr_windows;
        self.udp_sessions += o.udp_sessions;
        self.udp_datagrams_up += o.udp_datagrams_up;
        self.udp_replies += o.udp_replies;
        self.udp_dropped += o.udp_dropped;
        self.udp_idle_closes += o.udp_idle_closes;
        self.udp_response_closes += o.udp_response_closes;
        self.udp_error_closes += o.udp_error_closes;
        self.probes += o.probes;
        self.probe_timeouts += o.probe_timeouts;
        self.picks_with_unhealthy += o.picks_with_unhealthy;
    }
}

pub struct Sim {
    rng: Rng,
    pub swarm: Swarm,
    now: Time,
    engine: Engine,
    pub trace: Trace,
    listeners: Vec<ListenSpec>,
    config: ConfigModel,
    nodes: BTreeMap<SocketAddr, NodeBehaviour>,
    conns: BTreeMap<ConnId, SimConn>,
    queue: BTreeMap<(Time, u64), Event>,
    seq: u64,
    next_k: u64,
    wrr: WrrCheck,
    udp: udp::UdpWorld,
    probes: probes::ProbeWorld,
    /// Node health as of the end of the previous engine call.
    health_seen: HealthSeen,
    /// The final drain: peers send nothing more.
    draining: bool,
    /// `begin_shutdown` was called: every accept is refused.
    shutting_down: bool,
    /// `abort_all` is running: resets need no reset from a peer.
    aborting: bool,
    pub stats: SimStats,
}

fn listen(protocol: Protocol, addr: &str) -> ListenSpec {
    ListenSpec {
        protocol,
        addr: addr.parse().expect("listener addresses are literals"),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address pools are literals")
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let swarm = Swarm::draw(&mut rng);
        let config = ConfigModel::new(&mut rng, swarm.config.clone());
        let listeners = vec![
            listen(Protocol::Tcp, "0.0.0.0:9100"),
            listen(Protocol::Tcp, "0.0.0.0:9101"),
            listen(Protocol::Tcp, "[::]:9102"),
            listen(Protocol::Udp, "0.0.0.0:9100"),
            listen(Protocol::Udp, "[::]:9101"),
        ];
        let engine_config = EngineConfig {
            seed: rng.next_u64(),
            buffer_bytes: swarm.buffer_bytes,
            max_connections: swarm.max_connections,
            spare_buffers_max: *rng.pick(&[0, 2, 256]),
            udp_sessions_max: swarm.udp_sessions_max,
            udp_idle_timeout: std::time::Duration::from_secs(swarm.udp_idle_timeout_s),
            udp_proxy_responses: swarm.udp_proxy_responses,
            run_active_checks: swarm.run_active_checks,
            ..EngineConfig::default()
        };
        // Every other seed also collects access-log records (no draw from rng: old seeds replay as before).
        let engine_config = EngineConfig { session_records: engine_config.seed.is_multiple_of(2), ..engine_config };
        let engine = Engine::new(listeners.clone(), Arc::new(config.snapshot()), engine_config);
        let mut sim = Sim {
            rng,
            swarm,
            now: Time::from_nanos(S),
            engine,
            trace: Trace::new(),
            listeners,
            config,
            nodes: BTreeMap::new(),
            conns: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            next_k: 0,
            wrr: WrrCheck::default(),
            udp: udp::UdpWorld::default(),
            probes: probes::ProbeWorld::default(),
            health_seen: HealthSeen::default(),
            draining: false,
            shutting_down: false,
            aborting: false,
            stats: SimStats::default(),
        };
        for addr in NODE_ADDRS {
            if sim.rng.chance(0.9) {
                let b = sim.draw_behaviour();
                sim.nodes.insert(node_addr(addr), b);
            }
        }
        sim
    }

    /// Runs `steps` grammar steps, then drains the world to zero.
    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            let jitter = self.rng.below(MS);
            self.advance(self.now.as_nanos() + jitter);
            let step = self.swarm.next_step(&mut self.rng);
            self.step(step);
            self.check_counts();
            self.stats.steps += 1;
        }
        if self.rng.chance(0.2) {
            self.shut_down();
        }
        self.drain();
        self.stats.wrr_windows = self.wrr.windows_checked;
    }

    fn ev(&mut self, tag: &str, args: &[u64]) {
        self.trace.event(self.now.as_nanos(), tag, args);
    }

    fn ev_conn(&mut self, tag: &str, id: ConnId, args: &[u64]) {
        let mut all = [0u64; 6];
        all[0] = u64::from(id.index);
        all[1] = u64::from(id.generation);
        all[2..2 + args.len()].copy_from_slice(args);
        self.trace.event(self.now.as_nanos(), tag, &all[..2 + args.len()]);
    }

    fn draw_behaviour(&mut self) -> NodeBehaviour {
        let s = &self.swarm;
        let (refuse, hole, unreach) = (s.refuse_rate, s.blackhole_rate, s.unreachable_rate);
        if self.rng.chance(refuse) {
            NodeBehaviour::Refuses
        } else if self.rng.chance(hole) {
            NodeBehaviour::BlackHole
        } else if self.rng.chance(unreach) {
            NodeBehaviour::Unreachable
        } else {
            NodeBehaviour::Up
        }
    }

    fn new_pipe(&mut self, k: u64, sends: u8) -> Pipe {
        let eager = self.draining || !self.rng.chance(self.swarm.slow_reader_rate);
        Pipe::new(k, sends, self.swarm.window_bytes, eager)
    }

    fn chunk(&mut self) -> usize {
        self.rng.skewed(self.swarm.io_max as u64) as usize
    }

    // ---- time -------------------------------------------------------------

    /// Moves the clock to `to`, firing engine deadlines and scheduled events
    /// on the way, in time order.
    fn advance(&mut self, to: u64) {
        loop {
            let timer = self.engine.poll_timeout().map(Time::as_nanos);
            let event = self.queue.first_key_value().map(|(k, _)| k.0.as_nanos());
            let next = match (timer, event) {
                (Some(t), Some(e)) => t.min(e),
                (a, b) => match a.or(b) {
                    Some(n) => n,
                    None => break,
                },
            };
            if next > to {
                break;
            }
            self.now = Time::from_nanos(next.max(self.now.as_nanos()));
            if timer.is_some_and(|t| t <= self.now.as_nanos()) {
                self.ev("timeout", &[]);
                self.engine.handle_timeout(self.now);
                self.drain_actions();
            } else {
                let (_, event) = self.queue.pop_first().expect("peeked above");
                self.handle_event(event);
            }
        }
        self.now = Time::from_nanos(to.max(self.now.as_nanos()));
    }

    fn schedule(&mut self, after_ns: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((Time::from_nanos(self.now.as_nanos() + after_ns), self.seq), event);
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::ConnectDone { conn, attempt, result } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                if c.attempt != attempt {
                    return; // a retry replaced that socket
                }
                let k = c.k;
                match result {
                    Ok(()) => {
                        let mut pipe = self.new_pipe(k, FROM_UPSTREAM);
                        if self.draining {
                            pipe.peer_fin = true;
                        }
                        let c = self.conns.get_mut(&conn).expect("checked above");
                        c.upstream = Some(pipe);
                        c.last_activity = self.now;
                        self.ev_conn("connected", conn, &[]);
                    }
                    Err(e) => {
                        let c = self.conns.get_mut(&conn).expect("checked above");
                        c.attempt_failed = true;
                        self.ev_conn("connect_failed", conn, &[e as u64]);
                    }
                }
                self.engine.handle_connected(self.now, conn, result);
                self.drain_actions();
                self.pump(conn);
            }
            Event::UdpReply { session } => self.udp_reply(session),
            Event::UdpError { session } => self.udp_error(session),
            Event::ProbeDone { probe, result } => self.probe_done(probe, result),
        }
    }

    // ---- actions ----------------------------------------------------------

    fn drain_actions(&mut self) {
        while let Some(record) = self.engine.poll_session_record() {
            assert!(
                [200, 400, 403, 500, 502, 503].contains(&record.status),
                "an access-log status is one nginx's stream module logs: {record:?}"
            );
        }
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Connect { conn, addr } => self.on_connect(conn, addr),
                Action::Shutdown { conn, side } => self.on_shutdown(conn, side),
                Action::Close { conn, reset } => self.on_close(conn, reset),
                Action::UdpConnect { session, addr } => self.on_udp_connect(session, addr),
                Action::UdpClose { session } => self.on_udp_close(session),
                Action::Probe { probe, addr } => self.on_probe(probe, addr),
                Action::ProbeCancel { probe } => self.on_probe_cancel(probe),
                Action::Splice { conn } => {
                    panic!("splice is granted only to a driver that can splice, and this one says it cannot: {conn:?}")
                }
            }
        }
        self.record_health();
    }

    /// Notes every node's health after an engine call (see `HealthSeen`).
    fn record_health(&mut self) {
        let snapshot = self.engine.snapshot().clone();
        let conns = self.conns.values().map(|c| &c.resolved);
        let sessions = self.udp.sessions.values().map(|s| &s.resolved);
        self.health_seen.record(snapshot.upstreams().iter().chain(conns).chain(sessions));
    }

    /// Checks a pick of node `index` of `up` after `tried`: an untried node, a
    /// healthy one unless every remaining node is unhealthy, from the highest
    /// priority group of those (judged by the health before or after the call).
    fn check_pick(&mut self, up: &Arc<ResolvedUpstream>, tried: &[usize], index: usize, what: &str) {
        let before = allowed_picks(&up.priorities, tried, |i| self.health_seen.before(up, i));
        let after = allowed_picks(&up.priorities, tried, |i| crate::invariants::node_healthy(up, i));
        if (0..up.addrs.len()).any(|i| !crate::invariants::node_healthy(up, i)) {
            self.stats.picks_with_unhealthy += 1;
        }
        assert!(
            before.contains(&index) || after.contains(&index),
            "{what} goes to an untried node, healthy unless every remaining node is unhealthy, of the highest \
             priority group among those: picked node {index} ({}) of {}, tried {tried:?}, allowed {before:?} \
             (health before the call) or {after:?} (after), health {:?}, priorities {:?}",
            up.addrs[index],
            up.key,
            (0..up.addrs.len()).map(|i| crate::invariants::node_healthy(up, i)).collect::<Vec<_>>(),
            up.priorities
        );
    }

    /// Whether the balancer may legitimately find no node after `tried`.
    fn may_find_none(&self, expected: &ExpectedUpstream, up: &ResolvedUpstream, tried: &[usize]) -> bool {
        let before = allowed_picks(&up.priorities, tried, |i| self.health_seen.before(up, i));
        let after = allowed_picks(&up.priorities, tried, |i| crate::invariants::node_healthy(up, i));
        may_find_none(expected, &before) || may_find_none(expected, &after)
    }

    fn on_connect(&mut self, conn: ConnId, addr: SocketAddr) {
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("a Connect names a live connection");
        assert!(c.upstream.is_none(), "a Connect is asked for only while connecting");
        let index = c.expected.addrs.iter().position(|a| *a == addr).unwrap_or_else(|| {
            panic!("a connection goes only to nodes of its route's upstream: {addr} not in {:?}", c.expected.addrs)
        });
        let retry = !c.tried.is_empty();
        if retry {
            assert!(!c.tried.contains(&index), "a retry goes to a node not tried yet ({addr}, tried {:?})", c.tried);
            assert!(c.tried.len() < c.expected.max_tries, "tries stay within 1 + retries ({})", c.expected.max_tries);
            if !c.attempt_failed {
                assert!(
                    now >= c.attempt_started + c.expected.connect_timeout,
                    "a connect is given up no earlier than connect_timeout"
                );
            }
            let rt = c.expected.retry_timeout;
            assert!(rt.is_zero() || now < c.first_pick + rt, "no retry once retry_timeout has passed");
        }
        let (resolved, tried) = (c.resolved.clone(), c.tried.clone());
        self.check_pick(&resolved, &tried, index, "a connection");
        let c = self.conns.get_mut(&conn).expect("checked above");
        c.tried.push(index);
        c.attempt += 1;
        c.attempt_started = now;
        c.attempt_failed = false;
        let attempt = c.attempt;
        let expected = c.expected.clone();
        self.wrr.pick(&expected, index, retry);
        if retry {
            self.stats.retries += 1;
        }
        self.ev_conn("connect", conn, &[index as u64, u64::from(attempt)]);
        let latency = self.rng.range(0, self.swarm.latency_max_us) * 1000;
        let result = match self.nodes.get(&addr) {
            None | Some(NodeBehaviour::Refuses) => Err(ConnectError::Refused),
            Some(NodeBehaviour::Unreachable) => Err(ConnectError::Other),
            Some(NodeBehaviour::Up) => Ok(()),
            Some(NodeBehaviour::BlackHole) => return,
        };
        self.schedule(latency, Event::ConnectDone { conn, attempt, result });
    }

    fn on_shutdown(&mut self, conn: ConnId, side: Side) {
        self.ev_conn("shutdown", conn, &[side.index() as u64]);
        let c = self.conns.get_mut(&conn).expect("a Shutdown names a live connection");
        assert!(!c.shutdown[side.index()], "a FIN is forwarded once per side");
        c.shutdown[side.index()] = true;
        let (source_sent, source_fin) = {
            let source = c.pipe(side.other()).expect("a FIN is forwarded only from a connected side");
            (source.peer_sent, source.peer_fin && source.fin_read)
        };
        assert!(source_fin, "a FIN is forwarded only after its sender's FIN was read (k={}, to {side:?})", c.k);
        let k = c.k;
        let dest = c.pipe(side).expect("a FIN is forwarded only to a connected side");
        assert_eq!(
            dest.proxy_written, source_sent,
            "a FIN is forwarded only after every byte before it (k={k}, to {side:?})"
        );
        dest.proxy_fin = true;
        if dest.eager {
            dest.peer_read(usize::MAX);
        }
    }

    fn on_close(&mut self, conn: ConnId, reset: bool) {
        self.ev_conn("close", conn, &[u64::from(reset)]);
        let mut c = self.conns.remove(&conn).expect("a Close names a live connection");
        let now = self.now;
        if reset {
            assert!(
                c.fed_reset || self.aborting,
                "a connection is reset only after one of its sides reset (k={})",
                c.k
            );
            self.stats.reset_closes += 1;
        } else if c.shutdown == [true, true] {
            self.stats.finished += 1;
        } else if c.upstream.is_none() {
            let e = &c.expected;
            let out_of_time = !e.retry_timeout.is_zero() && now >= c.first_pick + e.retry_timeout;
            let none_left = self.may_find_none(e, &c.resolved, &c.tried);
            assert!(
                c.tried.len() >= e.max_tries || c.tried.len() == e.addrs.len() || out_of_time || none_left,
                "an unreachable upstream is given up only when out of tries, nodes or time (k={}, tried {:?} of {:?}, max {})",
                c.k, c.tried, e.addrs, e.max_tries
            );
            assert!(
                c.attempt_failed || now >= c.attempt_started + e.connect_timeout,
                "a connect is given up no earlier than connect_timeout (k={})",
                c.k
            );
            self.stats.unreachable_closes += 1;
        } else {
            assert!(
                now >= c.last_activity + c.expected.idle_timeout,
                "a connection is closed for idleness only after idle_timeout of quiet (k={}, quiet for {:?} of {:?})",
                c.k,
                now - c.last_activity,
                c.expected.idle_timeout
            );
            self.stats.idle_closes += 1;
            // Allowed (nginx's proxy_timeout does the same), but counted: bytes the
            // engine had taken from one peer die with a close the other sees as clean.
            let up = c.upstream.as_ref().expect("connected");
            let taken_up = c.client.peer_sent - c.client.inbox.len() as u64;
            let taken_down = up.peer_sent - up.inbox.len() as u64;
            if taken_up > up.proxy_written || taken_down > c.client.proxy_written {
                self.stats.idle_closes_dropping_bytes += 1;
            }
        }
        c.client.proxy_close(reset);
        if let Some(up) = c.upstream.as_mut() {
            up.proxy_close(reset);
        }
        if !reset && c.shutdown == [true, true] {
            let up = c.upstream.as_ref().expect("finished implies connected");
            assert!(
                up.peer_received == c.client.peer_sent
                    && c.client.peer_received == up.peer_sent
                    && up.peer_saw_eof
                    && c.client.peer_saw_eof,
                "a finished connection delivered every byte and FIN both ways (k={})",
                c.k
            );
            self.stats.bytes_delivered += up.peer_received + c.client.peer_received;
        }
    }

    // ---- the per-connection I/O loop --------------------------------------

    /// Reads and writes every side of `id` that can move, until nothing can:
    /// what a driver does after any event on a connection.
    fn pump(&mut self, id: ConnId) {
        for _ in 0..PUMP_ROUNDS_MAX {
            let mut progress = false;
            for side in Side::BOTH {
                progress |= self.try_read(id, side);
                progress |= self.try_write(id, side);
                progress |= self.eager_read(id, side);
            }
            if !progress {
                return;
            }
        }
        panic!("the I/O loop of one connection never runs dry (livelock)");
    }

    fn try_read(&mut self, id: ConnId, side: Side) -> bool {
        let chunk = self.chunk();
        let now = self.now;
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        let Some(pipe) = c.pipe(side) else {
            return false;
        };
        if !pipe.readable() {
            return false;
        }
        let Some(buf) = self.engine.read_buf(id, side) else {
            return false; // back-pressure: the engine's buffer is full
        };
        assert!(!buf.is_empty(), "read_buf hands out room or None");
        if pipe.inbox.is_empty() {
            pipe.fin_read = true;
            self.trace.event(now.as_nanos(), "read_fin", &[u64::from(id.index), side.index() as u64]);
            self.engine.handle_read(now, id, side, 0);
            self.drain_actions();
            return true;
        }
        let len = buf.len().min(chunk);
        let n = pipe.proxy_read(&mut buf[..len]);
        let blocked = pipe.inbox.is_empty() && !pipe.peer_fin;
        c.last_activity = now;
        self.trace.event(now.as_nanos(), "read", &[u64::from(id.index), side.index() as u64, n as u64]);
        self.engine.handle_read(now, id, side, n);
        self.drain_actions();
        if blocked && self.conns.contains_key(&id) {
            // Reading on would say WouldBlock: tell the engine, as a driver does.
            self.engine.handle_read_blocked(id, side);
        }
        true
    }

    fn try_write(&mut self, id: ConnId, side: Side) -> bool {
        let chunk = self.chunk();
        let now = self.now;
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        let data = self.engine.write_buf(id, side);
        if data.is_empty() {
            return false;
        }
        let k = c.k;
        let pipe = c.pipe(side).unwrap_or_else(|| panic!("the engine writes only to a connected upstream (k={k})"));
        let n = data.len().min(pipe.outbox_space()).min(chunk);
        if n == 0 {
            return false; // the peer's window is full: wait for it to read
        }
        pipe.proxy_write(&data[..n]);
        c.last_activity = now;
        self.trace.event(now.as_nanos(), "write", &[u64::from(id.index), side.index() as u64, n as u64]);
        self.engine.handle_written(now, id, side, n);
        self.drain_actions();
        true
    }

    fn eager_read(&mut self, id: ConnId, side: Side) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        match c.pipe(side) {
            Some(p) if p.eager && !p.outbox.is_empty() => p.peer_read(usize::MAX) > 0,
            _ => false,
        }
    }

    // ---- grammar steps ----------------------------------------------------

    /// A random live connection satisfying `want`, if any.
    fn pick_conn(&mut self, want: impl Fn(&SimConn) -> bool) -> Option<ConnId> {
        let ids: Vec<ConnId> = self.conns.iter().filter(|(_, c)| want(c)).map(|(id, _)| *id).collect();
        (!ids.is_empty()).then(|| *self.rng.pick(&ids))
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Accept => self.accept(),
            Step::ClientSends | Step::UpstreamSends => {
                let side = if step == Step::ClientSends { Side::Client } else { Side::Upstream };
                let Some(id) = self.pick_conn(|c| match side {
                    Side::Client => c.client.peer_can_send(),
                    Side::Upstream => c.upstream.as_ref().is_some_and(Pipe::peer_can_send),
                }) else {
                    return;
                };
                let n = self.rng.skewed(self.swarm.send_max);
                self.ev_conn("peer_send", id, &[side.index() as u64, n]);
                let c = self.conns.get_mut(&id).expect("picked live");
                c.pipe(side).expect("filtered").peer_send(n);
                self.pump(id);
            }
            Step::ClientFin | Step::UpstreamFin => {
                let side = if step == Step::ClientFin { Side::Client } else { Side::Upstream };
                let Some(id) = self.pick_conn(|c| match side {
                    Side::Client => c.client.peer_can_send(),
                    Side::Upstream => c.upstream.as_ref().is_some_and(Pipe::peer_can_send),
                }) else {
                    return;
                };
                self.ev_conn("peer_fin", id, &[side.index() as u64]);
                let c = self.conns.get_mut(&id).expect("picked live");
                c.pipe(side).expect("filtered").peer_fin = true;
                self.pump(id);
            }
            Step::ClientReset => {
                let Some(id) = self.pick_conn(|_| true) else {
                    return;
                };
                self.feed_reset(id, Side::Client);
            }
            Step::UpstreamDies => {
                let Some(id) = self.pick_conn(|_| true) else {
                    return;
                };
                self.feed_reset(id, Side::Upstream);
            }
            Step::SlowReaderReads => {
                let Some(id) = self.pick_conn(|c| {
                    !c.client.outbox.is_empty() || c.upstream.as_ref().is_some_and(|u| !u.outbox.is_empty())
                }) else {
                    return;
                };
                let n = self.rng.skewed(self.swarm.window_bytes as u64) as usize;
                let side = if self.rng.chance(0.5) { Side::Client } else { Side::Upstream };
                self.ev_conn("peer_read", id, &[side.index() as u64, n as u64]);
                let c = self.conns.get_mut(&id).expect("picked live");
                if let Some(p) = c.pipe(side) {
                    p.peer_read(n);
                }
                self.pump(id);
            }
            Step::ToggleReader => {
                let Some(id) = self.pick_conn(|_| true) else {
                    return;
                };
                let side = if self.rng.chance(0.5) { Side::Client } else { Side::Upstream };
                self.ev_conn("toggle_reader", id, &[side.index() as u64]);
                let c = self.conns.get_mut(&id).expect("picked live");
                if let Some(p) = c.pipe(side) {
                    p.eager = !p.eager;
                }
                self.pump(id);
            }
            Step::NodeChanges => {
                let addr = node_addr(self.rng.pick_copy(&NODE_ADDRS));
                if self.rng.chance(0.2) {
                    self.nodes.remove(&addr);
                    self.ev("node_gone", &[]);
                } else {
                    let b = self.draw_behaviour();
                    self.ev("node", &[b as u64]);
                    self.nodes.insert(addr, b);
                }
            }
            Step::ConfigChanges => {
                self.config.mutate(&mut self.rng);
                let snapshot = Arc::new(self.config.snapshot());
                self.ev("snapshot", &[snapshot.version]);
                self.wrr.retain_keys(snapshot.upstream_keys());
                self.engine.handle_snapshot(self.now, snapshot);
                self.drain_actions();
            }
            Step::Idle => {
                let max = 2 * self.swarm.config.idle_max_s * S;
                let d = self.rng.range(0, max);
                self.ev("idle", &[d]);
                self.advance(self.now.as_nanos() + d);
            }
            Step::Tick => {
                let d = self.rng.range(0, 300 * MS);
                self.advance(self.now.as_nanos() + d);
            }
            Step::UdpClientSends => self.udp_client_sends(),
            Step::UdpUpstreamSends => self.udp_upstream_sends(),
        }
    }

    fn accept(&mut self) {
        let li = self.rng.weighted(&[10, 10, 10, 1, 1]);
        let spec = self.listeners[li].clone();
        let local_ip =
            if spec.addr.is_ipv4() { ip(self.rng.pick_copy(&LOCAL_V4)) } else { ip(self.rng.pick_copy(&LOCAL_V6)) };
        let local = SocketAddr::new(local_ip, spec.addr.port());
        let peer = SocketAddr::new(ip(self.rng.pick_copy(&PEER_IPS)), self.rng.range(1024, 65535) as u16);
        let snapshot = self.engine.snapshot().clone();
        let input =
            MatchInput { server_addr: local.ip(), server_port: local.port(), remote_addr: peer.ip(), sni: None };
        let expected: Result<(ExpectedUpstream, Arc<ResolvedUpstream>), Refusal> =
            if spec.protocol == Protocol::Udp || self.shutting_down {
                Err(Refusal::NotAccepting)
            } else if self.conns.len() >= self.swarm.max_connections {
                Err(Refusal::TooManyConnections)
            } else {
                self.expected_route(&snapshot, &input).and_then(|(e, up)| {
                    // chash finds nothing in a group of weight-0 nodes: refused like no node.
                    if self.may_find_none(&e, &up, &[]) {
                        Err(Refusal::NoUpstream)
                    } else {
                        Ok((e, up))
                    }
                })
            };
        let result = self.engine.handle_accept(self.now, ListenerId(li as u32), local, peer);
        match (&result, &expected) {
            (Ok(id), Ok((up, resolved))) => {
                self.stats.accepted += 1;
                let k = self.next_k;
                self.next_k += 1;
                let client = self.new_pipe(k, FROM_CLIENT);
                self.ev_conn("accept", *id, &[k]);
                let conn = SimConn {
                    k,
                    client,
                    upstream: None,
                    expected: up.clone(),
                    resolved: resolved.clone(),
                    tried: Vec::new(),
                    attempt: 0,
                    attempt_started: self.now,
                    attempt_failed: false,
                    first_pick: self.now,
                    fed_reset: false,
                    shutdown: [false; 2],
                    last_activity: self.now,
                };
                assert!(
                    self.conns.insert(*id, conn).is_none(),
                    "a new connection gets an id no live connection has"
                );
                self.drain_actions();
                assert!(
                    self.conns.get(id).is_some_and(|c| c.tried.len() == 1),
                    "an accepted connection asks for exactly one connect at once"
                );
            }
            (Err(got), Err(want)) if got == want => {
                self.stats.refused += 1;
                self.ev("refused", &[*got as u64]);
                self.drain_actions();
            }
            _ => panic!(
                "every connection is routed as the reference matcher says: {peer} -> {local} on listener {li}: engine {:?}, expected {:?}",
                result.map(|_| ()),
                expected.map(|u| u.0.key)
            ),
        }
    }

    /// What the reference matcher and the stored config say a new connection
    /// or session from `input` gets, with the engine's resolved upstream (for
    /// the health the control plane shows).
    fn expected_route(
        &self,
        snapshot: &Snapshot,
        input: &MatchInput<'_>,
    ) -> Result<(ExpectedUpstream, Arc<ResolvedUpstream>), Refusal> {
        let i = reference::match_route(snapshot.routes(), input).ok_or(Refusal::NoRoute)?;
        let expected = expected_upstream(&self.config.resources, &snapshot.routes()[i]).ok_or(Refusal::NoUpstream)?;
        match snapshot.target(i) {
            RouteTarget::Upstream(up) => {
                assert_eq!(up.addrs, expected.addrs, "the snapshot resolves the route's upstream as stored");
                Ok((expected, up.clone()))
            }
            RouteTarget::Unavailable(why) => panic!("the stored config serves the route, the snapshot says {why}"),
        }
    }

    fn feed_reset(&mut self, id: ConnId, side: Side) {
        let c = self.conns.get_mut(&id).expect("picked live");
        let connecting_upstream = side == Side::Upstream && c.upstream.is_none();
        if connecting_upstream {
            // The socket being connected is reset: a failed connect attempt.
            c.attempt_failed = true;
            c.attempt += 1; // its completion, if scheduled, is void
        } else {
            c.fed_reset = true;
        }
        self.ev_conn("reset", id, &[side.index() as u64]);
        self.engine.handle_reset(self.now, id, side);
        self.drain_actions();
        if connecting_upstream {
            self.pump(id);
        } else {
            assert!(!self.conns.contains_key(&id), "a reset closes the connection at once");
        }
    }

    fn check_counts(&self) {
        let live = self.conns.len();
        assert_eq!(self.engine.connection_count(), live, "the engine holds exactly the connections the driver knows");
        let sessions = self.udp.sessions.len();
        assert_eq!(self.engine.session_count(), sessions, "the engine holds exactly the sessions the driver knows");
        assert!(sessions <= self.swarm.udp_sessions_max, "sessions never exceed udp_sessions_max");
        let targets = self.probe_targets().len();
        assert_eq!(
            self.engine.timer_count(),
            live + sessions + targets,
            "one timer per connection, session and probe target of the current config"
        );
        self.check_sessions_expire();
        assert!(self.engine.buffers_in_use() <= 2 * live, "at most two buffers per connection");
    }

    // ---- the end of a run -------------------------------------------------

    /// A worker shutting down: new connections are refused while the old ones
    /// run on; sometimes the drain deadline passes and the rest are reset.
    fn shut_down(&mut self) {
        self.ev("begin_shutdown", &[]);
        self.engine.begin_shutdown();
        self.shutting_down = true;
        for _ in 0..20 {
            let step = self.swarm.next_step(&mut self.rng);
            self.step(step);
            self.check_counts();
        }
        if self.rng.chance(0.5) {
            self.ev("abort_all", &[]);
            self.aborting = true;
            self.engine.abort_all(self.now);
            self.drain_actions();
            self.aborting = false;
            // The engine forgets its probe targets; probes in flight are not
            // cancelled (FOUND.md, noticed): the driver is exiting anyway.
            self.probes.aborted = true;
            self.probes.in_flight.clear();
            assert!(self.conns.is_empty(), "abort_all closes every connection");
            assert!(self.udp.sessions.is_empty(), "abort_all ends every session");
        }
    }

    /// Every peer finishes; every connection must then end and release
    /// everything it held.
    fn drain(&mut self) {
        self.draining = true;
        self.ev("drain", &[]);
        for c in self.conns.values_mut() {
            for p in std::iter::once(&mut c.client).chain(c.upstream.as_mut()) {
                p.eager = true;
                if p.peer_can_send() {
                    p.peer_fin = true;
                }
            }
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.pump(id);
        }
        // No timer has run since: a connected connection still open here has
        // lost a wake-up or failed to forward a FIN.
        if let Some((id, c)) = self.conns.iter().find(|(_, c)| c.upstream.is_some()) {
            panic!(
                "a connection whose peers both finished ends without waiting for a timer: {id:?} k={} shutdown {:?} client sent {} (fin read {}) up sent {:?}",
                c.k,
                c.shutdown,
                c.client.peer_sent,
                c.client.fin_read,
                c.upstream.as_ref().map(|u| (u.peer_sent, u.fin_read, u.proxy_written))
            );
        }
        for _ in 0..DRAIN_WAKEUPS_MAX {
            if self.conns.is_empty() && self.udp.sessions.is_empty() {
                break;
            }
            let timer = self.engine.poll_timeout().map(Time::as_nanos);
            let event = self.queue.first_key_value().map(|(k, _)| k.0.as_nanos());
            let Some(next) = timer.into_iter().chain(event).min() else {
                break;
            };
            self.advance(next);
        }
        assert!(self.conns.is_empty(), "every connection ends once its peers finish ({} left)", self.conns.len());
        assert!(self.udp.sessions.is_empty(), "every UDP session ends once its clients are quiet");
        // The config goes away: every probe target with it.
        self.config.resources = Default::default();
        self.config.version += 1;
        let snapshot = Arc::new(self.config.snapshot());
        self.ev("snapshot", &[snapshot.version]);
        self.engine.handle_snapshot(self.now, snapshot);
        self.drain_actions();
        assert!(
            self.probes.in_flight.is_empty(),
            "a probe in flight is cancelled when its target goes ({:?} left)",
            self.probes.in_flight
        );
        // Late completions (probe results, replies to closed sessions) are stale now.
        if let Some(last) = self.queue.last_key_value().map(|(k, _)| k.0.as_nanos()) {
            self.advance(last);
        }
        self.check_counts();
        assert_eq!(self.engine.connection_count(), 0, "no connection outlives the run");
        assert_eq!(self.engine.session_count(), 0, "no session outlives the run");
        assert_eq!(self.engine.timer_count(), 0, "no timer outlives its connection");
        assert_eq!(self.engine.buffers_in_use(), 0, "no buffer outlives its connection");
    }
}
