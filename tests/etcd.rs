//! Several Strait nodes on one etcd, over the real binary and a real etcd
//! (Debian's etcd-server, started by each test on free loopback ports with a
//! temp data dir). Without etcd the tests print a skip line, or fail when
//! STRAIT_REQUIRE_EXTERNAL=1 (set by .ci/run). The TLS cases run etcd with
//! certificates made at test time (rcgen) and `--client-cert-auth`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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

/// Certificates for a TLS etcd, written as PEM files: a CA, etcd's server
/// certificate for 127.0.0.1, and a client certificate for Strait (and for
/// the test's own calls).
struct Pki {
    dir: TempDir,
    /// For the test's own calls to etcd: trusts the CA, presents the client certificate.
    client_config: Arc<rustls::ClientConfig>,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("etcd-pki");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "strait test etcd ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let issue = |names: &[&str], usages: Vec<rcgen::ExtendedKeyUsagePurpose>| {
            let mut params =
                rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
            params.extended_key_usages = usages;
            let key = rcgen::KeyPair::generate().unwrap();
            (params.signed_by(&key, &ca, &ca_key).unwrap(), key)
        };
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        // etcd's gateway dials etcd's own gRPC port with the server certificate,
        // so under --client-cert-auth it must be good for client auth too.
        let (server, server_key) = issue(&["127.0.0.1", "localhost"], vec![ServerAuth, ClientAuth]);
        let (client, client_key) = issue(&["strait"], vec![ClientAuth]);
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(client_key.serialize_der());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![client.der().clone()], key.into())
            .unwrap();
        Pki { dir, client_config: Arc::new(client_config) }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A one-member etcd on loopback, killed when dropped.
struct Etcd {
    binary: PathBuf,
    child: Option<Child>,
    data: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    /// With TLS (https:// client URL, `--client-cert-auth`).
    pki: Option<Pki>,
    _dir: TempDir,
}

impl Etcd {
    fn start(binary: PathBuf) -> Etcd {
        Etcd::start_with(binary, None)
    }

    /// etcd serving clients over TLS and requiring client certificates from `pki`'s CA.
    fn start_tls(binary: PathBuf) -> Etcd {
        Etcd::start_with(binary, Some(Pki::new()))
    }

    fn start_with(binary: PathBuf, pki: Option<Pki>) -> Etcd {
        let dir = TempDir::new("etcd");
        let data = dir.path().join("data");
        let client = SocketAddr::new(LOCALHOST, free_port());
        let peer = SocketAddr::new(LOCALHOST, free_port());
        let mut etcd = Etcd { binary, child: None, data, client, peer, pki, _dir: dir };
        etcd.run();
        etcd
    }

    fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data.with_extension("log")).unwrap();
        let peer = format!("http://{}", self.peer);
        let mut command = Command::new(&self.binary);
        if let Some(pki) = &self.pki {
            command.args(["--cert-file", &pki.file("server.pem"), "--key-file", &pki.file("server.key")]).args([
                "--trusted-ca-file",
                &pki.file("ca.pem"),
                "--client-cert-auth",
            ]);
        }
        let child = command
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
        let tcp = std::net::TcpStream::connect(self.client).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut stream: Box<dyn ReadWrite> = match &self.pki {
            None => Box::new(tcp),
            Some(pki) => {
                let name = rustls::pki_types::ServerName::IpAddress(self.client.ip().into());
                let connection = rustls::ClientConnection::new(pki.client_config.clone(), name).ok()?;
                Box::new(rustls::StreamOwned::new(connection, tcp))
            }
        };
        let body = body.to_string();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        stream.flush().ok()?;
        // A TLS peer may close without close_notify: keep what was read.
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let raw = String::from_utf8_lossy(&raw);
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

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

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
    node_with(etcd, prefix, role, "")
}

/// A Strait node with `etcd_extra` (YAML lines at the indentation of
/// `deployment.etcd`'s keys) added to its `deployment.etcd`.
fn node_with(etcd: &Etcd, prefix: &str, role: &str, etcd_extra: &str) -> (Strait, SocketAddr) {
    let (dir, config, path, listen) = node_config(etcd, prefix, role, etcd_extra);
    (Strait::spawn(dir, config, path), listen)
}

