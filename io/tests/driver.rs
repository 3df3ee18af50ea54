//! The driver over real loopback sockets, with a snapshot built in-process
//! (the binary's end-to-end tests cover the same through config.yaml and the
//! Admin API).

use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{EngineConfig, Resources, Snapshot};
use strait_io::{Workers, WorkersConfig};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn snapshot(routes: serde_json::Value) -> Arc<Snapshot> {
    let resources = Resources {
        stream_routes: routes.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    };
    let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| vec![]);
    assert!(warnings.is_empty(), "{warnings:?}");
    Arc::new(snapshot)
}

fn start(port: u16, snapshot: Arc<Snapshot>, buffer_bytes: usize) -> Workers {
    start_with(port, snapshot, EngineConfig { buffer_bytes, ..EngineConfig::default() })
}

fn start_with(port: u16, snapshot: Arc<Snapshot>, engine: EngineConfig) -> Workers {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listeners =
        vec![ListenSpec { protocol: Protocol::Tcp, addr, tls: false, tls_passthrough: false, proxy_protocol: false }];
    Workers::start(
        WorkersConfig { workers: 1, listeners, engine, loopback_tcp_congestion: None, access_log: None },
        snapshot,
    )
    .unwrap()
}

/// An upstream that reads everything until FIN, then answers with the byte
/// count and a tail of `extra` bytes, then closes.
fn counting_upstream(extra: usize) -> (u16, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(format!("{}\n", got.len()).as_bytes()).unwrap();
        s.write_all(&pattern(extra)).unwrap();
        got
    });
    (port, handle)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn bytes_cross_both_ways_with_half_close_and_tiny_buffers() {
    let (up, upstream) = counting_upstream(300_000);
    let port = free_port();
    let workers = start(port, snapshot(json!({"1": {"upstream": {"nodes": {format!("127.0.0.1:{up}"): 1}}}})), 1024);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let sent = pattern(500_000);
    client.write_all(&sent).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).unwrap();
    assert_eq!(upstream.join().unwrap(), sent, "the upstream got every byte in order");
    let header = b"500000\n";
    assert_eq!(&reply[..header.len()], header);
    assert_eq!(&reply[header.len()..], &pattern(300_000)[..], "the client got every byte after its half-close");
    workers.shutdown(Duration::from_secs(1));
}

#[test]
fn a_refused_node_is_skipped_for_the_next() {
    let dead = free_port();
    let (up, upstream) = counting_upstream(0);
    let port = free_port();
    let nodes = json!({format!("127.0.0.1:{dead}"): 100, format!("127.0.0.1:{up}"): 1});
    let workers = start(port, snapshot(json!({"1": {"upstream": {"nodes": nodes}}})), 65536);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client.write_all(b"hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "5\n");
    assert_eq!(upstream.join().unwrap(), b"hello", "bytes sent before the connect are kept for the node that accepts");
    workers.shutdown(Duration::from_secs(1));
}

#[test]
fn no_route_closes_without_a_byte() {
    let port = free_port();
    let workers =
        start(port, snapshot(json!({"1": {"server_port": 1, "upstream": {"nodes": {"127.0.0.1:1": 1}}}})), 65536);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    let n = client.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    workers.shutdown(Duration::from_secs(1));
}

#[test]
fn spliced_connections_move_every_byte_and_keep_half_close() {
    for round in 0..3 {
        let (up, upstream) = counting_upstream(3_000_000);
        let port = free_port();
        let engine = EngineConfig { driver_can_splice: true, ..EngineConfig::default() };
        let workers =
            start_with(port, snapshot(json!({"1": {"upstream": {"nodes": {format!("127.0.0.1:{up}"): 1}}}})), engine);
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let sent = pattern(5_000_000 + round);
        let writer = {
            let mut client = client.try_clone().unwrap();
            let sent = sent.clone();
            thread::spawn(move || {
                client.write_all(&sent).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        writer.join().unwrap();
        assert_eq!(upstream.join().unwrap(), sent, "the upstream got every byte in order");
        let header = format!("{}\n", sent.len());
        assert_eq!(&reply[..header.len()], header.as_bytes());
        assert!(reply[header.len()..] == pattern(3_000_000)[..], "every byte back after the half-close");
        workers.shutdown(Duration::from_secs(1));
    }
}
