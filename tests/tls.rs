//! TLS over the real binary with real TLS clients and servers (issue 5 §8):
//! termination with certificates chosen by SNI, SNI routes, mTLS, TLS to
//! upstreams (the SNI they are sent, client certificates), passthrough with a
//! fragmented ClientHello, and clients that send garbage or stall. rustls is
//! the client in most tests; `openssl s_client` and `curl` are each used once.

mod common;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Certificates

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made at test time.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: String,
    der: CertificateDer<'static>,
}

/// A certificate signed by a [`Ca`], with its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), der: cert.der().clone(), cert, key }
    }

    fn issue(&self, common_name: &str, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn server(&self, names: &[&str]) -> Leaf {
        self.issue(names[0], names, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Leaf {
        self.issue(name, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        Arc::new(roots)
    }
}

// ---------------------------------------------------------------------------
// Strait with TLS listeners

fn tls_listener(addr: SocketAddr) -> String {
    format!("{{addr: \"{addr}\", tls: true}}")
}

fn passthrough_listener(addr: SocketAddr) -> String {
    format!("{{addr: \"{addr}\", tls_passthrough: true}}")
}

/// Starts Strait on `config` plus `apisix.ssl.fallback_sni` and
/// `strait.tls.handshake_timeout` when given.
fn start(config: Config, fallback_sni: Option<&str>, handshake_timeout: Option<&str>) -> Strait {
    let dir = TempDir::new("tls");
    let mut yaml = config.yaml(&dir.path().join("data"));
    if let Some(name) = fallback_sni {
        yaml = yaml.replacen("apisix:\n", &format!("apisix:\n  ssl:\n    fallback_sni: \"{name}\"\n"), 1);
    }
    if let Some(timeout) = handshake_timeout {
        yaml = yaml.replacen("strait:\n", &format!("strait:\n  tls:\n    handshake_timeout: \"{timeout}\"\n"), 1);
    }
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    Strait::spawn(dir, config, path)
}

fn put_ssl(strait: &Strait, id: &str, ssl: Value) {
    let (status, body) = strait.api("PUT", &format!("/apisix/admin/ssls/{id}"), Some(&ssl));
    assert!(status == 200 || status == 201, "PUT ssl {id} answered {status}: {body}");
}

fn server_ssl(leaf: &Leaf, snis: &[&str]) -> Value {
    json!({"cert": leaf.cert_pem, "key": leaf.key_pem, "snis": snis})
}

fn local() -> SocketAddr {
    SocketAddr::new(LOCALHOST, free_port())
}

// ---------------------------------------------------------------------------
// A rustls client

/// Checks the server's certificate against `roots` (when given) and records it.
#[derive(Debug)]
struct Recorder {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    seen: Mutex<Option<CertificateDer<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
        match &self.webpki {
            Some(webpki) => webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test client speaks TLS: whom it trusts (None: anyone) and which
/// client certificate it presents.
struct Client<'a> {
    trust: Option<&'a Ca>,
    cert: Option<&'a Leaf>,
}

const ANYONE: Client<'static> = Client { trust: None, cert: None };

fn trusting(ca: &Ca) -> Client<'_> {
    Client { trust: Some(ca), cert: None }
}

struct Tls {
    stream: rustls::StreamOwned<ClientConnection, TcpStream>,
    /// The certificate the server presented.
    served: CertificateDer<'static>,
}

impl Client<'_> {
    fn config(&self) -> (Arc<ClientConfig>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder {
            webpki: self.trust.map(|ca| {
                WebPkiServerVerifier::builder_with_provider(ca.roots(), provider()).build().expect("verifier")
            }),
            seen: Mutex::new(None),
            provider: provider(),
        });
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone());
        let config = match self.cert {
            Some(leaf) => builder.with_client_auth_cert(vec![leaf.der.clone()], leaf.key()).unwrap(),
            None => builder.with_no_client_auth(),
        };
        (Arc::new(config), recorder)
    }

    /// Connects and completes the handshake, sending `server_name` as SNI (an
    /// IP address sends none).
    fn handshake(&self, addr: SocketAddr, server_name: &str) -> Result<Tls, String> {
        let (config, recorder) = self.config();
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let mut conn = ClientConnection::new(config, name).unwrap();
        let mut socket = try_connect(addr).map_err(|e| format!("connect: {e}"))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut socket).map_err(|e| format!("handshake: {e}"))?;
        }
        let served = recorder.seen.lock().unwrap().clone().ok_or("no server certificate")?;
        Ok(Tls { stream: rustls::StreamOwned::new(conn, socket), served })
    }

    /// A handshake, then one echo round trip.
    fn echo(&self, addr: SocketAddr, server_name: &str, payload: &[u8]) -> Result<Tls, String> {
        let mut tls = self.handshake(addr, server_name)?;
        tls.stream.write_all(payload).map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0; payload.len()];
        tls.stream.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
        if back != payload {
            return Err(format!("echo differs: {:?}", String::from_utf8_lossy(&back)));
        }
        Ok(tls)
    }

    /// A handshake, then the first line the upstream sends.
    fn line(&self, addr: SocketAddr, server_name: &str) -> Result<String, String> {
        let mut tls = self.handshake(addr, server_name)?;
        read_line_from(&mut tls.stream).map_err(|e| format!("read: {e}"))
    }
}

