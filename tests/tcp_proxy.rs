//! TCP proxying end to end: the real binary, real sockets, routes set through
//! the Admin API.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A proxy with one `127.0.0.1:<port>` listener; returns it and the listener.
fn proxy_with_one_listener() -> (Strait, SocketAddr) {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    (Strait::start(Config::new().listen(listen)), listen)
}

#[test]
fn echo_through_a_route() {
    let echo = Upstream::echo();
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);

    let mut client = connect(listen);
    client.write_all(b"hello, strait\n").unwrap();
    assert_eq!(read_exact(&mut client, 14), b"hello, strait\n");
    client.write_all(b"second write").unwrap();
    assert_eq!(read_exact(&mut client, 12), b"second write");
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut client), b"", "the echo server closes after our FIN");
}

#[test]
fn no_matching_route_closes_without_writing() {
    // The upstream greets first, so a wrongly proxied connection would get bytes.
    let greeter = Upstream::greeter(b"you should not see this\n");
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route(
        "1",
        json!({
            "remote_addr": "127.0.0.2",
            "upstream": {"type": "roundrobin", "nodes": {greeter.addr.to_string(): 1}}
        }),
    );
    // The route is in force once a matching client gets the greeting.
    wait_until("the route from 127.0.0.2 is in force", || {
        try_connect_from(v4(127, 0, 0, 2), listen).and_then(|mut s| read_line(&mut s)).is_ok()
    });
    let accepted_before = greeter.accepted();

    let mut client = connect_from(v4(127, 0, 0, 1), listen);
    expect_closed_without_bytes(&mut client);
    assert_eq!(greeter.accepted(), accepted_before, "no upstream connection for an unmatched client");
}

#[test]
fn listener_without_any_route_closes_without_writing() {
    let (_strait, listen) = proxy_with_one_listener();
    let mut client = connect(listen);
    expect_closed_without_bytes(&mut client);
}

#[test]
fn server_addr_filter_matches_the_local_address() {
    let echo = Upstream::echo();
    let port = free_port();
    // A bare port listens on every IPv4 address; server_addr is the address
    // the client connected to.
    let strait = Strait::start(Config::new().listen_port(port));
    strait.put_route("1", json!({"server_addr": "127.0.0.2", "upstream": upstream_of(&[(echo.addr, 1)])}));
    let matching = SocketAddr::new(v4(127, 0, 0, 2), port);
    wait_echo(matching);

    let mut other = connect(SocketAddr::new(v4(127, 0, 0, 1), port));
    expect_closed_without_bytes(&mut other);
}

#[test]
fn server_port_filter_matches_the_local_port() {
    let echo = Upstream::echo();
    let matching = SocketAddr::new(LOCALHOST, free_port());
    let other = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().listen(matching).listen(other));
    strait.put_route("1", json!({"server_port": matching.port(), "upstream": upstream_of(&[(echo.addr, 1)])}));
    wait_echo(matching);

    expect_closed_without_bytes(&mut connect(other));
}

#[test]
fn remote_addr_ipv4_filter_matches_the_client_address() {
    let echo = Upstream::echo();
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", json!({"remote_addr": "127.0.0.3", "upstream": upstream_of(&[(echo.addr, 1)])}));
    wait_until("a client from 127.0.0.3 is proxied", || {
        let Ok(mut s) = try_connect_from(v4(127, 0, 0, 3), listen) else { return false };
        s.write_all(b"v4").is_ok() && {
            let mut back = [0u8; 2];
            s.read_exact(&mut back).is_ok() && &back == b"v4"
        }
    });

    expect_closed_without_bytes(&mut connect_from(v4(127, 0, 0, 4), listen));
}

#[test]
fn remote_addr_ipv6_filter_matches_the_client_address() {
    let echo = Upstream::echo_on(SocketAddr::new(LOCALHOST_V6, 0));
    let listen_v6 = SocketAddr::new(LOCALHOST_V6, free_port_v6());
    let listen_v4 = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().listen(listen_v6).listen(listen_v4));
    strait.put_route("1", json!({"remote_addr": "::1", "upstream": upstream_of(&[(echo.addr, 1)])}));
    wait_echo(listen_v6);

    // Same route, but an IPv4 client does not match "::1".
    expect_closed_without_bytes(&mut connect(listen_v4));
}

