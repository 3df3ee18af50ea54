//! Small models of the world around the engine: upstream nodes (how they
//! answer a connect) and the config (stream routes and upstreams as the Admin
//! API would store them, turned into engine snapshots).

use crate::rng::Rng;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use strait_engine::{Resources, SharedState, Snapshot};

/// How an upstream node answers a connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeBehaviour {
    /// Accepts after a short latency.
    Up,
    /// Answers RST (ECONNREFUSED).
    Refuses,
    /// Never answers: only the engine's connect timeout ends the attempt.
    BlackHole,
    /// Fails with an error other than a refusal (unreachable network).
    Unreachable,
}

/// Addresses upstream nodes live at. Not every address in a config has a
/// node behind it in every run (then the connect is refused).
pub const NODE_ADDRS: [&str; 7] =
    ["10.9.0.1:80", "10.9.0.2:80", "10.9.0.3:80", "10.9.0.4:8080", "10.9.0.5:80", "10.9.0.6:80", "[2001:db8:9::1]:80"];

pub fn node_addr(text: &str) -> SocketAddr {
    text.parse().expect("NODE_ADDRS are socket addresses")
}

/// Listening ports (server_port values worth matching on).
pub const PORTS: [u16; 3] = [9100, 9101, 9102];

const REMOTE_ADDRS: [&str; 9] = [
    "127.0.0.1",
    "10.0.0.0/8",
    "10.1.2.3",
    "192.168.0.0/16",
    "::1",
    "2001:db8::/32",
    "0.0.0.0/0",
    "::/0",
    "10.1.0.0/16",
];
const SERVER_ADDRS: [&str; 6] = ["127.0.0.1", "10.0.0.1", "0.0.0.0/0", "::1", "::/0", "127.0.0.0/8"];
/// Route ids: byte order (`1`, `10`, `2`) decides which overlapping route wins.
const ROUTE_IDS: [&str; 8] = ["1", "2", "10", "11", "3", "a", "b7", "20"];
const UPSTREAM_IDS: [&str; 4] = ["1", "2", "3", "9"];

/// Knobs of the config generator, drawn once per seed.
#[derive(Clone, Debug)]
pub struct ConfigShape {
    /// Chance a route filter field is present.
    pub filter_rate: f64,
    /// Chance an upstream has priorities (backup groups).
    pub priority_rate: f64,
    /// Chance of an object that fails validation (the snapshot skips it).
    pub invalid_rate: f64,
    /// Longest idle timeout, in seconds.
    pub idle_max_s: u64,
    /// Longest connect timeout, in milliseconds.
    pub connect_max_ms: u64,
    /// Chance an upstream has health `checks` (active, sometimes passive too).
    pub checks_rate: f64,
    /// Chance an upstream balances by something other than round robin
    /// (chash, least_conn or ewma).
    pub other_balancer_rate: f64,
    /// Chance an upstream sets `proxy_responses` (UDP sessions end after that
    /// many replies).
    pub proxy_responses_rate: f64,
}

/// The stored config and the snapshot built from it.
pub struct ConfigModel {
    pub resources: Resources,
    pub version: u64,
    pub shape: ConfigShape,
    /// Node health and least_conn counts, carried from snapshot to snapshot as
    /// a running process does (`Snapshot::build_with`).
    pub shared: SharedState,
}

impl ConfigModel {
    pub fn new(rng: &mut Rng, shape: ConfigShape) -> ConfigModel {
        let mut model =
            ConfigModel { resources: Resources::default(), version: 1, shape, shared: SharedState::default() };
        for id in UPSTREAM_IDS {
            if rng.chance(0.8) {
                let u = model.gen_upstream(rng);
                model.resources.upstreams.push((id.to_string(), u));
            }
        }
        let routes = rng.range(1, 5);
        for _ in 0..routes {
            model.put_route(rng);
        }
        model
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut no_dns = |_: &str| Vec::new();
        Snapshot::build_with(self.version, &self.resources, &mut no_dns, &self.shared).0
    }

    /// One admin write: add, change or delete a route or an upstream.
    pub fn mutate(&mut self, rng: &mut Rng) {
        self.version += 1;
        match rng.below(5) {
            0 | 1 => self.put_route(rng),
            2 => {
                if !self.resources.stream_routes.is_empty() {
                    let i = rng.below(self.resources.stream_routes.len() as u64) as usize;
                    self.resources.stream_routes.remove(i);
                }
            }
            3 => {
                let id = rng.pick(&UPSTREAM_IDS).to_string();
                let u = self.gen_upstream(rng);
                put(&mut self.resources.upstreams, id, u);
            }
            _ => {
                if !self.resources.upstreams.is_empty() {
                    let i = rng.below(self.resources.upstreams.len() as u64) as usize;
                    self.resources.upstreams.remove(i);
                }
            }
        }
    }

    fn put_route(&mut self, rng: &mut Rng) {
        let id = rng.pick(&ROUTE_IDS).to_string();
        let r = self.gen_route(rng);
        put(&mut self.resources.stream_routes, id, r);
    }

