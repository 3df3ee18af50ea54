//! Process lifecycle: graceful shutdown on SIGTERM/SIGINT, and routes that
//! survive a restart in the same data dir.

mod common;

use common::*;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

/// True once `addr` refuses new TCP connections.
fn refuses(addr: SocketAddr) -> bool {
    matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[test]
fn sigterm_lets_an_open_connection_finish_then_exits_0() {
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let mut strait = Strait::start(Config::new().listen(listen).shutdown_timeout("10s"));
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);

    let mut open = connect(listen);
    open.write_all(b"before").unwrap();
    assert_eq!(read_exact(&mut open, 6), b"before");

    strait.signal(libc::SIGTERM);
    wait_until("the listener stops accepting after SIGTERM", || refuses(listen));
    assert!(strait.try_exit().is_none(), "strait exited while a connection was still open");

    open.write_all(b"during shutdown").unwrap();
    assert_eq!(read_exact(&mut open, 15), b"during shutdown");
    open.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut open), b"");

    let status = strait.wait_exit(Duration::from_secs(20)).expect("strait exits once its last connection is done");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigterm_cuts_connections_still_open_after_the_shutdown_timeout() {
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let mut strait = Strait::start(Config::new().listen(listen).shutdown_timeout("1s"));
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);

    let mut open = connect(listen);
    open.write_all(b"x").unwrap();
    assert_eq!(read_exact(&mut open, 1), b"x");

    strait.signal(libc::SIGTERM);
    let status = strait
        .wait_exit(Duration::from_secs(20))
        .expect("strait exits after worker_shutdown_timeout even with a connection open");
    assert!(status.success(), "exit status {status}");
    expect_closed_without_bytes(&mut open);
}

#[test]
fn sigint_stops_like_sigterm() {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let mut strait = Strait::start(Config::new().listen(listen));
    strait.signal(libc::SIGINT);
    let status = strait.wait_exit(Duration::from_secs(20)).expect("strait exits on SIGINT");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn routes_persist_across_a_restart_with_the_same_data_dir() {
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let config = Config::new().listen(listen);
    let strait = Strait::start(config.clone());
    let created = strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);

    let dir = strait.stop();
    let strait = Strait::start_in(dir, config);
    let (status, answer) = strait.api("GET", "/apisix/admin/stream_routes/1", None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["value"], created["value"], "the route comes back as it was stored");
    wait_echo(listen);
}

#[test]
fn deleted_routes_stay_deleted_after_a_restart() {
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let config = Config::new().listen(listen);
    let strait = Strait::start(config.clone());
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    strait.put_route("2", route_to(&[(echo.addr, 1)]));
    let (status, _) = strait.api("DELETE", "/apisix/admin/stream_routes/1", None);
    assert_eq!(status, 200);

    let strait = Strait::start_in(strait.stop(), config);
    let (status, _) = strait.api("GET", "/apisix/admin/stream_routes/1", None);
    assert_eq!(status, 404);
    let (status, list) = strait.api("GET", "/apisix/admin/stream_routes", None);
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1, "{list}");
}
