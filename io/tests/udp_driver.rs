//! UDP sessions through the driver over real loopback sockets.

use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{EngineConfig, Resources, Snapshot};
use strait_io::{Workers, WorkersConfig};

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(port: u16, upstream: serde_json::Value, engine: EngineConfig) -> Workers {
    let resources =
        Resources { stream_routes: vec![("1".into(), json!({ "upstream": upstream }))], ..Default::default() };
    let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| vec![]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listeners =
        vec![ListenSpec { protocol: Protocol::Udp, addr, tls: false, tls_passthrough: false, proxy_protocol: false }];
    Workers::start(
        WorkersConfig { workers: 1, listeners, engine, loopback_tcp_congestion: None, access_log: None },
        Arc::new(snapshot),
    )
    .unwrap()
}

/// An upstream that answers each datagram with "<its name>:<the client's source port>:" + the payload.
fn tagged_echo(name: &'static str) -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { return };
            let mut reply = format!("{name}:{}:", from.port()).into_bytes();
            reply.extend_from_slice(&buf[..n]);
            reply.truncate(65507);
            let _ = socket.send_to(&reply, from);
        }
    });
    port
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket
}

fn ask(socket: &UdpSocket, proxy: u16, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    socket.send_to(payload, ("127.0.0.1", proxy)).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = socket.recv_from(&mut buf).expect("a reply");
    buf.truncate(n);
    (buf, from)
}

#[test]
fn each_client_sticks_to_one_node_and_gets_only_its_own_replies() {
    let a = tagged_echo("a");
    let b = tagged_echo("b");
    let port = free_udp_port();
    let workers = start(
        port,
        json!({"nodes": {format!("127.0.0.1:{a}"): 1, format!("127.0.0.1:{b}"): 1}}),
        EngineConfig::default(),
    );
    let handles: Vec<_> = (0..40)
        .map(|i| {
            thread::spawn(move || {
                let socket = client();
                let mut node = None;
                for j in 0..5 {
                    let payload = format!("client {i} message {j}");
                    let (reply, from) = ask(&socket, port, payload.as_bytes());
                    assert_eq!(from.port(), port, "replies come from the listener's address");
                    let text = String::from_utf8(reply).unwrap();
                    let (tag, rest) = text.split_once(':').unwrap();
                    let (_, echoed) = rest.split_once(':').unwrap();
                    assert_eq!(echoed, payload, "a client only ever gets its own replies");
                    assert_eq!(*node.get_or_insert(tag.to_string()), tag, "a session stays on one node");
                }
                node.unwrap()
            })
        })
        .collect();
    let nodes: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let on_a = nodes.iter().filter(|n| *n == "a").count();
    assert_eq!(on_a, 20, "sessions alternate over equal weights: {nodes:?}");
    workers.shutdown(Duration::from_secs(1));
}

/// An upstream that answers each datagram with the datagram itself.
fn plain_echo() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    port
}

#[test]
fn the_largest_ipv4_datagram_crosses_both_ways() {
    let upstream = plain_echo();
    let port = free_udp_port();
    let workers = start(port, json!({"nodes": {format!("127.0.0.1:{upstream}"): 1}}), EngineConfig::default());
    let socket = client();
    let payload: Vec<u8> = (0..65507).map(|i| (i % 251) as u8).collect();
    let (reply, _) = ask(&socket, port, &payload);
    assert!(reply == payload, "65507 bytes out and back, intact");
    workers.shutdown(Duration::from_secs(1));
}

