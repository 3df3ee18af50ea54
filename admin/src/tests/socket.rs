//! The Admin API over a real socket: spawn, raw HTTP/1.1, stop.

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn exchange(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

#[test]
fn the_api_answers_over_http() {
    let dir = TempDir::new("socket");
    let store = FileStore::open(dir.path()).unwrap();
    let published = Arc::new(Mutex::new(0usize));
    let count = Arc::clone(&published);
    let handle = crate::spawn(
        crate::AdminOptions { settings: settings(), proxy_mode: ProxyMode::Stream, read_only: None },
        store,
        crate::Publish::Direct(Box::new(move |_| *count.lock().unwrap() += 1)),
    )
    .unwrap();
    let addr = handle.local_addr();

    let body = r#"{"nodes":{"127.0.0.1:1995":1}}"#;
    let (status, head, reply) = exchange(
        addr,
        &format!(
            "PUT /apisix/admin/upstreams/1 HTTP/1.1\r\nHost: x\r\nX-API-KEY: {ADMIN_KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 201, "{head}\n{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["key"], "/apisix/upstreams/1");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert!(head.contains("X-API-VERSION: v3"), "{head}");
    assert!(head.contains("Server: Strait/"), "{head}");
    assert_eq!(*published.lock().unwrap(), 1, "published before the answer");

    let (status, _, reply) =
        exchange(addr, "GET /apisix/admin/upstreams/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 401);
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["description"], "missing apikey");

    handle.stop();
    assert!(FileStore::open(dir.path()).unwrap().get("upstreams", "1").is_some());
}

#[test]
fn a_client_stalled_mid_body_does_not_block_other_requests() {
    let dir = TempDir::new("socket-stall");
    let store = FileStore::open(dir.path()).unwrap();
    let options = crate::AdminOptions { settings: settings(), proxy_mode: ProxyMode::Stream, read_only: None };
    let handle = crate::spawn(options, store, crate::Publish::Direct(Box::new(|_| {}))).unwrap();
    let addr = handle.local_addr();

    // Promises 100 bytes, sends 10, and stays silent with the socket open.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .write_all(
            format!(
                "PUT /apisix/admin/upstreams/1 HTTP/1.1\r\nHost: x\r\nX-API-KEY: {ADMIN_KEY}\r\nContent-Length: 100\r\n\r\n{{\"nodes\":"
            )
            .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));

    let body = r#"{"nodes":{"127.0.0.1:1995":1}}"#;
    let (status, _, reply) = exchange(
        addr,
        &format!(
            "PUT /apisix/admin/upstreams/2 HTTP/1.1\r\nHost: x\r\nX-API-KEY: {ADMIN_KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 201, "{reply}");
    handle.stop();
    drop(stalled);
}