fn read_line_from(stream: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte)? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF before a line")),
            _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ => line.push(byte[0]),
        }
    }
}

/// Polls until a TLS echo through `addr` with `server_name` works.
fn wait_tls_echo(client: &Client<'_>, addr: SocketAddr, server_name: &str) {
    wait_until(&format!("{addr} echoes over TLS for {server_name}"), || {
        client.echo(addr, server_name, b"probe").is_ok()
    });
}

// ---------------------------------------------------------------------------
// TLS upstream servers

/// A TLS server that records the SNI of every ClientHello, says `sni=<name>`
/// once the handshake is done, then echoes (or, with [`Serve::SinkThenSource`],
/// checks the client's bytes up to its end, then sends as many).
struct TlsUpstream {
    server: Upstream,
    snis: Arc<Mutex<Vec<String>>>,
    handshakes: Arc<AtomicUsize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Serve {
    Echo,
    /// Reads pattern stream 1 to the client's end, then writes as many bytes
    /// of stream 2 and closes (close_notify); a mismatch closes at once.
    SinkThenSource,
}

fn tls_upstream(leaf: &Leaf, require_client_cert_from: Option<&Ca>) -> TlsUpstream {
    tls_upstream_serving(leaf, require_client_cert_from, Serve::Echo)
}

fn tls_upstream_serving(leaf: &Leaf, require_client_cert_from: Option<&Ca>, serve: Serve) -> TlsUpstream {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let builder = match require_client_cert_from {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(ca.roots(), provider()).build().unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = Arc::new(builder.with_single_cert(vec![leaf.der.clone()], leaf.key()).unwrap());
    let snis = Arc::new(Mutex::new(Vec::new()));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (seen, done) = (snis.clone(), handshakes.clone());
    let server = Upstream::spawn(SocketAddr::new(LOCALHOST, 0), move |mut socket, _| {
        let mut acceptor = Acceptor::default();
        let accepted = loop {
            match acceptor.read_tls(&mut socket) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => break accepted,
                Ok(None) => continue,
                Err(_) => return,
            }
        };
        let sni = accepted.client_hello().server_name().unwrap_or("<none>").to_string();
        seen.lock().unwrap().push(sni.clone());
        let Ok(mut conn) = accepted.into_connection(config.clone()) else { return };
        while conn.is_handshaking() {
            if conn.complete_io(&mut socket).is_err() {
                return;
            }
        }
        done.fetch_add(1, Ordering::SeqCst);
        let mut stream = rustls::StreamOwned::new(conn, socket);
        if stream.write_all(format!("sni={sni}\n").as_bytes()).is_err() {
            return;
        }
        if serve == Serve::SinkThenSource {
            let Ok(received) = read_pattern(&mut stream, 1) else { return };
            if write_pattern_to(&mut stream, 2, received).is_ok() {
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    TlsUpstream { server, snis, handshakes }
}

/// Writes `len` bytes of pattern stream `seed` (common's splitmix pattern).
fn write_pattern_to(stream: &mut impl Write, seed: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    while sent < len {
        let n = buf.len().min((len - sent) as usize);
        pattern_fill(seed, sent, &mut buf[..n]);
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    stream.flush()
}

/// Reads to the end (close_notify, or a FIN without one) checking every byte
/// against pattern stream `seed`; the byte count, or what went wrong.
fn read_pattern(stream: &mut impl Read, seed: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut want = vec![0u8; 16 * 1024];
    let mut received = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(received),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(received),
            Err(e) => return Err(format!("read failed after {received} bytes: {e}")),
        };
        pattern_fill(seed, received, &mut want[..n]);
        if buf[..n] != want[..n] {
            return Err(format!("bytes {received}..{} differ", received + n as u64));
        }
        received += n as u64;
    }
}

/// A plain HTTP/1.1 server answering every request with 200 and `body`.
fn http_upstream(body: &'static str) -> Upstream {
    Upstream::spawn(SocketAddr::new(LOCALHOST, 0), move |mut conn, _| {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(response.as_bytes());
    })
}

/// An external program for the openssl / curl tests, or a skip (a failure
/// with STRAIT_REQUIRE_EXTERNAL=1).
fn external(program: &str) -> bool {
    let found = Command::new(program)
        .arg(if program == "openssl" { "version" } else { "--version" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("STRAIT_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!("{program} is required (STRAIT_REQUIRE_EXTERNAL=1) but not installed: apt-get install -y {program}");
        }
        eprintln!("SKIP: {program} not installed; set STRAIT_REQUIRE_EXTERNAL=1 to fail instead");
    }
    found
}

// ---------------------------------------------------------------------------
// Termination

/// One tls listener with an ssl for a.test.com and a route to `upstream`.
fn terminating(ca: &Ca, upstream: &Upstream) -> (Strait, SocketAddr, Leaf) {
    let listen = local();
    let mut config = Config::new();
    config.tcp.push(tls_listener(listen));
    let strait = start(config, None, None);
    let leaf = ca.server(&["a.test.com"]);
    put_ssl(&strait, "1", server_ssl(&leaf, &["a.test.com"]));
    strait.put_route("1", route_to(&[(upstream.addr, 1)]));
    (strait, listen, leaf)
}

#[test]
fn a_rustls_client_is_proxied_through_a_tls_listener_to_a_plain_backend() {
    let ca = Ca::new("test CA");
    let echo = Upstream::echo();
    let (_strait, listen, leaf) = terminating(&ca, &echo);
    let client = trusting(&ca);
    wait_tls_echo(&client, listen, "a.test.com");
    let mut tls = client.echo(listen, "a.test.com", b"hello over tls").unwrap();
    assert_eq!(tls.served, leaf.der, "the ssl object's certificate is served");
    // A larger transfer both ways, then a clean end: close_notify reaches the
    // backend as a FIN, and its FIN comes back as the end of the stream.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer_payload = payload.clone();
    tls.stream.write_all(&writer_payload).unwrap();
    let mut back = vec![0; payload.len()];
    tls.stream.read_exact(&mut back).unwrap();
    assert!(back == payload, "300 kB come back byte for byte");
    tls.stream.conn.send_close_notify();
    tls.stream.flush().unwrap();
    let mut rest = Vec::new();
    match tls.stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing after the echo"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "the stream ends: {e}"),
    }
}

#[test]
fn openssl_s_client_verifies_the_certificate_and_echoes() {
    if !external("openssl") {
        return;
    }
    let ca = Ca::new("s_client CA");
    let echo = Upstream::echo();
    let (strait, listen, _leaf) = terminating(&ca, &echo);
    wait_tls_echo(&trusting(&ca), listen, "a.test.com");
    let ca_file = strait.dir().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &listen.to_string(), "-servername", "a.test.com", "-verify_return_error"])
        .arg("-CAfile")
        .arg(&ca_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello-from-s_client\n").unwrap();
    stdin.flush().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut output = Vec::new();
    let echoed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line == "hello-from-s_client" => break true,
            Ok(line) => output.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    let text = output.join("\n");
    assert!(echoed, "the line came back through s_client\n--- stdout ---\n{text}\n--- stderr ---\n{stderr}");
    assert!(text.contains("Verify return code: 0 (ok)"), "s_client verified the chain against the CA:\n{text}");
    assert!(text.contains("CN=a.test.com") || text.contains("CN = a.test.com"), "the a.test.com certificate:\n{text}");
}

#[test]
fn curl_over_https_reaches_a_plain_http_backend() {
    if !external("curl") {
        return;
    }
    let ca = Ca::new("curl CA");
    let backend = http_upstream("hello from the plain backend\n");
    let (strait, listen, _leaf) = terminating(&ca, &backend);
    let ca_file = strait.dir().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let curl = || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca_file)
            .arg("--resolve")
            .arg(format!("a.test.com:{}:127.0.0.1", listen.port()))
            .arg(format!("https://a.test.com:{}/", listen.port()))
            .output()
            .expect("run curl")
    };
    let mut last = None;
    wait_until("curl gets an answer over https", || {
        let out = curl();
        let ok = out.status.success();
        last = Some(out);
        ok
    });
    let out = last.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the plain backend\n", "{}", all_output(&out));
}

#[test]
fn the_certificate_is_chosen_by_sni_and_an_unknown_sni_is_refused() {
    let ca = Ca::new("choice CA");
    let echo = Upstream::echo();
    let listen = local();
    let mut config = Config::new();
    config.tcp.push(tls_listener(listen));
    let strait = start(config, None, None);
    let a = ca.server(&["a.test.com"]);
    let another = ca.server(&["another.test"]);
    let wild = ca.server(&["*.wild.test"]);
    put_ssl(&strait, "a", server_ssl(&a, &["a.test.com"]));
    put_ssl(&strait, "another", json!({"cert": another.cert_pem, "key": another.key_pem, "sni": "ANOTHER.test"}));
    put_ssl(&strait, "wild", server_ssl(&wild, &["*.wild.test"]));
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    let client = trusting(&ca);
    wait_tls_echo(&client, listen, "a.test.com");
    wait_tls_echo(&client, listen, "x.wild.test");
    assert_eq!(client.echo(listen, "a.test.com", b"1").unwrap().served, a.der, "a.test.com's certificate");
    assert_eq!(
        client.echo(listen, "another.test", b"2").unwrap().served,
        another.der,
        "another.test's (sni upper-cased)"
    );
    assert_eq!(client.echo(listen, "x.wild.test", b"3").unwrap().served, wild.der, "*.wild.test covers x.wild.test");

    let before = echo.accepted();
    for name in ["a.b.wild.test", "wild.test", "unknown.test"] {
        let refused = ANYONE.handshake(listen, name);
        assert!(refused.is_err(), "{name}: no certificate covers it, the handshake is refused");
    }
    // A barrier: one worker handles connections in order, so once this one
    // reached the backend, any connect for the refused ones would have too.
    client.echo(listen, "a.test.com", b"4").unwrap();
    assert_eq!(echo.accepted(), before + 1, "refused handshakes never reach the backend");
}

#[test]
fn a_certificate_written_through_the_admin_api_serves_the_next_handshake() {
    let ca = Ca::new("update CA");
    let echo = Upstream::echo();
    let (strait, listen, old) = terminating(&ca, &echo);
    let client = trusting(&ca);
    wait_tls_echo(&client, listen, "a.test.com");
    assert_eq!(client.handshake(listen, "a.test.com").unwrap().served, old.der);
    let new = ca.server(&["a.test.com"]);
    put_ssl(&strait, "1", server_ssl(&new, &["a.test.com"]));
    wait_until("the replaced certificate is served", || {
        client.handshake(listen, "a.test.com").is_ok_and(|tls| tls.served == new.der)
    });
    // status 0: the object is ignored by the SNI matcher.
    let mut disabled = server_ssl(&new, &["a.test.com"]);
    disabled["status"] = json!(0);
    put_ssl(&strait, "1", disabled);
    wait_until("a disabled certificate is no longer served", || client.handshake(listen, "a.test.com").is_err());
}

#[test]
fn a_client_without_sni_is_refused_unless_fallback_sni_is_set() {
    let ca = Ca::new("fallback CA");
    let echo = Upstream::echo();
    let a = ca.server(&["a.test.com"]);
    for fallback in [None, Some("a.test.com")] {
        let listen = local();
        let mut config = Config::new();
        config.tcp.push(tls_listener(listen));
        let strait = start(config, fallback, None);
        put_ssl(&strait, "1", server_ssl(&a, &["a.test.com"]));
        strait.put_route("1", route_to(&[(echo.addr, 1)]));
        wait_tls_echo(&trusting(&ca), listen, "a.test.com");
        let before = echo.accepted();
        // An IP address as the server name: rustls sends no SNI.
        let result = ANYONE.echo(listen, "127.0.0.1", b"no sni");
        match fallback {
            None => {
                assert!(result.is_err(), "no SNI and no fallback_sni: refused");
                trusting(&ca).echo(listen, "a.test.com", b"barrier").unwrap();
                assert_eq!(echo.accepted(), before + 1, "the refused client never reached the backend");
            }
            Some(_) => {
                let tls = result.unwrap_or_else(|e| panic!("fallback_sni names the client: {e}"));
                assert_eq!(tls.served, a.der, "fallback_sni's certificate");
            }
        }
    }
}

#[test]
fn sni_routes_match_exact_then_longest_wildcard_then_routes_without_sni() {
    let ca = Ca::new("routes CA");
    let names = ["exact", "wild", "longer", "plain"];
    let servers: Vec<Upstream> = names.iter().map(|n| Upstream::named(n)).collect();
    let listen = local();
    let mut config = Config::new();
    config.tcp.push(tls_listener(listen));
    let strait = start(config, None, None);
    let snis = ["a.test.com", "*.test.com", "*.b.test.com", "another.test"];
    let leaf = ca.server(&snis);
    put_ssl(&strait, "1", server_ssl(&leaf, &snis));
    let route = |sni: Option<&str>, server: &Upstream| {
        let mut route = route_to(&[(server.addr, 1)]);
        if let Some(sni) = sni {
            route["sni"] = json!(sni);
        }
        route
    };
    // The route without sni comes first in key order: SNI routes still win.
    strait.put_route("1", route(None, &servers[3]));
    strait.put_route("2", route(Some("a.test.com"), &servers[0]));
    strait.put_route("3", route(Some("*.test.com"), &servers[1]));
    strait.put_route("4", route(Some("*.b.test.com"), &servers[2]));
    let client = trusting(&ca);
    wait_until("every sni route is in force", || client.line(listen, "x.b.test.com").is_ok_and(|l| l == "longer"));
    for (sni, expected) in
        [("a.test.com", "exact"), ("b.test.com", "wild"), ("x.b.test.com", "longer"), ("another.test", "plain")]
    {
        assert_eq!(client.line(listen, sni).unwrap(), expected, "sni {sni}");
    }
}

// ---------------------------------------------------------------------------
// mTLS

#[test]
fn mtls_admits_only_a_client_certificate_from_the_configured_ca() {
    let ca = Ca::new("mtls server CA");
    let client_ca = Ca::new("mtls client CA");
    let foreign_ca = Ca::new("foreign CA");
    let good = client_ca.client("good client");
    let foreign = foreign_ca.client("foreign client");
    let echo = Upstream::echo();
    let listen = local();
    let mut config = Config::new();
    config.tcp.push(tls_listener(listen));
    let strait = start(config, None, None);
    let leaf = ca.server(&["m.test.com"]);
    let mut ssl = server_ssl(&leaf, &["m.test.com"]);
    ssl["client"] = json!({"ca": client_ca.pem});
    put_ssl(&strait, "1", ssl);
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    let with_good = Client { trust: Some(&ca), cert: Some(&good) };
    wait_tls_echo(&with_good, listen, "m.test.com");

    let (before, bytes_before) = (echo.accepted(), echo.bytes_in());
    let missing = trusting(&ca).echo(listen, "m.test.com", b"no certificate");
    assert!(missing.is_err(), "a client without a certificate is refused");
    let wrong = Client { trust: Some(&ca), cert: Some(&foreign) }.echo(listen, "m.test.com", b"foreign");
    assert!(wrong.is_err(), "a certificate from another CA is refused");
    with_good.echo(listen, "m.test.com", b"good certificate").unwrap();
    assert_eq!(echo.accepted(), before + 1, "only the good client reached the backend");
    assert_eq!(echo.bytes_in(), bytes_before + "good certificate".len() as u64, "and only its bytes");
}

// ---------------------------------------------------------------------------
// TLS to the upstream

#[test]
fn a_tls_upstream_is_sent_apisix_backend_or_the_clients_sni() {
    let ca = Ca::new("upstream CA");
    let upstream = tls_upstream(&ca.server(&["upstream.internal"]), None);
    let plain = local();
    let tls = local();
    let mut config = Config::new().listen(plain);
    config.tcp.push(tls_listener(tls));
    let strait = start(config, None, None);
    let leaf = ca.server(&["a.test.com"]);
    put_ssl(&strait, "1", server_ssl(&leaf, &["a.test.com"]));
    let mut route = route_to(&[(upstream.server.addr, 1)]);
    route["upstream"]["scheme"] = json!("tls");
    strait.put_route("1", route);
    wait_until("the plain listener reaches the TLS upstream", || {
        try_connect(plain).and_then(|mut s| read_line(&mut s)).is_ok_and(|l| l == "sni=apisix_backend")
    });
    // Plain client: Strait speaks TLS to the upstream, the client sees plaintext.
    let mut stream = connect(plain);
    assert_eq!(read_line(&mut stream).unwrap(), "sni=apisix_backend");
    stream.write_all(b"plain in, tls out").unwrap();
    assert_eq!(read_exact(&mut stream, 17), b"plain in, tls out");
    // The client's FIN reaches the upstream (as close_notify), which ends,
    // and that end comes back as a FIN.
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut stream), b"", "the end crosses the TLS upstream both ways");
    // TLS client with an SNI: that name goes upstream.
    let client = trusting(&ca);
    let mut session = client.handshake(tls, "a.test.com").unwrap();
    assert_eq!(read_line_from(&mut session.stream).unwrap(), "sni=a.test.com");
    session.stream.write_all(b"tls both ways").unwrap();
    let mut back = [0u8; 13];
    session.stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"tls both ways");
    let snis = upstream.snis.lock().unwrap().clone();
    assert!(snis.iter().all(|s| s == "apisix_backend" || s == "a.test.com"), "{snis:?}");
    assert_eq!(snis.last().map(String::as_str), Some("a.test.com"));
}

