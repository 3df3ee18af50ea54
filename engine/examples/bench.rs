//! Engine-only micro-benchmarks: what a connection, a forwarded chunk and a
//! route lookup cost without any network. Run:
//!
//! ```sh
//! cargo run --release -p strait-engine --example bench
//! ```
//!
//! Reports nanoseconds per operation (best of 5 runs). It measures, it asserts
//! nothing: compare runs on one machine to spot regressions.

use serde_json::json;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::model::StreamRoute;
use strait_engine::router::{MatchInput, Router};
use strait_engine::{Engine, EngineConfig, ListenerId, Resources, Side, Snapshot, Time};

fn best_of<F: FnMut() -> u64>(mut run: F) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let ops = run();
            start.elapsed().as_nanos() as f64 / ops as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn engine(routes: Vec<(String, serde_json::Value)>) -> Engine {
    let resources = Resources { stream_routes: routes, ..Default::default() };
    let snapshot = Arc::new(Snapshot::build(1, &resources, &mut |_| vec![]).0);
    let listener = ListenSpec {
        protocol: Protocol::Tcp,
        addr: "127.0.0.1:9100".parse().unwrap(),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    Engine::new(vec![listener], snapshot, EngineConfig::default())
}

fn drain(e: &mut Engine) {
    while let Some(action) = e.poll_action() {
        let _ = black_box(action);
    }
}

/// accept, route, pick, connect ok, one request and one answer, both FINs, close.
fn connection_lifecycle() -> f64 {
    let mut e = engine(vec![("1".into(), json!({"upstream": {"nodes": {"10.0.0.1:1": 1, "10.0.0.2:2": 3}}}))]);
    let local: SocketAddr = "127.0.0.1:9100".parse().unwrap();
    best_of(|| {
        let n = 100_000u64;
        for i in 0..n {
            let now = Time::from_nanos(i);
            let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)), (i % 60000) as u16 + 1);
            let id = e.handle_accept(now, ListenerId(0), local, peer).unwrap();
            drain(&mut e);
            e.handle_connected(now, id, Ok(()));
            for side in [Side::Client, Side::Upstream] {
                let buf = e.read_buf(id, side).unwrap();
                buf[..64].fill(7);
                e.handle_read(now, id, side, 64);
                let n = e.write_buf(id, side.other()).len();
                e.handle_written(now, id, side.other(), n);
            }
            e.handle_read(now, id, Side::Client, 0);
            e.handle_read(now, id, Side::Upstream, 0);
            drain(&mut e);
        }
        n
    })
}

/// One 16 KiB chunk read from the client and written to the upstream.
fn forwarded_chunk() -> f64 {
    let mut e = engine(vec![("1".into(), json!({"upstream": {"nodes": {"10.0.0.1:1": 1}}}))]);
    let id = e
        .handle_accept(Time::ZERO, ListenerId(0), "127.0.0.1:9100".parse().unwrap(), "1.2.3.4:5".parse().unwrap())
        .unwrap();
    e.handle_connected(Time::ZERO, id, Ok(()));
    drain(&mut e);
    best_of(|| {
        let n = 1_000_000u64;
        for i in 0..n {
            let now = Time::from_nanos(i);
            let buf = e.read_buf(id, Side::Client).unwrap();
            let len = buf.len().min(16 * 1024);
            e.handle_read(now, id, Side::Client, len);
            let n = e.write_buf(id, Side::Upstream).len();
            e.handle_written(now, id, Side::Upstream, n);
        }
        n
    })
}

/// Lookups among 10,000 routes on one port that differ by remote_addr.
fn router_lookup(cidr: bool) -> f64 {
    let routes: Vec<StreamRoute> = (0..10_000u32)
        .map(|i| {
            let ip = Ipv4Addr::from(0x0A00_0000 + i * 4);
            let remote = if cidr { format!("{ip}/30") } else { ip.to_string() };
            StreamRoute::from_json(&i.to_string(), &json!({"server_port": 9100, "remote_addr": remote})).unwrap()
        })
        .collect();
    let router = Router::new(&routes);
    best_of(|| {
        let n = 1_000_000u64;
        for i in 0..n {
            let client = Ipv4Addr::from(0x0A00_0000 + ((i as u32 * 7919) % 40_000));
            let input = MatchInput {
                server_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                server_port: 9100,
                remote_addr: IpAddr::V4(client),
                sni: None,
            };
            black_box(router.find(&input));
        }
        n
    })
}

fn main() {
    println!("engine micro-benchmarks (ns per operation, best of 5)");
    println!("connection lifecycle (accept..close): {:>8.0} ns", connection_lifecycle());
    println!("forwarded 16 KiB chunk:               {:>8.0} ns", forwarded_chunk());
    println!("route lookup, 10k /32 routes:         {:>8.0} ns", router_lookup(false));
    println!("route lookup, 10k /30 routes:         {:>8.0} ns", router_lookup(true));
}
