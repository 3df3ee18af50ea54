//! The fuzz targets' bodies, shared by the cargo-fuzz crate (fuzz/, nightly)
//! and the corpus replay test (tests/fuzz_corpus.rs, stable): each function
//! decodes arbitrary bytes into what it tests and panics when a property
//! breaks. Any input must be decodable (short input just means a small case),
//! so every byte string is a valid test.

use crate::models::{NODE_ADDRS, PORTS};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol, StraitConfig};
use strait_engine::model::{Service, Ssl, StreamRoute, Upstream};
use strait_engine::router::{reference, MatchInput, Router};
use strait_engine::tls::client_hello::{peek_sni, Peek};
use strait_engine::{Action, ConnId, ConnectError, Engine, EngineConfig, ListenerId, ProbeId, SessionId, Side, Time};
use strait_engine::{Resources, Snapshot};

/// The targets by name, as cargo-fuzz and the corpus folders call them.
pub const TARGETS: [(&str, fn(&[u8])); 5] = [
    ("route_matcher", route_matcher),
    ("config_yaml", config_yaml),
    ("admin_json", admin_json),
    ("engine_actions", engine_actions),
    ("client_hello", client_hello),
];

/// Reads the input a byte at a time; past the end every read is 0.
struct Bytes<'a> {
    data: &'a [u8],
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    fn below(&mut self, n: usize) -> usize {
        self.u8() as usize % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

// ---- route_matcher ----------------------------------------------------------

const ROUTE_IDS: [&str; 8] = ["1", "2", "10", "11", "3", "a", "b7", "20"];
const SNI_PATTERNS: [&str; 8] =
    ["a.test.com", "*.test.com", "*test.com", "*.b.test.com", "*", "x.org", "*.org", "*.com"];
const SNIS: [&str; 7] = ["a.test.com", "x.b.test.com", "footest.com", "x.org", "other.net", "test.com", "b.test.com"];

/// A small address space, so filters and connections overlap.
fn ip(b: &mut Bytes<'_>) -> IpAddr {
    let (kind, c, d) = (b.u8(), b.u8() % 4, b.u8() % 4);
    match kind % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, c, d)),
        1 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, u16::from(c), 0, 0, 0, 0, u16::from(d))),
        // An IPv4 client on a dual-stack socket.
        _ => IpAddr::V6(Ipv4Addr::new(10, 0, c, d).to_ipv6_mapped()),
    }
}

fn ip_filter(b: &mut Bytes<'_>) -> String {
    let addr = ip(b);
    let prefix = b.u8();
    match (prefix % 2, addr) {
        (0, _) => addr.to_string(),
        (_, IpAddr::V4(_)) => format!("{addr}/{}", prefix / 2 % 33),
        (_, IpAddr::V6(_)) => format!("{addr}/{}", prefix / 2 % 129),
    }
}

/// Differential: the compiled router and the reference matcher agree on
/// every connection, for routes and connections decoded from the bytes.
pub fn route_matcher(data: &[u8]) {
    let mut b = Bytes { data };
    let count = b.below(9);
    let mut routes = Vec::new();
    for _ in 0..count {
        let flags = b.u8();
        let id = b.pick(&ROUTE_IDS);
        let mut r = Map::new();
        if flags & 1 != 0 {
            r.insert("remote_addr".into(), json!(ip_filter(&mut b)));
        }
        if flags & 2 != 0 {
            r.insert("server_addr".into(), json!(ip_filter(&mut b)));
        }
        if flags & 4 != 0 {
            r.insert("server_port".into(), json!(b.pick(&PORTS)));
        }
        if flags & 8 != 0 {
            let snis: Vec<&str> = (0..1 + b.below(2)).map(|_| b.pick(&SNI_PATTERNS)).collect();
            r.insert("sni".into(), json!(snis[0]));
            if flags & 16 != 0 {
                r.remove("sni");
                r.insert("snis".into(), json!(snis));
            }
        }
        r.insert("upstream".into(), json!({"nodes": {"10.9.0.1:80": 1}}));
        if let Ok(route) = StreamRoute::from_json(id, &Value::Object(r)) {
            routes.push(route);
        }
    }
    routes.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
    routes.dedup_by(|a, b| a.id == b.id);
    let router = Router::new(&routes);
    while !b.is_empty() {
        let server_addr = ip(&mut b);
        let remote_addr = ip(&mut b);
        let server_port = if b.u8() % 4 == 0 { b.u16() } else { b.pick(&PORTS) };
        let sni = if b.u8() % 2 == 0 { None } else { Some(b.pick(&SNIS)) };
        let input = MatchInput { server_addr, server_port, remote_addr, sni };
        assert_eq!(
            router.find(&input),
            reference::match_route(&routes, &input),
            "the compiled router agrees with the reference matcher on {input:?}"
        );
    }
}

