//! Several Strait nodes on one etcd, over the real binary and a real etcd
//! (Debian's etcd-server, started by each test on free loopback ports with a
//! temp data dir). Without etcd the tests print a skip line, or fail when
//! STRAIT_REQUIRE_EXTERNAL=1 (set by .ci/run).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn etcd_binary() -> Option<PathBuf> {
    let candidates =
        [std::env::var("STRAIT_ETCD_BIN").ok(), Some("/usr/bin/etcd".into()), Some("/usr/local/bin/etcd".into())];
    let found = candidates.into_iter().flatten().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        if std::env::var("STRAIT_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!("etcd is required (STRAIT_REQUIRE_EXTERNAL=1) but not installed: apt-get install -y etcd-server");
        }
        eprintln!(
            "SKIP: etcd not installed (apt-get install -y etcd-server); set STRAIT_REQUIRE_EXTERNAL=1 to fail instead"
        );
    }
    found
}

/// A one-member etcd on loopback, killed when dropped.
struct Etcd {
    binary: PathBuf,
    child: Option<Child>,
    data: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    _dir: TempDir,
}

impl Etcd {
    fn start(binary: PathBuf) -> Etcd {
        let dir = TempDir::new("etcd");
        let data = dir.path().join("data");
        let client = SocketAddr::new(LOCALHOST, free_port());
        let peer = SocketAddr::new(LOCALHOST, free_port());
        let mut etcd = Etcd { binary, child: None, data, client, peer, _dir: dir };
        etcd.run();
        etcd
    }

    fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data.with_extension("log")).unwrap();
        let peer = format!("http://{}", self.peer);
        let child = Command::new(&self.binary)
            .args(["--name", "t", "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        wait_until("etcd is healthy", || {
            std::net::TcpStream::connect(self.client).is_ok()
                && self.try_call("/v3/kv/range", &json!({"key": b64("/")})).is_some()
        });
    }

    /// SIGTERM and wait.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Stops etcd and starts an empty one on the same ports (a wiped etcd).
    fn wipe(&mut self) {
        self.stop();
        std::fs::remove_dir_all(&self.data).unwrap();
        self.run();
    }

    fn try_call(&self, path: &str, body: &Value) -> Option<Value> {
        let mut stream = std::net::TcpStream::connect(self.client).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let body = body.to_string();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        // Small answers come with a Content-Length; a chunked one has its JSON on one chunk line.
        let json = body.lines().find(|l| l.starts_with('{'))?;
        serde_json::from_str(json).ok()
    }

    fn call(&self, path: &str, body: &Value) -> Value {
        self.try_call(path, body).unwrap_or_else(|| panic!("etcd call {path} {body} failed"))
    }

    fn put(&self, key: &str, value: &Value) -> u64 {
        revision(&self.call("/v3/kv/put", &json!({"key": b64(key), "value": b64(&value.to_string())})))
    }

    #[allow(dead_code)]
    fn delete(&self, key: &str) {
        self.call("/v3/kv/deleterange", &json!({"key": b64(key)}));
    }

    fn get(&self, key: &str) -> Option<Value> {
        let answer = self.call("/v3/kv/range", &json!({"key": b64(key)}));
        let value = answer.get("kvs")?.get(0)?.get("value")?.as_str()?;
        serde_json::from_slice(&unb64(value)).ok()
    }

    fn compact(&self) {
        let rev = revision(&self.call("/v3/kv/range", &json!({"key": b64("/")})));
        self.call("/v3/kv/compaction", &json!({"revision": rev.to_string(), "physical": true}));
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn revision(answer: &Value) -> u64 {
    answer["header"]["revision"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            out.push(if i <= chunk.len() { B64[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

fn unb64(text: &str) -> Vec<u8> {
    let (mut acc, mut bits, mut out) = (0u32, 0, Vec::new());
    for c in text.trim_end_matches('=').bytes() {
        acc = acc << 6 | B64.iter().position(|&a| a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A Strait node on `etcd` with one TCP listener.
fn node(etcd: &Etcd, prefix: &str, role: &str) -> (Strait, SocketAddr) {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let config = Config::new().listen(listen);
    let dir = TempDir::new("etcd-node");
    let yaml = format!(
        "apisix:\n  proxy_mode: stream\n  stream_proxy:\n    tcp:\n      - \"{listen}\"\n\
         deployment:\n  role: {role}\n  role_{role}:\n    config_provider: etcd\n\
         \x20 etcd:\n    host: [\"{}\"]\n    prefix: {prefix}\n    timeout: 3\n    resync_delay: 1\n\
         \x20 admin:\n    admin_key:\n      - name: admin\n        key: \"{}\"\n        role: admin\n\
         \x20   admin_listen:\n      ip: \"{}\"\n      port: {}\n\
         nginx_config:\n  worker_processes: 1\nstrait:\n  data_dir: \"{}\"\n",
        etcd.url(),
        config.admin_key,
        config.admin.ip(),
        config.admin.port(),
        dir.path().join("data").display()
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    (Strait::spawn(dir, config, path), listen)
}

fn prefix() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("/strait-test-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
}

fn route_json(upstream: SocketAddr) -> Value {
    json!({"upstream": {"type": "roundrobin", "nodes": {upstream.to_string(): 1}}})
}

/// The first line an upstream sends, waiting at most 300 ms (an echo
/// upstream sends nothing, and a poll must not block on it).
fn quick_name(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = try_connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_millis(300)))?;
    read_line(&mut stream)
}

fn wait_name_within(addr: SocketAddr, name: &str, limit: Duration) {
    wait_until_for(&format!("{addr} reaches {name:?}"), limit, || quick_name(addr).map(|n| n == name).unwrap_or(false));
}

fn wait_closed_within(addr: SocketAddr, limit: Duration) {
    wait_until_for(&format!("{addr} has no route"), limit, || {
        let Ok(mut stream) = try_connect(addr) else { return true };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
        match stream.read(&mut [0u8; 1]) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    });
}

#[test]
fn a_route_written_on_node_a_is_routed_by_node_b_within_a_second() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin);
    let prefix = prefix();
    let (a, _) = node(&etcd, &prefix, "traditional");
    let (b, b_listen) = node(&etcd, &prefix, "data_plane");
    let up = Upstream::named("one");

    let started = Instant::now();
    let (status, body) = a.api("PUT", "/apisix/admin/stream_routes/1", Some(&route_json(up.addr)));
    assert_eq!(status, 201, "{body}");
    wait_name_within(b_listen, "one", Duration::from_secs(1));
    eprintln!("propagation A -> B (admin PUT to first routed connection on B): {:?}", started.elapsed());

    // APISIX's layout and values: no defaults injected.
    let stored = etcd.get(&format!("{prefix}/stream_routes/1")).expect("stored under <prefix>/stream_routes/1");
    assert_eq!(stored["id"], "1");
    assert!(stored["create_time"].is_u64() && stored["update_time"].is_u64());
    assert!(stored["upstream"].get("retries").is_none(), "no injected defaults: {stored}");

    let (status, _) = a.api("PUT", "/apisix/admin/stream_routes/1", Some(&route_json(up.addr)));
    assert_eq!(status, 200, "a replace answers 200");
    let (status, body) = a.api("POST", "/apisix/admin/upstreams", Some(&json!({"nodes": {up.addr.to_string(): 1}})));
    assert_eq!(status, 201, "{body}");
    let id = body["value"]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 20, "20-digit POST ids: {id}");
    let (status, body) = a.api("GET", &format!("/apisix/admin/upstreams/{id}"), None);
    assert_eq!(status, 200, "GET reads etcd: {body}");

    let (status, body) = b.api("PUT", "/apisix/admin/stream_routes/2", Some(&route_json(up.addr)));
    assert_eq!(status, 403, "a data plane refuses writes: {body}");
    assert!(body["error_msg"].as_str().unwrap().contains("data plane"), "{body}");
    let (status, _) = b.api("GET", "/apisix/admin/stream_routes/1", None);
    assert_eq!(status, 200, "a data plane still reads");

    // A PATCH on the writer is routed by the writer itself at once (read-your-writes).
    let other = Upstream::named("two");
    let (status, body) = a.api(
        "PATCH",
        "/apisix/admin/stream_routes/1",
        Some(&json!({"upstream": {"nodes": {up.addr.to_string(): null, other.addr.to_string(): 1}}})),
    );
    assert_eq!(status, 200, "{body}");
    let a_listen = match a.config.tcp.first() {
        Some(item) => item.trim_matches('"').parse::<SocketAddr>().unwrap(),
        None => unreachable!(),
    };
    assert_eq!(try_name(a_listen).unwrap(), "two", "node A routes with its own write when it answers");
    wait_name_within(b_listen, "two", Duration::from_secs(1));
}

#[test]
fn nodes_keep_serving_while_etcd_is_down_and_catch_up_when_it_is_back() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = Etcd::start(bin);
    let prefix = prefix();
    let (a, a_listen) = node(&etcd, &prefix, "traditional");
    let (_b, b_listen) = node(&etcd, &prefix, "data_plane");
    let echo = Upstream::echo();
    a.put_route("1", route_json(echo.addr));
    wait_echo(b_listen);
    let mut session = connect(b_listen);
    session.write_all(b"before").unwrap();
    assert_eq!(read_exact(&mut session, 6), b"before");

    etcd.stop();
    session.write_all(b"during").unwrap();
    assert_eq!(read_exact(&mut session, 6), b"during", "an established connection is untouched");
    try_echo(b_listen, b"new").expect("a new connection through B uses the last config");
    try_echo(a_listen, b"new").expect("a new connection through A uses the last config");
    let started = Instant::now();
    let (status, body) = a.api("PUT", "/apisix/admin/stream_routes/2", Some(&route_json(echo.addr)));
    assert_eq!(status, 503, "{body}");
    assert!(body["error_msg"].is_string(), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by deployment.etcd.timeout");

    etcd.run();
    let named = Upstream::named("after");
    etcd.put(&format!("{prefix}/stream_routes/1"), &route_json(named.addr));
    // resync_delay is 1 s (+50 % jitter) in these nodes.
    wait_name_within(a_listen, "after", Duration::from_secs(4));
    wait_name_within(b_listen, "after", Duration::from_secs(4));
    session.write_all(b"after").unwrap();
    assert_eq!(read_exact(&mut session, 5), b"after");
}

#[test]
fn a_node_cut_off_during_a_delete_and_a_compaction_catches_up() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = Etcd::start(bin);
    let prefix = prefix();
    let (a, a_listen) = node(&etcd, &prefix, "traditional");
    let (b, b_listen) = node(&etcd, &prefix, "data_plane");
    let up = Upstream::named("kept");
    a.put_route("1", route_json(up.addr));
    wait_name(b_listen, "kept");

    // B is frozen and its watch broken, so it misses everything below.
    b.signal(libc::SIGSTOP);
    etcd.stop();
    etcd.run();
    let (status, _) = a.api("DELETE", "/apisix/admin/stream_routes/1", None);
    assert_eq!(status, 200);
    for i in 0..5 {
        a.put_upstream(&format!("u{i}"), json!({"nodes": {up.addr.to_string(): 1}}));
    }
    etcd.compact();
    wait_closed_within(a_listen, Duration::from_secs(3));
    b.signal(libc::SIGCONT);
    wait_closed_within(b_listen, Duration::from_secs(5));
    wait_until("B logs the compaction re-read", || b.stderr().contains("compacted"));
}

#[test]
fn a_wiped_etcd_is_noticed_and_reloaded() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = Etcd::start(bin);
    let prefix = prefix();
    let (a, _) = node(&etcd, &prefix, "traditional");
    let (b, b_listen) = node(&etcd, &prefix, "data_plane");
    let old = Upstream::named("old");
    for i in 0..20 {
        a.put_upstream(&format!("u{i}"), json!({"nodes": {old.addr.to_string(): 1}}));
    }
    a.put_route("1", route_json(old.addr));
    wait_name(b_listen, "old");

    etcd.wipe();
    let new = Upstream::named("new");
    etcd.put(&format!("{prefix}/stream_routes/9"), &route_json(new.addr));
    wait_name_within(b_listen, "new", Duration::from_secs(5));
    wait_until("B logs that etcd went backwards", || b.stderr().contains("went backwards"));
}