fn node_config(etcd: &Etcd, prefix: &str, role: &str, etcd_extra: &str) -> (TempDir, Config, PathBuf, SocketAddr) {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let config = Config::new().listen(listen);
    let dir = TempDir::new("etcd-node");
    let yaml = format!(
        "apisix:\n  proxy_mode: stream\n  stream_proxy:\n    tcp:\n      - \"{listen}\"\n\
         deployment:\n  role: {role}\n  role_{role}:\n    config_provider: etcd\n\
         \x20 etcd:\n    host: [\"{}\"]\n    prefix: {prefix}\n    timeout: 3\n    resync_delay: 1\n{etcd_extra}\
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
    (dir, config, path, listen)
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
    // Node B also serves the control API, which must say when etcd is away.
    let (dir, config, path, b_listen) = node_config(&etcd, &prefix, "data_plane", "");
    let control = SocketAddr::new(LOCALHOST, free_port());
    let yaml = std::fs::read_to_string(&path).unwrap().replacen(
        "proxy_mode: stream\n",
        &format!("proxy_mode: stream\n  control:\n    ip: \"{}\"\n    port: {}\n", control.ip(), control.port()),
        1,
    );
    std::fs::write(&path, yaml).unwrap();
    let _b = Strait::spawn(dir, config, path);
    let source = || http_json(control, "GET", "/v1/config_source", None, None).1;
    assert_eq!((source()["source"].clone(), source()["connected"].clone()), (json!("etcd"), json!(true)));
    let echo = Upstream::echo();
    a.put_route("1", route_json(echo.addr));
    wait_echo(b_listen);
    let mut session = connect(b_listen);
    session.write_all(b"before").unwrap();
    assert_eq!(read_exact(&mut session, 6), b"before");

    etcd.stop();
    wait_until("B's control API says etcd is away", || source()["connected"] == json!(false));
    assert!(source()["stale_for_seconds"].is_u64() && source()["last_error"].is_string(), "{}", source());
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
    wait_until("B's control API says etcd is back", || source()["connected"] == json!(true));
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
    // B's watch broke with the restart: it reads everything again (which also
    // covers the compaction and the delete it missed) and says so.
    wait_until("B logs the re-read", || b.stderr().contains("re-read everything"));
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

/// `deployment.etcd.tls` lines for a node of a TLS etcd.
fn tls_yaml(entries: &[(&str, String)]) -> String {
    let mut yaml = String::from("    tls:\n");
    for (key, value) in entries {
        yaml.push_str(&format!("      {key}: {value}\n"));
    }
    yaml
}

#[test]
fn nodes_share_routes_through_an_etcd_that_requires_tls_client_certificates() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start_tls(bin);
    let pki = etcd.pki.as_ref().unwrap();
    let prefix = prefix();
    let (cert, key) = (pki.file("client.pem"), pki.file("client.key"));
    // A verifies etcd's certificate against the test CA; B does not verify (tls.verify: false).
    let verified = tls_yaml(&[
        ("verify", "true".into()),
        ("ca", pki.file("ca.pem")),
        ("cert", cert.clone()),
        ("key", key.clone()),
    ]);
    let unverified = tls_yaml(&[("verify", "false".into()), ("cert", cert), ("key", key)]);
    let (a, a_listen) = node_with(&etcd, &prefix, "traditional", &verified);
    let (_b, b_listen) = node_with(&etcd, &prefix, "data_plane", &unverified);
    let up = Upstream::named("over-tls");

    let (status, body) = a.api("PUT", "/apisix/admin/stream_routes/1", Some(&route_json(up.addr)));
    assert_eq!(status, 201, "{body}");
    assert_eq!(try_name(a_listen).unwrap(), "over-tls", "A routes with its own write when it answers");
    wait_name_within(b_listen, "over-tls", Duration::from_secs(1));
    let stored = etcd.get(&format!("{prefix}/stream_routes/1")).expect("stored in the TLS etcd");
    assert_eq!(stored["id"], "1");

    // The watch runs over TLS too: a write straight to etcd reaches both nodes.
    let other = Upstream::named("watched");
    etcd.put(&format!("{prefix}/stream_routes/1"), &route_json(other.addr));
    wait_name_within(a_listen, "watched", Duration::from_secs(1));
    wait_name_within(b_listen, "watched", Duration::from_secs(1));
}

#[test]
fn a_tls_etcd_signed_by_another_ca_stops_the_start_with_a_clear_error() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start_tls(bin);
    let pki = etcd.pki.as_ref().unwrap();
    let wrong = Pki::new();
    let tls =
        tls_yaml(&[("ca", wrong.file("ca.pem")), ("cert", pki.file("client.pem")), ("key", pki.file("client.key"))]);
    let (_dir, _config, path, _) =
        node_config(&etcd, &prefix(), "traditional", &format!("    startup_retry: 1\n{tls}"));
    let out = run_strait(&["-c", path.to_str().unwrap()]);
    let output = all_output(&out);
    assert!(!out.status.success(), "a node that cannot verify etcd must not start:\n{output}");
    assert!(output.contains(&etcd.url()), "names the etcd host:\n{output}");
    assert!(output.contains("TLS handshake failed: invalid peer certificate"), "says why:\n{output}");
    assert!(output.contains("deployment.etcd.tls.ca"), "says what to set:\n{output}");
}