// ---- config_yaml and admin_json ---------------------------------------------

/// `config.yaml` parsing never panics, whatever the text.
pub fn config_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = StraitConfig::parse(&text);
}

/// Admin API validation never panics on any JSON; the first byte picks the
/// object kind, the rest is the body. Valid objects validate again the same.
pub fn admin_json(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return };
    match kind % 4 {
        0 => {
            if let Ok(route) = StreamRoute::from_json("1", &value) {
                assert_eq!(StreamRoute::from_json("1", &value).ok(), Some(route), "validation is a function");
            }
        }
        1 => {
            if let Ok(upstream) = Upstream::from_json(&value) {
                assert_eq!(Upstream::from_json(&value).ok(), Some(upstream), "validation is a function");
                // A valid upstream builds into a snapshot (warnings allowed: a
                // host name that does not resolve, TLS material that fails to load).
                let resources = Resources { upstreams: vec![("1".into(), value)], ..Resources::default() };
                let _ = Snapshot::build(1, &resources, &mut |_| Vec::new());
            }
        }
        2 => {
            let _ = Service::from_json(&value);
        }
        _ => {
            let _ = Ssl::from_json(&value);
        }
    }
}

// ---- client_hello -------------------------------------------------------------

/// `peek_sni` never panics, and more bytes never change a decided answer:
/// once a prefix is `NotTls` or a complete ClientHello, so is the whole.
pub fn client_hello(data: &[u8]) {
    let whole = peek_sni(data);
    if let Peek::Sni(Some(name)) = &whole {
        assert!(!name.is_empty() && name.len() <= 255, "a server name is 1..=255 bytes: {name:?}");
        assert_eq!(name.to_ascii_lowercase(), *name, "a server name is lower-cased");
    }
    for cut in [data.len() / 2, data.len().saturating_sub(1), 5, 9] {
        if cut >= data.len() {
            continue;
        }
        match peek_sni(&data[..cut]) {
            Peek::NeedMore => {}
            decided => assert_eq!(decided, whole, "more bytes never change a decided answer (cut at {cut})"),
        }
    }
}

// ---- engine_actions -----------------------------------------------------------

fn fuzz_resources(variant: u8) -> Resources {
    let checks = json!({"active": {"timeout": 0.5, "healthy": {"interval": 1, "successes": 1},
                                   "unhealthy": {"interval": 1, "tcp_failures": 1, "timeouts": 1}},
                        "passive": {"unhealthy": {"tcp_failures": 1, "timeouts": 1}}});
    let mut upstreams = vec![(
        "1".to_string(),
        json!({"nodes": [{"host": "10.9.0.1", "port": 80, "weight": 1, "priority": 1},
                         {"host": "10.9.0.2", "port": 80, "weight": 2},
                         {"host": "10.9.0.3", "port": 80, "weight": 0}],
               "retries": 2, "checks": checks,
               "timeout": {"connect": 0.5, "send": 2, "read": 2}}),
    )];
    let types = ["roundrobin", "chash", "least_conn", "ewma"];
    let second = json!({"type": types[usize::from(variant) % 4], "key": "remote_port",
                        "nodes": {NODE_ADDRS[3]: 1, NODE_ADDRS[4]: 3, NODE_ADDRS[6]: 1},
                        "proxy_responses": variant % 3, "retry_timeout": 1,
                        "timeout": {"connect": 0.3, "send": 1, "read": 1}});
    if variant & 4 == 0 {
        upstreams.push(("2".to_string(), second));
    }
    let stream_routes = vec![
        ("1".to_string(), json!({"server_port": 9100, "upstream_id": "1"})),
        (
            "2".to_string(),
            json!({"remote_addr": "10.0.0.0/8", "upstream_id": if variant & 8 == 0 { "2" } else { "1" }}),
        ),
        ("3".to_string(), json!({"server_port": 9101, "upstream": {"nodes": {"10.9.0.5:80": 1}}})),
    ];
    Resources { stream_routes, upstreams, ..Resources::default() }
}

