//! Upstream nodes named by host name are looked up again every
//! `apisix.dns_resolver_valid` seconds: a name that did not resolve when the
//! route was written starts to carry traffic once it does, and a name that
//! moves takes new connections to its new address while established ones stay.
//!
//! The name lives in /etc/hosts (the system resolver reads it on every lookup),
//! so the test needs to write that file: it prints a skip line and passes when
//! it cannot, unless STRAIT_REQUIRE_EXTERNAL=1 (as in CI, which runs as root).

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

const HOSTS: &str = "/etc/hosts";

/// Our line in /etc/hosts; the file is put back as it was when dropped.
struct HostsEntry {
    original: String,
    name: String,
}

impl HostsEntry {
    fn writable() -> bool {
        let ok = std::fs::OpenOptions::new().append(true).open(HOSTS).is_ok();
        if !ok {
            if std::env::var("STRAIT_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
                panic!("{HOSTS} must be writable (STRAIT_REQUIRE_EXTERNAL=1): run as root");
            }
            eprintln!("SKIP: {HOSTS} is not writable; set STRAIT_REQUIRE_EXTERNAL=1 to fail instead");
        }
        ok
    }

    fn new(name: &str) -> HostsEntry {
        let original = std::fs::read_to_string(HOSTS).expect("read /etc/hosts");
        HostsEntry { original, name: name.to_string() }
    }

    /// Points the name at `ip` (one write of the whole file: no moment without the other lines).
    fn point_at(&self, ip: IpAddr) {
        let mut text = self.original.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{ip} {}\n", self.name));
        write_in_place(Path::new(HOSTS), &text);
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        write_in_place(Path::new(HOSTS), &self.original);
    }
}

/// /etc/hosts is often a bind mount (containers): it is rewritten, not replaced.
fn write_in_place(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path).expect("open /etc/hosts");
    file.write_all(text.as_bytes()).expect("write /etc/hosts");
}

/// A server on `ip:port` that says `name\n` on accept, then echoes.
fn named_server(ip: IpAddr, port: u16, name: &'static str) -> Upstream {
    Upstream::spawn(SocketAddr::new(ip, port), move |mut conn, _| {
        if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    })
}

/// Which server a new connection through `listen` reaches, if any.
fn served_by(listen: SocketAddr) -> Option<String> {
    let mut client = try_connect(listen).ok()?;
    read_line(&mut client).ok()
}

#[test]
fn upstream_host_names_are_followed_as_they_appear_and_move() {
    if !HostsEntry::writable() {
        return;
    }
    // One port on two loopback addresses: the node is `name:port`, only the name's address changes.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let first = named_server(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), port, "first");
    let second = named_server(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port, "second");
    let name = format!("strait-e2e-{}.test", std::process::id());
    let hosts = HostsEntry::new(&name);

    let listen = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().listen(listen).apisix("dns_resolver_valid", "1"));
    let node = format!("{name}:{port}");
    strait.put_route("1", json!({"upstream": {"type": "roundrobin", "nodes": {node.as_str(): 1}}}));

    // The name does not resolve yet: the node is left out and nothing is served.
    wait_until("the route is applied", || strait.stderr().contains("failed to resolve node"));
    assert_eq!(served_by(listen), None, "no address for the only node: the connection is closed");

    // It appears: within a refresh period or two, connections reach it.
    hosts.point_at(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
    wait_until("the name's first address serves", || served_by(listen).as_deref() == Some("first"));
    let mut established = connect(listen);
    assert_eq!(read_line(&mut established).unwrap(), "first");

    // It moves: new connections go to the new address, the established one stays.
    hosts.point_at(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    wait_until("the name's new address serves", || served_by(listen).as_deref() == Some("second"));
    established.write_all(b"still here\n").unwrap();
    assert_eq!(read_line(&mut established).unwrap(), "still here", "a connection open across the move");
    assert!(first.accepted() >= 2 && second.accepted() >= 1);
}