#[test]
fn remote_addr_cidr_filter_matches_the_client_network() {
    let echo = Upstream::echo();
    let (strait, listen) = proxy_with_one_listener();
    // 127.0.0.0/30 holds .0 to .3.
    strait.put_route("1", json!({"remote_addr": "127.0.0.0/30", "upstream": upstream_of(&[(echo.addr, 1)])}));
    let echoes_from = |source: IpAddr| {
        let Ok(mut s) = try_connect_from(source, listen) else { return false };
        let mut back = [0u8; 4];
        s.write_all(b"cidr").is_ok() && s.read_exact(&mut back).is_ok() && &back == b"cidr"
    };
    wait_until("a client from 127.0.0.2 is proxied", || echoes_from(v4(127, 0, 0, 2)));
    assert!(echoes_from(v4(127, 0, 0, 3)), "127.0.0.3 is inside 127.0.0.0/30");

    expect_closed_without_bytes(&mut connect_from(v4(127, 0, 0, 4), listen));
}

#[test]
fn all_filters_of_a_route_must_match() {
    let echo = Upstream::echo();
    let port = free_port();
    let other_port = free_port();
    let strait = Strait::start(Config::new().listen_port(port).listen_port(other_port));
    strait.put_route(
        "1",
        json!({
            "server_addr": "127.0.0.1",
            "server_port": port,
            "remote_addr": "127.0.0.5",
            "upstream": upstream_of(&[(echo.addr, 1)])
        }),
    );
    let to = |ip: IpAddr, p: u16| SocketAddr::new(ip, p);
    wait_until("the three-filter route is in force", || {
        let Ok(mut s) = try_connect_from(v4(127, 0, 0, 5), to(LOCALHOST, port)) else { return false };
        let mut back = [0u8; 3];
        s.write_all(b"all").is_ok() && s.read_exact(&mut back).is_ok() && &back == b"all"
    });
    // Each filter failing alone refuses the connection.
    expect_closed_without_bytes(&mut connect_from(v4(127, 0, 0, 6), to(LOCALHOST, port)));
    expect_closed_without_bytes(&mut connect_from(v4(127, 0, 0, 5), to(v4(127, 0, 0, 9), port)));
    expect_closed_without_bytes(&mut connect_from(v4(127, 0, 0, 5), to(LOCALHOST, other_port)));
}

#[test]
fn overlapping_routes_pick_the_lowest_id_in_byte_order() {
    let two = Upstream::named("two");
    let ten = Upstream::named("ten");
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("2", route_to(&[(two.addr, 1)]));
    wait_name(listen, "two");
    // "10" sorts before "2" byte by byte, so it wins once it is in force.
    strait.put_route("10", route_to(&[(ten.addr, 1)]));
    wait_name(listen, "ten");
    for _ in 0..5 {
        assert_eq!(try_name(listen).unwrap(), "ten");
    }
}

#[test]
fn server_first_backend_greets_through_the_proxy() {
    let greeter = Upstream::greeter(b"220 strait-test ESMTP ready\r\n");
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(greeter.addr, 1)]));
    wait_until("the greeting arrives through the proxy", || {
        try_connect(listen).and_then(|mut s| read_line(&mut s)).is_ok()
    });

    // The client writes nothing: the upstream must be connected at accept time.
    let mut client = connect(listen);
    assert_eq!(read_line(&mut client).unwrap(), "220 strait-test ESMTP ready\r");
    client.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_exact(&mut client, 6), b"QUIT\r\n");
}

const BULK: u64 = 20 << 20;

#[test]
fn twenty_mib_each_way_after_the_client_half_closes() {
    // The upstream checks the client's 20 MiB up to its FIN (so the FIN must
    // reach it), and only then sends its own 20 MiB and closes: data keeps
    // flowing towards a client that has shut down its write half.
    let (report, verdicts) = mpsc::channel::<Result<u64, String>>();
    let report = Mutex::new(report);
    let upstream = Upstream::spawn(SocketAddr::new(LOCALHOST, 0), move |mut conn, _| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
        let mut first = [0u8; 5];
        if conn.read_exact(&mut first).is_err() || &first != b"bulk:" {
            // A readiness probe: echo it back.
            let _ = conn.write_all(&first);
            return;
        }
        let got = read_pattern_to_eof(&mut conn, 1);
        let ok = got.is_ok();
        report.lock().unwrap().send(got).unwrap();
        if ok {
            let _ = write_pattern(&mut conn, 2, BULK);
        }
        let _ = conn.shutdown(Shutdown::Write);
    });
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(upstream.addr, 1)]));
    wait_until("the route is in force", || try_echo(listen, b"probe").is_ok());

    let mut client = connect(listen);
    let mut writer = client.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(b"bulk:")?;
        write_pattern(&mut writer, 1, BULK)?;
        writer.shutdown(Shutdown::Write)
    });
    let received = read_pattern_to_eof(&mut client, 2);
    sender.join().unwrap().expect("client sends 20 MiB and its FIN");
    let upstream_got = verdicts.recv_timeout(Duration::from_secs(60)).expect("upstream verdict");

    assert_eq!(upstream_got, Ok(BULK), "client -> upstream: all 20 MiB in order, then the FIN");
    assert_eq!(received, Ok(BULK), "upstream -> client after the client's FIN: all 20 MiB, then EOF");
}