    fn gen_route(&self, rng: &mut Rng) -> Value {
        let mut route = Map::new();
        let p = self.shape.filter_rate;
        if rng.chance(p) {
            route.insert("remote_addr".into(), json!(rng.pick(&REMOTE_ADDRS)));
        }
        if rng.chance(p) {
            route.insert("server_addr".into(), json!(rng.pick(&SERVER_ADDRS)));
        }
        if rng.chance(p) {
            route.insert("server_port".into(), json!(rng.pick(&PORTS)));
        }
        if rng.chance(0.5) {
            route.insert("upstream_id".into(), json!(rng.pick(&UPSTREAM_IDS)));
        } else {
            route.insert("upstream".into(), self.gen_upstream(rng));
        }
        if rng.chance(self.shape.invalid_rate) {
            route.insert("server_port".into(), json!(70000));
        }
        Value::Object(route)
    }

    fn gen_upstream(&self, rng: &mut Rng) -> Value {
        let count = rng.range(1, 4) as usize;
        let mut addrs: Vec<&str> = Vec::new();
        while addrs.len() < count {
            let a = *rng.pick(&NODE_ADDRS);
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let weight = |rng: &mut Rng| if rng.chance(0.1) { 0 } else { rng.range(1, 5) };
        let nodes = if rng.chance(self.shape.priority_rate) {
            let list: Vec<Value> = addrs
                .iter()
                .map(|a| {
                    let addr = node_addr(a);
                    let host = match addr {
                        SocketAddr::V4(v4) => v4.ip().to_string(),
                        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
                    };
                    json!({"host": host, "port": addr.port(), "weight": weight(rng),
                           "priority": rng.below(2) as i64 - 1})
                })
                .collect();
            Value::Array(list)
        } else {
            let map: Map<String, Value> = addrs.iter().map(|a| (a.to_string(), json!(weight(rng)))).collect();
            Value::Object(map)
        };
        let mut u = Map::new();
        u.insert("nodes".into(), nodes);
        if rng.chance(0.5) {
            u.insert("retries".into(), json!(rng.below(4)));
        }
        if rng.chance(0.3) {
            u.insert("retry_timeout".into(), json!(rng.range(1, 20)));
        }
        if rng.chance(0.9) {
            let connect_ms = rng.range(50, self.shape.connect_max_ms.max(50));
            let idle = |rng: &mut Rng| rng.range(1, self.shape.idle_max_s.max(1));
            u.insert(
                "timeout".into(),
                json!({"connect": connect_ms as f64 / 1000.0, "send": idle(rng), "read": idle(rng)}),
            );
        }
        if rng.chance(self.shape.other_balancer_rate) {
            match rng.below(4) {
                0 => {
                    u.insert("type".into(), json!("chash"));
                    // chash needs a `key`; a variable that resolves to nothing falls back to remote_addr.
                    let key = *rng.pick(&["remote_addr", "remote_port", "server_port", "nothing"]);
                    u.insert("key".into(), json!(key));
                }
                1 => {
                    u.insert("type".into(), json!("chash"));
                    u.insert("hash_on".into(), json!("vars_combinations"));
                    u.insert("key".into(), json!("$remote_addr:$remote_port"));
                }
                2 => {
                    u.insert("type".into(), json!("least_conn"));
                }
                _ => {
                    u.insert("type".into(), json!("ewma"));
                }
            }
        }
        if rng.chance(self.shape.checks_rate) {
            u.insert("checks".into(), gen_checks(rng));
        }
        if rng.chance(self.shape.proxy_responses_rate) {
            u.insert("proxy_responses".into(), json!(rng.range(1, 3)));
        }
        if rng.chance(self.shape.invalid_rate) {
            u.insert("type".into(), json!("roundrobn"));
        }
        Value::Object(u)
    }
}

/// Health checks with small intervals and thresholds, so nodes flip often.
fn gen_checks(rng: &mut Rng) -> Value {
    let mut active = Map::new();
    active.insert("timeout".into(), json!(*rng.pick(&[0.2, 0.5, 1.0, 2.0])));
    if rng.chance(0.1) {
        // A probe port other than the node's: only 10.9.0.4 listens on 8080.
        active.insert("port".into(), json!(8080));
    }
    active.insert("healthy".into(), json!({"interval": rng.range(1, 5), "successes": rng.range(1, 3)}));
    active.insert(
        "unhealthy".into(),
        json!({"interval": rng.range(1, 3), "tcp_failures": rng.range(1, 3), "timeouts": rng.range(1, 3)}),
    );
    let mut checks = Map::new();
    checks.insert("active".into(), Value::Object(active));
    if rng.chance(0.5) {
        checks.insert(
            "passive".into(),
            json!({"healthy": {"successes": rng.range(0, 3)},
                   "unhealthy": {"tcp_failures": rng.range(0, 3), "timeouts": rng.range(0, 3)}}),
        );
    }
    Value::Object(checks)
}

/// Inserts or replaces the object stored under `id`.
fn put(list: &mut Vec<(String, Value)>, id: String, value: Value) {
    match list.iter_mut().find(|(k, _)| *k == id) {
        Some(slot) => slot.1 = value,
        None => list.push((id, value)),
    }
}