#[test]
fn a_session_ends_on_port_unreachable_and_the_next_datagram_picks_again() {
    let dead = free_udp_port();
    let alive = tagged_echo("alive");
    let port = free_udp_port();
    let nodes = json!([
        {"host": "127.0.0.1", "port": dead, "weight": 1},
        {"host": "127.0.0.1", "port": alive, "weight": 1}
    ]);
    let workers = start(port, json!({"nodes": nodes}), EngineConfig::default());
    let socket = client();
    // The first session goes to the dead node (first in order); its ICMP error ends it.
    socket.send_to(b"lost", ("127.0.0.1", port)).unwrap();
    thread::sleep(Duration::from_millis(200));
    let (reply, _) = ask(&socket, port, b"again");
    assert!(reply.starts_with(b"alive:"), "the next datagram opened a new session on the other node");
    workers.shutdown(Duration::from_secs(1));
}

#[test]
fn proxy_responses_one_ends_the_session_after_the_reply() {
    let a = tagged_echo("a");
    let b = tagged_echo("b");
    let port = free_udp_port();
    let upstream = json!({"nodes": {format!("127.0.0.1:{a}"): 1, format!("127.0.0.1:{b}"): 1}, "proxy_responses": 1});
    let workers = start(port, upstream, EngineConfig::default());
    let socket = client();
    let first = ask(&socket, port, b"q1").0;
    let second = ask(&socket, port, b"q2").0;
    assert_ne!(first[0], second[0], "each query is a new session, so round robin moves on");
    let (first_port, second_port) =
        (String::from_utf8_lossy(&first).to_string(), String::from_utf8_lossy(&second).to_string());
    assert!(first_port.ends_with(":q1") && second_port.ends_with(":q2"));
    workers.shutdown(Duration::from_secs(1));
}

#[test]
fn idle_sessions_are_reaped_and_the_session_limit_drops_new_flows() {
    let upstream = plain_echo();
    let port = free_udp_port();
    let engine =
        EngineConfig { udp_idle_timeout: Duration::from_millis(300), udp_sessions_max: 1, ..EngineConfig::default() };
    let workers = start(port, json!({"nodes": {format!("127.0.0.1:{upstream}"): 1}}), engine);
    let first = client();
    assert_eq!(ask(&first, port, b"one").0, b"one");
    let second = client();
    second.set_read_timeout(Some(Duration::from_millis(150))).unwrap();
    second.send_to(b"two", ("127.0.0.1", port)).unwrap();
    assert!(second.recv_from(&mut [0u8; 64]).is_err(), "beyond the session limit a new flow is dropped");
    thread::sleep(Duration::from_millis(600));
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(ask(&second, port, b"three").0, b"three", "the idle session was reaped, freeing the slot");
    workers.shutdown(Duration::from_secs(1));
}

#[test]
fn a_wildcard_listener_routes_on_the_destination_address_and_answers_from_it() {
    let one = tagged_echo("one");
    let two = tagged_echo("two");
    let port = free_udp_port();
    let resources = Resources {
        stream_routes: vec![
            ("1".into(), json!({"server_addr": "127.0.0.1", "upstream": {"nodes": {format!("127.0.0.1:{one}"): 1}}})),
            ("2".into(), json!({"server_addr": "127.0.0.2", "upstream": {"nodes": {format!("127.0.0.1:{two}"): 1}}})),
        ],
        ..Default::default()
    };
    let snapshot = Arc::new(Snapshot::build(1, &resources, &mut |_| vec![]).0);
    let addr: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let listeners =
        vec![ListenSpec { protocol: Protocol::Udp, addr, tls: false, tls_passthrough: false, proxy_protocol: false }];
    let workers = Workers::start(
        WorkersConfig {
            workers: 1,
            listeners,
            engine: EngineConfig::default(),
            loopback_tcp_congestion: None,
            access_log: None,
        },
        snapshot,
    )
    .unwrap();
    for (target, expected) in [("127.0.0.1", "one"), ("127.0.0.2", "two")] {
        // A connected socket only accepts datagrams from the address it sent to.
        let socket = client();
        socket.connect((target, port)).unwrap();
        socket.send(b"who").unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no reply from {target}:{port}: {e}"));
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.starts_with(&format!("{expected}:")), "{target} is routed by its own address: {text}");
    }
    workers.shutdown(Duration::from_secs(1));
}