#[test]
fn twenty_mib_each_way_after_the_upstream_half_closes() {
    // The upstream sends 20 MiB and shuts down its write half first; the
    // client reads it all to EOF and only then sends its own 20 MiB, which
    // must still reach the upstream.
    let (report, verdicts) = mpsc::channel::<Result<u64, String>>();
    let report = Mutex::new(report);
    let upstream = Upstream::spawn(SocketAddr::new(LOCALHOST, 0), move |mut conn, _| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
        let mut first = [0u8; 5];
        if conn.read_exact(&mut first).is_err() || &first != b"bulk:" {
            let _ = conn.write_all(&first);
            return;
        }
        let mut writer = conn.try_clone().unwrap();
        let sender = thread::spawn(move || {
            let sent = write_pattern(&mut writer, 3, BULK);
            let _ = writer.shutdown(Shutdown::Write);
            sent
        });
        let got = read_pattern_to_eof(&mut conn, 4);
        let _ = sender.join();
        report.lock().unwrap().send(got).unwrap();
    });
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(upstream.addr, 1)]));
    wait_until("the route is in force", || try_echo(listen, b"probe").is_ok());

    let mut client = connect(listen);
    client.write_all(b"bulk:").unwrap();
    let received = read_pattern_to_eof(&mut client, 3);
    assert_eq!(received, Ok(BULK), "upstream -> client: all 20 MiB in order, then EOF");
    // The upstream's FIN has arrived; our direction is still open.
    write_pattern(&mut client, 4, BULK).expect("client sends 20 MiB after the upstream's FIN");
    client.shutdown(Shutdown::Write).unwrap();
    let upstream_got = verdicts.recv_timeout(Duration::from_secs(60)).expect("upstream verdict");
    assert_eq!(upstream_got, Ok(BULK), "client -> upstream after the upstream's FIN: all 20 MiB, then EOF");
    // Both halves are closed now: the proxy ends the connection.
    assert_eq!(read_to_end(&mut client), b"");
}

#[test]
fn six_hundred_concurrent_connections_each_get_their_own_bytes() {
    const CONNECTIONS: usize = 600;
    // Each proxied connection costs 2 descriptors in Strait and 2 here.
    raise_nofile_limit(8 * CONNECTIONS as u64);
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().listen(listen).workers("2"));
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);
    wait_until("the probe connections have ended", || echo.open() == 0);

    let mut clients: Vec<_> = (0..CONNECTIONS).map(|_| connect(listen)).collect();
    wait_until(&format!("all {CONNECTIONS} connections are open at the upstream at once"), || {
        echo.open() == CONNECTIONS
    });
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("connection {i:04}\n").as_bytes()).unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let line = read_line(client).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(line, format!("connection {i:04}"));
    }
    for client in &clients {
        client.shutdown(Shutdown::Write).unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(read_to_end(client), b"", "connection {i} ends cleanly");
    }
}

#[test]
fn failover_skips_a_dead_node() {
    let live = Upstream::named("live");
    let dead = dead_addr();
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(dead, 1), (live.addr, 1)]));
    wait_name(listen, "live");
    // Round robin hands every other connection to the dead node first; the
    // retry (retries default to nodes - 1) must reach the live one each time.
    for i in 0..6 {
        let name = try_name(listen).unwrap_or_else(|e| panic!("connection {i} was not failed over: {e}"));
        assert_eq!(name, "live");
    }
}

#[test]
fn retries_zero_disables_failover() {
    let live = Upstream::named("live");
    let dead = dead_addr();
    let (strait, listen) = proxy_with_one_listener();
    let mut route = route_to(&[(dead, 1), (live.addr, 1)]);
    route["upstream"]["retries"] = json!(0);
    strait.put_route("1", route);
    wait_name(listen, "live");
    let served = (0..8).filter(|_| try_name(listen).is_ok()).count();
    assert_eq!(served, 4, "with retries 0, the dead node's turns fail (1:1 round robin)");
}

#[test]
fn weighted_round_robin_one_to_three_gives_ten_to_thirty() {
    let a = Upstream::named("a");
    let b = Upstream::named("b");
    let (strait, listen) = proxy_with_one_listener(); // one worker: exact per worker
    strait.put_route("1", route_to(&[(a.addr, 1), (b.addr, 3)]));
    wait_until("the route is in force", || try_name(listen).is_ok());

    let names: Vec<String> =
        (0..40).map(|i| try_name(listen).unwrap_or_else(|e| panic!("connection {i}: {e}"))).collect();
    let count_a = names.iter().filter(|n| *n == "a").count();
    let count_b = names.iter().filter(|n| *n == "b").count();
    assert_eq!((count_a, count_b), (10, 30), "sequence: {names:?}");
    // Smooth WRR: every 4 consecutive picks hold exactly one "a" (no bursts).
    for window in names.windows(4) {
        assert_eq!(window.iter().filter(|n| *n == "a").count(), 1, "sequence: {names:?}");
    }
}