#[test]
fn megabytes_cross_tls_on_both_sides_byte_for_byte_with_a_clean_end() {
    let ca = Ca::new("bulk CA");
    let upstream = tls_upstream_serving(&ca.server(&["upstream.internal"]), None, Serve::SinkThenSource);
    let listen = local();
    let mut config = Config::new();
    config.tcp.push(tls_listener(listen));
    let strait = start(config, None, None);
    let leaf = ca.server(&["a.test.com"]);
    put_ssl(&strait, "1", server_ssl(&leaf, &["a.test.com"]));
    let mut route = route_to(&[(upstream.server.addr, 1)]);
    route["upstream"]["scheme"] = json!("tls");
    strait.put_route("1", route);
    let client = trusting(&ca);
    wait_until("the route to the TLS upstream is in force", || {
        client.line(listen, "a.test.com").is_ok_and(|l| l == "sni=a.test.com")
    });
    const LEN: u64 = 8 << 20;
    let mut tls = client.handshake(listen, "a.test.com").unwrap();
    assert_eq!(read_line_from(&mut tls.stream).unwrap(), "sni=a.test.com");
    // The upstream reads everything before it writes: Strait's bounded
    // buffers must hold the client back, not grow or stall.
    write_pattern_to(&mut tls.stream, 1, LEN).unwrap();
    tls.stream.conn.send_close_notify();
    tls.stream.flush().unwrap();
    let received = read_pattern(&mut tls.stream, 2).unwrap();
    assert_eq!(received, LEN, "the upstream checked {LEN} bytes and sent as many back");
}

