//! The stream access log (`nginx_config.stream.enable_access_log`): a line
//! per finished TCP connection and UDP session in APISIX's format or a custom
//! one, statuses as nginx's stream module logs them, and SIGUSR1 reopening the
//! file after rotation.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// APISIX's default `access_log_format`, written out (not taken from Strait's code).
const APISIX_DEFAULT: &str = "$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received $session_time";
const CUSTOM: &str = "$remote_addr $server_port $protocol $status $bytes_sent $bytes_received $upstream_addr $route_id";

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Waits until the log at `path` has `n` lines (lines are flushed within 3 s).
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    wait_until(&format!("{n} line(s) in {}", path.display()), || log_lines(path).len() >= n);
    log_lines(path)
}

fn start(listen: SocketAddr, udp: Option<SocketAddr>, format: &str) -> (Strait, PathBuf) {
    let dir = TempDir::new("access-log");
    let log = dir.path().join("logs").join("access_stream.log");
    let mut config = Config::new()
        .listen(listen)
        .nginx_stream("enable_access_log", "true")
        .nginx_stream("access_log", &format!("\"{}\"", log.display()))
        .nginx_stream("access_log_format", &format!("\"{format}\""));
    if let Some(udp) = udp {
        config = config.listen_udp(udp);
    }
    (Strait::start_in(dir, config), log)
}

/// One exchange through the proxy: `sent` out, the echo back, then both FINs.
fn exchange(listen: SocketAddr, sent: &[u8]) {
    let mut client = connect(listen);
    client.write_all(sent).unwrap();
    assert_eq!(read_exact(&mut client, sent.len()), sent);
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut client), b"");
}

#[test]
fn tcp_connections_are_logged_with_status_bytes_and_upstream() {
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let (strait, log) = start(listen, None, CUSTOM);
    strait.put_route("served", json!({"server_port": listen.port(), "upstream": upstream_of(&[(echo.addr, 1)])}));
    wait_echo(listen);

    exchange(listen, b"hello, log");
    let port = listen.port();
    let expected = format!("127.0.0.1 {port} TCP 200 10 10 {} served", echo.addr);
    wait_until("the exchange is logged", || log_lines(&log).contains(&expected));

    // The only node refuses: 502, the node it tried, nothing moved.
    let dead = dead_addr();
    strait.put_route("served", json!({"server_port": port, "upstream": upstream_of(&[(dead, 1)])}));
    wait_until("a connection to the dead node is logged", || {
        let mut client = connect(listen);
        client.shutdown(Shutdown::Write).unwrap();
        read_to_end(&mut client);
        log_lines(&log).iter().any(|l| l.contains(" 502 "))
    });
    let failed = log_lines(&log).into_iter().find(|l| l.contains(" 502 ")).unwrap();
    assert_eq!(failed, format!("127.0.0.1 {port} TCP 502 0 0 {dead} served"));

    // No route at all: refused at accept, 503, no upstream.
    strait.api("DELETE", "/apisix/admin/stream_routes/served", None);
    wait_until("a connection without a route is logged", || {
        drop(try_connect(listen));
        log_lines(&log).iter().any(|l| l.contains(" 503 "))
    });
    let refused = log_lines(&log).into_iter().find(|l| l.contains(" 503 ")).unwrap();
    assert_eq!(refused, format!("127.0.0.1 {port} TCP 503 0 0 - -"));
}

#[test]
fn the_default_format_is_apisix_s_and_udp_sessions_are_logged() {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let udp_listen = SocketAddr::new(LOCALHOST, free_port());
    let (strait, log) = start(listen, Some(udp_listen), APISIX_DEFAULT);
    let upstream = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    upstream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut route =
        json!({"server_port": udp_listen.port(), "upstream": upstream_of(&[(upstream.local_addr().unwrap(), 1)])});
    route["upstream"]["proxy_responses"] = json!(1);
    strait.put_route("dns", route);

    let client = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 64];
    let reply_seen = || {
        client.send_to(b"query!", udp_listen).unwrap();
        if let Ok((n, from)) = upstream.recv_from(&mut [0u8; 64]) {
            assert_eq!(n, 6);
            upstream.send_to(b"an answer", from).unwrap();
        }
        client.recv_from(&mut buf).is_ok()
    };
    wait_until("a reply through the UDP route", reply_seen);
    // proxy_responses 1: the reply ended the session, so it is logged.
    let line = wait_lines(&log, 1).into_iter().find(|l| l.contains(" UDP ")).expect("a UDP line");
    let (addr, rest) = line.split_once(" [").unwrap();
    let (time, tail) = rest.split_once("] ").unwrap();
    assert_eq!(addr, "127.0.0.1");
    assert_eq!(time.len(), 26, "nginx's $time_local, like 27/Nov/2026:04:40:00 +0000: {time}");
    let fields: Vec<&str> = tail.split(' ').collect();
    assert_eq!(&fields[..4], ["UDP", "200", "9", "6"], "{line}");
    assert!(fields[4].parse::<f64>().is_ok_and(|t| t < 5.0), "$session_time in seconds: {line}");
}

#[test]
fn sigusr1_reopens_the_log_after_rotation() {
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let (strait, log) = start(listen, None, CUSTOM);
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);
    exchange(listen, b"before");
    // Flushes write every buffered line: once this one is in the file, all earlier ones are.
    wait_until("the connection is logged", || log_lines(&log).iter().any(|l| l.contains(" 200 6 6 ")));
    let old = log_lines(&log).len();

    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    strait.signal(libc::SIGUSR1);
    wait_until("the log is reopened at its path", || log.exists());
    exchange(listen, b"after");
    let new = wait_lines(&log, 1);
    assert!(new.iter().all(|l| l.contains(" 200 5 5 ")), "only the new connection in the new file: {new:?}");
    assert_eq!(log_lines(&rotated).len(), old, "the rotated file keeps what it had");
}

#[test]
fn an_access_log_that_cannot_be_opened_stops_the_start_naming_the_key() {
    let dir = TempDir::new("access-log-bad");
    // A regular file where the log's folder should be: no folder can be made there (even as root).
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let config = Config::new()
        .listen(SocketAddr::new(LOCALHOST, free_port()))
        .nginx_stream("enable_access_log", "true")
        .nginx_stream("access_log", &format!("\"{}\"", blocker.join("access.log").display()));
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml(&dir.path().join("data"))).unwrap();
    let out = run_strait(&["-c", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    assert!(stderr.contains("nginx_config.stream.access_log: cannot open the access log"), "{stderr}");
}
