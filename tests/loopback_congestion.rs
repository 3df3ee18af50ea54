//! `strait.loopback_tcp_congestion`: once a connection between peers on this
//! host streams (the engine hands it to splice), both of the proxy's sockets
//! use the configured congestion control; short request/response connections
//! and `system` keep the system's. Read back with `ss -ti` (iproute2), the way
//! an operator would check it. Without `ss` the test prints a skip line and
//! passes, unless STRAIT_REQUIRE_EXTERNAL=1 (as in CI).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

fn ss_available() -> bool {
    let found = Command::new("ss").arg("-V").output().is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("STRAIT_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!("ss is required (STRAIT_REQUIRE_EXTERNAL=1) but not installed: apt-get install -y iproute2");
        }
        eprintln!(
            "SKIP: ss not installed (apt-get install -y iproute2); set STRAIT_REQUIRE_EXTERNAL=1 to fail instead"
        );
    }
    found
}

fn proc_sys(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// An algorithm other than the system's that an unprivileged process may set
/// (reno is always allowed).
fn other_than_system() -> String {
    let system = proc_sys("tcp_congestion_control");
    let allowed = proc_sys("tcp_allowed_congestion_control");
    let other = allowed.split_whitespace().chain(["reno"]).find(|name| *name != system).unwrap_or("cubic");
    other.to_string()
}

/// The `ss -ti` detail words of every established socket matching `filter`
/// (`["dport", "=", ":9000"]`), one list per socket.
fn socket_details(filter: &[&str]) -> Vec<Vec<String>> {
    let out = Command::new("ss").args(["-tinH", "state", "established"]).args(filter).output().expect("run ss");
    assert!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    // Each socket is a line with its addresses, then an indented detail line.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.starts_with(char::is_whitespace))
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The `ss -ti` detail words of the established sockets connected to `peer`'s port.
fn sockets_towards(peer: SocketAddr) -> Vec<Vec<String>> {
    socket_details(&["dport", "=", &format!(":{}", peer.port())])
}

/// Asserts the proxy's socket towards `upstream` and its socket from the
/// client (local port `listen`) use `algorithm`.
fn assert_proxy_sockets_use(algorithm: &str, listen: SocketAddr, upstream: SocketAddr, what: &str) {
    let to_upstream = sockets_towards(upstream);
    let from_client = socket_details(&["sport", "=", &format!(":{}", listen.port())]);
    assert_eq!(to_upstream.len(), 1, "{what}: one proxy socket towards the upstream: {to_upstream:?}");
    assert_eq!(from_client.len(), 1, "{what}: one proxy socket from the client: {from_client:?}");
    for (side, details) in [("upstream", &to_upstream[0]), ("client", &from_client[0])] {
        assert!(
            details.iter().any(|w| w == algorithm),
            "{what}: the {side} socket should use {algorithm}: {details:?}"
        );
    }
}

/// An upstream that reads and discards everything.
fn sink() -> Upstream {
    Upstream::spawn(SocketAddr::new(LOCALHOST, 0), |mut conn, _| {
        let mut buf = vec![0; 64 * 1024];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    })
}

/// Streams 8 MiB through the proxy and keeps the connection open.
fn streaming_client(listen: SocketAddr) -> TcpStream {
    let mut client = connect(listen);
    let chunk = vec![7u8; 256 * 1024];
    for _ in 0..32 {
        client.write_all(&chunk).expect("stream through the proxy");
    }
    client
}

#[test]
fn a_streaming_loopback_connection_gets_the_configured_algorithm_on_both_sides() {
    if !ss_available() {
        return;
    }
    let algorithm = other_than_system();
    let upstream = sink();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().listen(listen).strait("loopback_tcp_congestion", &algorithm));
    strait.put_route("1", route_to(&[(upstream.addr, 1)]));

    // A short connection first: a few bytes, not streaming, so left alone.
    let mut short = None;
    wait_until("a connection through the route", || {
        short = try_connect(listen).ok().filter(|mut c| c.write_all(b"hi").is_ok());
        short.is_some() && upstream.accepted() > 0
    });
    wait_until("the short connection's sockets are established", || sockets_towards(upstream.addr).len() == 1);
    assert_proxy_sockets_use(&proc_sys("tcp_congestion_control"), listen, upstream.addr, "short connection");
    drop(short);
    wait_until("the short connection is gone", || sockets_towards(upstream.addr).is_empty());

    let _client = streaming_client(listen);
    wait_until("the streaming connection's sockets switched", || {
        let details = sockets_towards(upstream.addr);
        details.len() == 1 && details[0].iter().any(|w| *w == algorithm)
    });
    assert_proxy_sockets_use(&algorithm, listen, upstream.addr, "streaming connection");
}

#[test]
fn system_keeps_the_system_algorithm_on_streaming_connections() {
    if !ss_available() {
        return;
    }
    let upstream = sink();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().listen(listen).strait("loopback_tcp_congestion", "system"));
    strait.put_route("1", route_to(&[(upstream.addr, 1)]));
    wait_until("the route is live", || try_connect(listen).is_ok_and(|_| upstream.accepted() > 0));
    wait_until("the probe connection is gone", || sockets_towards(upstream.addr).is_empty());

    let _client = streaming_client(listen);
    // Give a switch (which must not come) the time it would take.
    std::thread::sleep(Duration::from_millis(200));
    assert_proxy_sockets_use(&proc_sys("tcp_congestion_control"), listen, upstream.addr, "streaming, system");
}