#[test]
fn an_upstream_requiring_a_client_certificate_gets_tls_client_cert_or_client_cert_id() {
    let ca = Ca::new("upstream mtls CA");
    let upstream = tls_upstream(&ca.server(&["upstream.internal"]), Some(&ca));
    let proxy_cert = ca.client("strait");
    let [inline, by_id, without] = [local(), local(), local()];
    let config = Config::new().listen(inline).listen(by_id).listen(without);
    let strait = start(config, None, None);
    put_ssl(&strait, "c1", json!({"type": "client", "cert": proxy_cert.cert_pem, "key": proxy_cert.key_pem}));
    let route = |port: u16, tls: Option<Value>| {
        let mut route = route_to(&[(upstream.server.addr, 1)]);
        route["server_port"] = json!(port);
        route["upstream"]["scheme"] = json!("tls");
        if let Some(tls) = tls {
            route["upstream"]["tls"] = tls;
        }
        route
    };
    strait.put_route(
        "1",
        route(inline.port(), Some(json!({"client_cert": proxy_cert.cert_pem, "client_key": proxy_cert.key_pem}))),
    );
    strait.put_route("2", route(by_id.port(), Some(json!({"client_cert_id": "c1"}))));
    strait.put_route("3", route(without.port(), None));
    for listen in [inline, by_id] {
        wait_until(&format!("{listen} reaches the mTLS upstream"), || {
            try_connect(listen).and_then(|mut s| read_line(&mut s)).is_ok_and(|l| l == "sni=apisix_backend")
        });
    }
    let before = upstream.handshakes.load(Ordering::SeqCst);
    let mut stream = connect(without);
    let refused = read_line(&mut stream);
    assert!(refused.is_err(), "without a client certificate the upstream refuses: got {refused:?}");
    let mut stream = connect(by_id);
    assert_eq!(read_line(&mut stream).unwrap(), "sni=apisix_backend");
    assert_eq!(upstream.handshakes.load(Ordering::SeqCst), before + 1, "only the certified handshake completed");
}