#[test]
fn config_change_applies_to_new_connections_and_spares_established_ones() {
    let old = Upstream::named("old");
    let new = Upstream::named("new");
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(old.addr, 1)]));
    wait_name(listen, "old");

    let mut established = connect(listen);
    assert_eq!(read_line(&mut established).unwrap(), "old");

    strait.put_route("1", route_to(&[(new.addr, 1)]));
    wait_name(listen, "new");

    // The established connection still talks to the old upstream.
    let before = old.bytes_in();
    established.write_all(b"still here\n").unwrap();
    assert_eq!(read_line(&mut established).unwrap(), "still here");
    assert_eq!(old.bytes_in(), before + 11, "the old upstream received the bytes");
    established.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut established), b"");
}

#[test]
fn deleting_a_route_spares_established_connections() {
    let echo = Upstream::echo();
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);
    let mut established = connect(listen);
    established.write_all(b"one").unwrap();
    assert_eq!(read_exact(&mut established, 3), b"one");

    let (status, _) = strait.api("DELETE", "/apisix/admin/stream_routes/1", None);
    assert_eq!(status, 200);
    wait_until("new connections find no route", || closes_without_bytes(listen));
    established.write_all(b"two").unwrap();
    assert_eq!(read_exact(&mut established, 3), b"two");
}

#[test]
fn idle_connection_is_closed_after_the_upstream_timeout() {
    let echo = Upstream::echo();
    let (strait, listen) = proxy_with_one_listener();
    let mut route = route_to(&[(echo.addr, 1)]);
    // idle timeout = max(send, read) = 1 s
    route["upstream"]["timeout"] = json!({"connect": 1, "send": 1, "read": 1});
    strait.put_route("1", route);
    wait_echo(listen);

    let mut client = connect(listen);
    client.write_all(b"x").unwrap();
    assert_eq!(read_exact(&mut client, 1), b"x");
    // Then silence: the proxy must close the connection (well within IO_TIMEOUT).
    expect_closed_without_bytes(&mut client);
}

#[test]
fn client_reset_resets_the_upstream_connection() {
    let (report, outcomes) = mpsc::channel::<std::io::ErrorKind>();
    let report = Mutex::new(report);
    let upstream = Upstream::spawn(SocketAddr::new(LOCALHOST, 0), move |mut conn, _| {
        let mut buf = [0u8; 16];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => {
                    let _ = report.lock().unwrap().send(std::io::ErrorKind::UnexpectedEof);
                    return;
                }
                Ok(n) => {
                    let _ = conn.write_all(&buf[..n]);
                }
                Err(e) => {
                    let _ = report.lock().unwrap().send(e.kind());
                    return;
                }
            }
        }
    });
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(upstream.addr, 1)]));
    wait_until("the route is in force", || try_echo(listen, b"probe").is_ok());
    // Drain the probe's outcome (it ended with a FIN).
    while outcomes.recv_timeout(Duration::from_millis(500)).is_ok() {}

    let mut client = connect(listen);
    client.write_all(b"hi").unwrap();
    assert_eq!(read_exact(&mut client, 2), b"hi");
    reset(client);
    let outcome = outcomes.recv_timeout(IO_TIMEOUT).expect("the upstream connection ends");
    assert_eq!(outcome, std::io::ErrorKind::ConnectionReset, "the upstream sees a reset, not a FIN");
}

#[test]
fn upstream_reset_resets_the_client_connection() {
    let upstream = Upstream::spawn(SocketAddr::new(LOCALHOST, 0), |mut conn, _| {
        let mut buf = [0u8; 5];
        if conn.read_exact(&mut buf).is_ok() && &buf == b"reset" {
            let _ = conn.write_all(b"ok");
            // Wait for the proxy to have forwarded "ok" (the client asks again).
            let mut again = [0u8; 1];
            let _ = conn.read_exact(&mut again);
            reset(conn);
        } else {
            let _ = conn.write_all(&buf);
        }
    });
    let (strait, listen) = proxy_with_one_listener();
    strait.put_route("1", route_to(&[(upstream.addr, 1)]));
    wait_until("the route is in force", || try_echo(listen, b"probe").is_ok());

    let mut client = connect(listen);
    client.write_all(b"reset").unwrap();
    assert_eq!(read_exact(&mut client, 2), b"ok");
    client.write_all(b"!").unwrap();
    let mut buf = [0u8; 8];
    match client.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the client to see a reset, got {other:?}"),
    }
}