/// What a driver knows about its engine while the fuzzer drives it.
#[derive(Default)]
struct Driver {
    conns: Vec<ConnId>,
    /// Connections with a `Connect` not reported yet.
    connecting: BTreeSet<ConnId>,
    sessions: Vec<SessionId>,
    probes: Vec<ProbeId>,
}

impl Driver {
    fn drain(&mut self, engine: &mut Engine) {
        while engine.poll_session_record().is_some() {}
        while let Some(action) = engine.poll_action() {
            match action {
                Action::Connect { conn, .. } => {
                    self.connecting.insert(conn);
                }
                Action::Close { conn, .. } => {
                    self.connecting.remove(&conn);
                }
                Action::Shutdown { .. } | Action::UdpClose { .. } => {}
                Action::Splice { conn } => panic!("splice is granted only to a driver that can splice: {conn:?}"),
                Action::UdpConnect { session, .. } => self.sessions.push(session),
                Action::Probe { probe, .. } => self.probes.push(probe),
                Action::ProbeCancel { probe } => self.probes.retain(|p| *p != probe),
            }
        }
    }
}

/// A sequence of engine events decoded from bytes, fed the way a driver
/// may (reads into `read_buf`, writes from `write_buf`, connect results only
/// for asked-for connects) but in any order and with stale ids. The engine's
/// debug `check_invariants` runs after every call; at the end everything
/// must be released.
pub fn engine_actions(data: &[u8]) {
    let mut b = Bytes { data };
    let listen = |protocol, addr: &str| ListenSpec {
        protocol,
        addr: addr.parse().expect("literal"),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    let listeners = vec![
        listen(Protocol::Tcp, "0.0.0.0:9100"),
        listen(Protocol::Tcp, "[::]:9101"),
        listen(Protocol::Udp, "0.0.0.0:9100"),
    ];
    let build =
        |variant: u8, version: u64| Arc::new(Snapshot::build(version, &fuzz_resources(variant), &mut |_| Vec::new()).0);
    let config = EngineConfig {
        seed: u64::from(b.u8()),
        buffer_bytes: 1 + b.below(64),
        max_connections: 1 + b.below(8),
        spare_buffers_max: b.below(3),
        udp_sessions_max: 1 + b.below(4),
        udp_idle_timeout: Duration::from_millis(100 + 100 * b.below(20) as u64),
        udp_proxy_responses: b.below(3) as u32,
        run_active_checks: b.u8() % 4 != 0,
        session_records: true,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(listeners, build(b.u8(), 1), config);
    let mut d = Driver::default();
    let mut now = Time::ZERO;
    let mut version = 1;
    let peers = ["10.1.2.3", "127.0.0.1", "::1", "8.8.8.8", "10.0.0.9"];
    let locals = ["127.0.0.1", "10.0.0.1", "::1"];
    let scratch = [0u8; 64];
    while !b.is_empty() {
        let op = b.u8();
        now = now + Duration::from_micros(u64::from(b.u8()) * 100);
        let conn = if d.conns.is_empty() { None } else { Some(d.conns[b.below(d.conns.len())]) };
        let side = if b.u8() % 2 == 0 { Side::Client } else { Side::Upstream };
        match op % 16 {
            0 | 1 => {
                let listener = ListenerId(b.below(3) as u32);
                let port = if b.u8() % 2 == 0 { 9100 } else { 9101 };
                let local = SocketAddr::new(b.pick(&locals).parse().expect("literal"), port);
                let peer = SocketAddr::new(b.pick(&peers).parse().expect("literal"), 1024 + u16::from(b.u8()));
                if let Ok(id) = engine.handle_accept(now, listener, local, peer) {
                    d.conns.push(id);
                }
            }
            2 => {
                let pending: Vec<ConnId> = d.connecting.iter().copied().collect();
                if !pending.is_empty() {
                    let id = pending[b.below(pending.len())];
                    d.connecting.remove(&id);
                    let result = match b.u8() % 5 {
                        0 | 1 => Ok(()),
                        2 => Err(ConnectError::Refused),
                        3 => Err(ConnectError::TimedOut),
                        _ => Err(ConnectError::Other),
                    };
                    engine.handle_connected(now, id, result);
                }
            }
            3 | 4 => {
                if let Some(id) = conn {
                    let n = b.u8() as usize;
                    if let Some(buf) = engine.read_buf(id, side) {
                        let n = n.min(buf.len()).min(scratch.len());
                        buf[..n].copy_from_slice(&scratch[..n]);
                        engine.handle_read(now, id, side, n);
                    }
                }
            }
            5 => {
                if let Some(id) = conn {
                    engine.handle_read_blocked(id, side);
                }
            }
            6 | 7 => {
                if let Some(id) = conn {
                    let len = engine.write_buf(id, side).len();
                    if len > 0 {
                        let n = 1 + b.below(len.min(255));
                        engine.handle_written(now, id, side, n);
                    }
                }
            }
            8 => {
                if let Some(id) = conn {
                    d.connecting.remove(&id);
                    engine.handle_reset(now, id, side);
                }
            }
            9 => {
                now = now + Duration::from_millis(u64::from(b.u8()) * 20);
                engine.handle_timeout(now);
            }
            10 => {
                let local = SocketAddr::new(b.pick(&locals).parse().expect("literal"), 9100);
                let peer = SocketAddr::new(b.pick(&peers).parse().expect("literal"), 5000 + u16::from(b.u8() % 4));
                let _ = engine.handle_client_datagram(now, ListenerId(b.below(3) as u32), local, peer, b.below(256));
            }
            11 | 12 => {
                if !d.sessions.is_empty() {
                    let session = d.sessions[b.below(d.sessions.len())];
                    if op % 16 == 11 {
                        let _ = engine.handle_upstream_datagram(now, session, 1);
                    } else {
                        engine.handle_upstream_error(now, session);
                    }
                }
            }
            13 => {
                if !d.probes.is_empty() {
                    let probe = d.probes[b.below(d.probes.len())];
                    let result = if b.u8() % 2 == 0 { Ok(()) } else { Err(ConnectError::Refused) };
                    engine.handle_probe_result(now, probe, result);
                }
            }
            14 => {
                version += 1;
                engine.handle_snapshot(now, build(b.u8(), version));
            }
            _ => {
                if b.u8() % 4 == 0 {
                    engine.begin_shutdown();
                }
                if let Some(t) = engine.poll_timeout() {
                    now = now.max(t);
                    engine.handle_timeout(now);
                }
            }
        }
        d.drain(&mut engine);
        assert!(engine.buffers_in_use() <= 2 * engine.connection_count(), "at most two buffers per connection");
    }
    engine.abort_all(now);
    d.drain(&mut engine);
    assert_eq!(engine.connection_count(), 0, "abort_all closes every connection");
    assert_eq!(engine.session_count(), 0, "abort_all ends every session");
    assert_eq!(engine.buffers_in_use(), 0, "no buffer outlives its connection");
    assert_eq!(engine.timer_count(), 0, "no timer outlives its connection, session or probe target");
}