// ---------------------------------------------------------------------------
// Passthrough

#[test]
fn passthrough_routes_by_sni_to_tls_backends_end_to_end_even_with_a_fragmented_client_hello() {
    let ca = Ca::new("passthrough CA");
    let p1_cert = ca.server(&["p1.test"]);
    let p2_cert = ca.server(&["p2.test"]);
    let p1 = tls_upstream(&p1_cert, None);
    let p2 = tls_upstream(&p2_cert, None);
    let listen = local();
    let mut config = Config::new();
    config.tcp.push(passthrough_listener(listen));
    let strait = start(config, None, None);
    for (id, sni, server) in [("1", "p1.test", &p1), ("2", "p2.test", &p2)] {
        let mut route = route_to(&[(server.server.addr, 1)]);
        route["sni"] = json!(sni);
        strait.put_route(id, route);
    }
    let client = trusting(&ca);
    wait_until("both passthrough routes are in force", || {
        client.line(listen, "p2.test").is_ok_and(|l| l == "sni=p2.test")
    });
    for (sni, cert) in [("p1.test", &p1_cert), ("p2.test", &p2_cert)] {
        let mut tls = client.handshake(listen, sni).unwrap();
        assert_eq!(tls.served, cert.der, "{sni}: the backend's own certificate, end to end");
        assert_eq!(read_line_from(&mut tls.stream).unwrap(), format!("sni={sni}"));
        tls.stream.write_all(b"through").unwrap();
        let mut back = [0u8; 7];
        tls.stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"through");
    }

    // The ClientHello in 1-5 byte writes with pauses between them.
    let before = p1.handshakes.load(Ordering::SeqCst);
    let (config, recorder) = client.config();
    let mut conn = ClientConnection::new(config, ServerName::try_from("p1.test").unwrap()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    let mut socket = connect(listen);
    socket.set_nodelay(true).unwrap();
    let mut offset = 0;
    let mut step = 0;
    while offset < hello.len() {
        let n = (1 + step % 5).min(hello.len() - offset);
        socket.write_all(&hello[offset..offset + n]).unwrap();
        offset += n;
        step += 1;
        thread::sleep(Duration::from_millis(2));
    }
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).unwrap();
    }
    assert_eq!(recorder.seen.lock().unwrap().as_ref(), Some(&p1_cert.der), "p1's certificate");
    let mut tls = rustls::StreamOwned::new(conn, socket);
    assert_eq!(read_line_from(&mut tls).unwrap(), "sni=p1.test");
    assert_eq!(p1.handshakes.load(Ordering::SeqCst), before + 1);
    assert!(step > 50, "the ClientHello went out in many pieces ({step})");
}

