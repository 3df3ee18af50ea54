//! Upstreams over the real binary: health checks, priorities, balancers,
//! retries and timeouts (issue 7).

mod common;

use common::*;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// An upstream that says `name` on accept, bound to `addr` (to bring a node back on its old address).
fn named_on(addr: SocketAddr, name: &str) -> Upstream {
    let greeting = format!("{name}\n");
    Upstream::spawn(addr, move |mut conn, _| {
        let _ = conn.write_all(greeting.as_bytes());
        let _ = std::io::Read::read(&mut conn, &mut [0u8; 1]);
    })
}

/// A listener whose accept queue is full and never drained: the kernel drops
/// further SYNs, so a connect to it neither succeeds nor fails until it times out.
struct Blackhole {
    pub addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<TcpStream>,
}

fn blackhole() -> Blackhole {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&SocketAddr::new(LOCALHOST, 0).into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    // Fill the queue: connects that complete are queued; the first that hangs proves it is full.
    for _ in 0..8 {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        match socket.connect_timeout(&addr.into(), Duration::from_millis(300)) {
            Ok(()) => fillers.push(socket.into()),
            Err(_) => return Blackhole { addr, _listener: listener, _fillers: fillers },
        }
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

fn with_control(config: &Config, control: SocketAddr, dir: &TempDir) -> String {
    config.yaml(&dir.path().join("data")).replacen(
        "apisix:\n",
        &format!("apisix:\n  control:\n    ip: \"{}\"\n    port: {}\n", control.ip(), control.port()),
        1,
    )
}

fn proxy() -> (Strait, SocketAddr) {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    (Strait::start(Config::new().listen(listen)), listen)
}

fn names(listen: SocketAddr, count: usize) -> Vec<String> {
    (0..count).map(|i| try_name(listen).unwrap_or_else(|e| panic!("connection {i}: {e}"))).collect()
}

#[test]
fn a_dead_node_leaves_within_the_check_interval_and_returns_after_successes() {
    let a = Upstream::named("a");
    let b_addr = SocketAddr::new(LOCALHOST, free_port());
    let b = named_on(b_addr, "b");
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let control = SocketAddr::new(LOCALHOST, free_port());
    let dir = TempDir::new("health");
    let config = Config::new().listen(listen);
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, with_control(&config, control, &dir)).unwrap();
    let strait = Strait::spawn(dir, config, path);
    let checks = json!({"active": {"type": "tcp", "timeout": 1,
        "healthy": {"interval": 1, "successes": 1}, "unhealthy": {"interval": 1, "tcp_failures": 1}}});
    let mut route = route_to(&[(a.addr, 1), (b_addr, 1)]);
    route["upstream"]["checks"] = checks;
    strait.put_route("1", route);
    wait_name(listen, "a");
    assert!(names(listen, 4).contains(&"b".to_string()), "both nodes serve while healthy");

    drop(b);
    // One failed probe (interval 1 s, tcp_failures 1) takes b out.
    wait_until_for("the control API reports b unhealthy", Duration::from_secs(5), || {
        let (status, body) = http_json(control, "GET", "/v1/healthcheck/stream_routes/1", None, None);
        status == 200
            && body["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["port"] == b_addr.port() && n["status"] == "unhealthy")
    });
    assert_eq!(names(listen, 6), vec!["a"; 6], "an unhealthy node gets no connections");

    // The old listener closes on its accept thread; bind again once it is gone.
    wait_until("b's old listener has closed", || TcpStream::connect(b_addr).is_err());
    let _b = named_on(b_addr, "b");
    wait_until_for("b serves again", Duration::from_secs(5), || names(listen, 2).contains(&"b".to_string()));
    let (status, body) = http_json(control, "GET", "/v1/healthcheck", None, None);
    assert_eq!(status, 200);
    let checker = &body.as_array().unwrap()[0];
    assert_eq!(checker["name"], "/apisix/stream_routes/1");
    assert_eq!(checker["type"], "tcp");
    assert!(checker["nodes"].as_array().unwrap().iter().all(|n| n["status"] == "healthy"), "{body}");
}

#[test]
fn priority_groups_fail_over_from_the_highest_to_the_backup() {
    let mid = Upstream::named("mid");
    let backup = Upstream::named("backup");
    let dead = dead_addr();
    let (strait, listen) = proxy();
    let nodes = json!([
        {"host": "127.0.0.1", "port": dead.port(), "weight": 1, "priority": 10},
        {"host": "127.0.0.1", "port": mid.addr.port(), "weight": 1, "priority": 5},
        {"host": "127.0.0.1", "port": backup.addr.port(), "weight": 1, "priority": -1}
    ]);
    strait.put_route("1", json!({"upstream": {"nodes": nodes}}));
    wait_name(listen, "mid");
    assert_eq!(names(listen, 4), vec!["mid"; 4], "the dead top node is skipped for the next group, not the backup");
    drop(mid);
    wait_name(listen, "backup");
}

#[test]
fn least_conn_spreads_held_connections_three_to_one() {
    let heavy = Upstream::named("heavy");
    let light = Upstream::named("light");
    let (strait, listen) = proxy();
    let mut route = route_to(&[(heavy.addr, 3), (light.addr, 1)]);
    route["upstream"]["type"] = json!("least_conn");
    strait.put_route("1", route);
    wait_name(listen, "heavy");
    wait_until("probe connections ended", || heavy.open() == 0 && light.open() == 0);
    let mut held = Vec::new();
    let mut counts = (0, 0);
    for _ in 0..8 {
        let mut conn = connect(listen);
        match read_line(&mut conn).unwrap().as_str() {
            "heavy" => counts.0 += 1,
            "light" => counts.1 += 1,
            other => panic!("unexpected {other}"),
        }
        held.push(conn);
    }
    assert_eq!(counts, (6, 2));
}

/// CRC-32/IEEE, bit by bit: an independent check of the ring the proxy builds with crc32fast.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// APISIX's ring (spec §4.3.5), written out again for the test.
fn apisix_chash(nodes: &[(String, u32)], key: &str) -> String {
    let mut points: Vec<(u32, usize)> = Vec::new();
    for (index, (id, weight)) in nodes.iter().enumerate() {
        let id: Vec<u8> = id.bytes().map(|b| if b == b':' { 0 } else { b }).collect();
        let mut previous = 0u32;
        for _ in 0..160 * weight {
            let mut input = id.clone();
            input.extend_from_slice(&previous.to_le_bytes());
            previous = crc32(&input);
            points.push((previous, index));
        }
    }
    points.sort();
    let hash = crc32(key.as_bytes());
    let point = points.iter().find(|(h, _)| *h >= hash).unwrap_or(&points[0]);
    nodes[point.1].0.clone()
}

#[test]
fn chash_maps_client_addresses_exactly_as_apisix() {
    assert_eq!(apisix_chash(&[("0.0.0.0:1995".into(), 1), ("127.0.0.1:1995".into(), 1)], "f"), "0.0.0.0:1995");
    let a = Upstream::named("a");
    let b = Upstream::named("b");
    let c = Upstream::named("c");
    let (strait, listen) = proxy();
    let mut route = route_to(&[(a.addr, 1), (b.addr, 2), (c.addr, 1)]);
    route["upstream"]["type"] = json!("chash");
    route["upstream"]["key"] = json!("remote_addr");
    strait.put_route("1", route);
    wait_until("the route is live", || try_name(listen).is_ok());
    let ring = [(a.addr.to_string(), 1), (b.addr.to_string(), 2), (c.addr.to_string(), 1)];
    let by_addr = |addr: &str| {
        if addr == a.addr.to_string() {
            "a"
        } else if addr == b.addr.to_string() {
            "b"
        } else {
            "c"
        }
    };
    let mut seen = std::collections::HashSet::new();
    for last in 1..=40u8 {
        let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let expected = by_addr(&apisix_chash(&ring, &client.to_string()));
        for _ in 0..2 {
            let mut conn = connect_from(client, listen);
            assert_eq!(read_line(&mut conn).unwrap(), expected, "client {client}");
        }
        seen.insert(expected);
    }
    assert!(seen.len() >= 2, "40 clients spread over more than one node");
}

#[test]
fn a_connect_that_never_completes_times_out_and_the_next_node_is_tried() {
    let hole = blackhole();
    let live = Upstream::named("live");
    let (strait, listen) = proxy();
    let nodes = json!([
        {"host": "127.0.0.1", "port": hole.addr.port(), "weight": 1, "priority": 1},
        {"host": "127.0.0.1", "port": live.addr.port(), "weight": 1, "priority": 0}
    ]);
    strait.put_route("1", json!({"upstream": {"nodes": nodes, "timeout": {"connect": 0.3, "send": 10, "read": 10}}}));
    let started = Instant::now();
    wait_name(listen, "live");
    assert!(started.elapsed() >= Duration::from_millis(250), "the first try waited for its connect timeout");
}

#[test]
fn retry_timeout_stops_retries_before_the_live_node_is_reached() {
    let holes = [blackhole(), blackhole()];
    let live = Upstream::named("live");
    let (strait, listen) = proxy();
    let node = |port: u16, priority: i32| json!({"host": "127.0.0.1", "port": port, "weight": 1, "priority": priority});
    let nodes = json!([node(holes[0].addr.port(), 3), node(holes[1].addr.port(), 2), node(live.addr.port(), 1)]);
    let upstream = |retry_timeout: f64| {
        json!({"upstream": {"nodes": nodes.clone(), "retry_timeout": retry_timeout,
            "timeout": {"connect": 0.4, "send": 10, "read": 10}}})
    };
    // Without a retry deadline the third try reaches the live node.
    strait.put_route("1", upstream(0.0));
    wait_name(listen, "live");
    // With retry_timeout 0.5 s: the second try starts at 0.4 s, the third would start at 0.8 s: too late.
    strait.put_route("1", upstream(0.5));
    std::thread::sleep(Duration::from_millis(200));
    let mut conn = connect(listen);
    // Panics if a byte (the live node's name) arrives.
    expect_closed_without_bytes(&mut conn);
}
