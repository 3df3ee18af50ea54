//! A real DNS server (dnsmasq) behind Strait's UDP listener, queried with dig
//! (issue 4): the proxy must be transparent to a real resolver client.

mod common;

use common::*;
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;

/// True when the named programs exist; otherwise skips (or fails in CI).
fn have(programs: &[&str]) -> bool {
    let missing: Vec<&&str> = programs
        .iter()
        .filter(|p| {
            Command::new("sh").arg("-c").arg(format!("command -v {p}")).output().map_or(true, |o| !o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("STRAIT_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
        panic!("{missing:?} required (STRAIT_REQUIRE_EXTERNAL=1) but not installed: apt-get install -y dnsmasq-base dnsutils");
    }
    eprintln!("SKIP: {missing:?} not installed (apt-get install -y dnsmasq-base dnsutils)");
    false
}

struct Dnsmasq {
    addr: SocketAddr,
    child: Child,
}

impl Dnsmasq {
    /// Answers `<name>.test` with `records` and nothing else (no upstream resolvers).
    fn start(records: &[(&str, &str)]) -> Dnsmasq {
        // The port is free when picked but may be taken before dnsmasq binds it
        // (the other test's resolvers bind ports in parallel): dnsmasq then exits
        // at once, and a fresh port is tried.
        for _ in 0..5 {
            let port = UdpSocket::bind((LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
            let mut command = Command::new("dnsmasq");
            command.args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
            ]);
            command.arg(format!("--port={port}")).arg("--pid-file=").arg("--user=root");
            for (name, ip) in records {
                command.arg(format!("--address=/{name}/{ip}"));
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq");
            let mut dns = Dnsmasq { addr: SocketAddr::new(LOCALHOST, port), child };
            let mut exited = false;
            wait_until("dnsmasq answers or exits", || {
                exited = dns.child.try_wait().is_ok_and(|status| status.is_some());
                exited || dig(dns.addr, "ready.test").is_some()
            });
            if !exited {
                return dns;
            }
        }
        panic!("dnsmasq exited at start five times (ports taken?)");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dig +short` against `server`; `None` when it times out or answers nothing.
fn dig(server: SocketAddr, name: &str) -> Option<String> {
    let out = Command::new("dig")
        .args([
            "+short",
            "+tries=1",
            "+time=2",
            "-p",
            &server.port().to_string(),
            &format!("@{}", server.ip()),
            name,
            "A",
        ])
        .output()
        .ok()?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !answer.is_empty() && !answer.starts_with(";;")).then_some(answer)
}

fn proxy_to(dns: &Dnsmasq, upstream_extra: serde_json::Value) -> (Strait, SocketAddr) {
    let listen = SocketAddr::new(LOCALHOST, UdpSocket::bind((LOCALHOST, 0)).unwrap().local_addr().unwrap().port());
    let strait = Strait::start(Config::new().listen_udp(listen));
    let mut upstream = json!({"scheme": "udp", "nodes": {dns.addr.to_string(): 1}});
    for (k, v) in upstream_extra.as_object().unwrap() {
        upstream[k] = v.clone();
    }
    strait.put_route("dns", json!({"server_port": listen.port(), "upstream": upstream}));
    (strait, listen)
}

#[test]
fn dig_through_strait_gets_dnsmasq_answers() {
    if !have(&["dnsmasq", "dig"]) {
        return;
    }
    let dns = Dnsmasq::start(&[("ready.test", "10.0.0.1"), ("bench.test", "10.1.2.3"), ("other.test", "10.9.8.7")]);
    let (_strait, listen) = proxy_to(&dns, json!({}));
    wait_until("the route is live", || dig(listen, "bench.test").is_some());
    assert_eq!(dig(listen, "bench.test").as_deref(), Some("10.1.2.3"));
    assert_eq!(dig(listen, "other.test").as_deref(), Some("10.9.8.7"));
}

#[test]
fn many_resolvers_in_parallel_each_get_their_own_answers() {
    if !have(&["dnsmasq", "dig"]) {
        return;
    }
    let names: Vec<(String, String)> = (1..=20).map(|i| (format!("host{i}.test"), format!("10.0.1.{i}"))).collect();
    let records: Vec<(&str, &str)> =
        names.iter().map(|(n, ip)| (n.as_str(), ip.as_str())).chain([("ready.test", "10.0.0.1")]).collect();
    let dns = Dnsmasq::start(&records);
    // One reply per session, as DNS wants (nginx's proxy_responses 1).
    let (_strait, listen) = proxy_to(&dns, json!({"proxy_responses": 1}));
    wait_until("the route is live", || dig(listen, "ready.test").is_some());
    let handles: Vec<_> = names
        .into_iter()
        .map(|(name, ip)| {
            thread::spawn(move || {
                for _ in 0..3 {
                    assert_eq!(dig(listen, &name).as_deref(), Some(ip.as_str()), "{name}");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}