// ---------------------------------------------------------------------------
// Bounds

#[test]
fn garbage_and_stalled_clients_are_closed_and_others_keep_being_served() {
    let ca = Ca::new("bounds CA");
    let echo = Upstream::echo();
    let listen = local();
    let mut config = Config::new();
    config.tcp.push(tls_listener(listen));
    let strait = start(config, None, Some("1s"));
    let leaf = ca.server(&["a.test.com"]);
    put_ssl(&strait, "1", server_ssl(&leaf, &["a.test.com"]));
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    let client = trusting(&ca);
    wait_tls_echo(&client, listen, "a.test.com");
    let before = echo.accepted();

    let mut garbage = connect(listen);
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    expect_closed_without_bytes(&mut garbage);

    // Stalled: silent, half a record header, a ClientHello cut short.
    let mut silent = connect(listen);
    let mut half_header = connect(listen);
    half_header.write_all(&[22, 3, 1]).unwrap();
    let mut cut = connect(listen);
    {
        let (config, _) = client.config();
        let mut conn = ClientConnection::new(config, ServerName::try_from("a.test.com").unwrap()).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        cut.write_all(&hello[..hello.len() / 2]).unwrap();
    }
    // A stalled handshake after the ClientHello: the client never answers the server's flight.
    let mut mid = connect(listen);
    {
        let (config, _) = client.config();
        let mut conn = ClientConnection::new(config, ServerName::try_from("a.test.com").unwrap()).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        mid.write_all(&hello).unwrap();
    }
    // While they stall, others are served.
    client.echo(listen, "a.test.com", b"served while others stall").unwrap();
    for (what, stream) in [("silent", &mut silent), ("half a header", &mut half_header), ("cut ClientHello", &mut cut)]
    {
        let closed = expect_closed_without_bytes(stream);
        eprintln!("{what}: {closed:?}");
    }
    // The stalled mid-handshake client got the server's flight, then the close.
    let mut rest = Vec::new();
    match mid.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "closed, not timed out: {e}"),
    }
    client.echo(listen, "a.test.com", b"and after").unwrap();
    assert_eq!(echo.accepted(), before + 2, "no stalled or garbage client reached the backend");
}
