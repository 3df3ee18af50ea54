//! mTLS toward clients, the SNI sent to `scheme: tls` upstreams, and FINs
//! crossing between a TLS side and a plain side, driven directly with an
//! explicit clock and in-memory rustls peers (a client on one side, a server
//! on the other).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::Acceptor;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{Action, ConnId, Engine, EngineConfig, ListenerId, Resources, Side, Snapshot, Time};

const TLS_LISTENER: ListenerId = ListenerId(0);
const PLAIN_LISTENER: ListenerId = ListenerId(1);
const NODE: &str = "10.0.0.1:443";

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

struct Leaf {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    Ca { cert: params.self_signed(&key).unwrap(), key }
}

fn leaf(ca: &Ca, names: &[&str]) -> Leaf {
    let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Leaf { pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone(), key_der: key.serialize_der() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A tls listener (0) and a plain one (1); one route to `NODE` with `upstream`.
fn engine(ssls: Vec<(String, Value)>, upstream: Value) -> Engine {
    let resources =
        Resources { stream_routes: vec![("1".into(), json!({ "upstream": upstream }))], ssls, ..Default::default() };
    let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| vec![]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let listen = |addr: &str, tls: bool| ListenSpec {
        protocol: Protocol::Tcp,
        addr: addr.parse().unwrap(),
        tls,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    Engine::new(
        vec![listen("127.0.0.1:9443", true), listen("127.0.0.1:9100", false)],
        Arc::new(snapshot),
        EngineConfig::default(),
    )
}

fn plain_upstream() -> Value {
    json!({"nodes": {NODE: 1}})
}

fn tls_upstream() -> Value {
    json!({"scheme": "tls", "nodes": {NODE: 1}})
}

fn server_ssl(cert: &Leaf, sni: &str, client_ca: Option<&Ca>) -> (String, Value) {
    let mut ssl = json!({"cert": cert.pem, "key": cert.key_pem, "sni": sni});
    if let Some(ca) = client_ca {
        ssl["client"] = json!({"ca": ca.cert.pem()});
    }
    ("s1".into(), ssl)
}

/// A client trusting `ca`, presenting `cert` when given.
fn client(ca: &Ca, sni: &str, cert: Option<&Leaf>) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(leaf) => builder.with_client_auth_cert(vec![leaf.der.clone()], leaf.key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(sni.to_string()).unwrap()).unwrap()
}

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

fn actions(engine: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| engine.poll_action()).collect()
}

fn accept(engine: &mut Engine, now: Time, listener: ListenerId) -> ConnId {
    let local = if listener == TLS_LISTENER { "127.0.0.1:9443" } else { "127.0.0.1:9100" };
    engine.handle_accept(now, listener, local.parse().unwrap(), "10.9.9.9:5555".parse().unwrap()).expect("accepted")
}

/// Moves ciphertext both ways between an in-memory TLS peer and one side of
/// the engine until neither has anything to say. Returns whether the peer saw
/// a TLS error.
fn exchange(engine: &mut Engine, now: Time, id: ConnId, side: Side, peer: &mut rustls::Connection) -> bool {
    for _ in 0..50 {
        let mut moved = false;
        while peer.wants_write() {
            let mut out = Vec::new();
            peer.write_tls(&mut out).unwrap();
            let mut rest = &out[..];
            while !rest.is_empty() {
                let Some(buf) = engine.read_buf(id, side) else { return false };
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                engine.handle_read(now, id, side, n);
                rest = &rest[n..];
            }
            moved = true;
        }
        let data = engine.write_buf(id, side).to_vec();
        if !data.is_empty() {
            let mut slice = &data[..];
            let n = peer.read_tls(&mut slice).unwrap();
            engine.handle_written(now, id, side, n);
            if peer.process_new_packets().is_err() {
                return true;
            }
            moved = true;
        }
        if !moved {
            return false;
        }
    }
    panic!("the TLS exchange never went quiet");
}

/// The server name in the ClientHello Strait wrote to the upstream.
fn upstream_sni(engine: &Engine, id: ConnId) -> Option<String> {
    let hello = engine.write_buf(id, Side::Upstream).to_vec();
    assert!(!hello.is_empty(), "a ClientHello is queued for the TLS upstream");
    let mut acceptor = Acceptor::default();
    acceptor.read_tls(&mut &hello[..]).unwrap();
    let accepted = acceptor.accept().expect("a valid ClientHello").expect("a whole ClientHello");
    accepted.client_hello().server_name().map(str::to_string)
}

// ---------------------------------------------------------------------------
// mTLS

fn mtls_engine(server_ca: &Ca, client_ca: &Ca) -> Engine {
    let cert = leaf(server_ca, &["m.test.com"]);
    engine(vec![server_ssl(&cert, "m.test.com", Some(client_ca))], plain_upstream())
}

#[test]
fn mtls_admits_a_client_certificate_chaining_to_client_ca_and_then_connects() {
    let (server_ca, client_ca) = (ca(), ca());
    let mut e = mtls_engine(&server_ca, &client_ca);
    let id = accept(&mut e, at(0), TLS_LISTENER);
    let good = leaf(&client_ca, &["client.example"]);
    let mut c = rustls::Connection::Client(client(&server_ca, "m.test.com", Some(&good)));
    let failed = exchange(&mut e, at(1), id, Side::Client, &mut c);
    assert!(!failed && !c.is_handshaking(), "the handshake completes");
    assert_eq!(actions(&mut e), [Action::Connect { conn: id, addr: NODE.parse().unwrap() }]);
    e.handle_connected(at(2), id, Ok(()));
    c.writer().write_all(b"verified").unwrap();
    exchange(&mut e, at(3), id, Side::Client, &mut c);
    assert_eq!(e.write_buf(id, Side::Upstream), b"verified");
}

#[test]
fn mtls_refuses_a_missing_or_foreign_client_certificate_and_connects_nothing() {
    let (server_ca, client_ca, foreign_ca) = (ca(), ca(), ca());
    let foreign = leaf(&foreign_ca, &["client.example"]);
    for cert in [None, Some(&foreign)] {
        let mut e = mtls_engine(&server_ca, &client_ca);
        let id = accept(&mut e, at(0), TLS_LISTENER);
        let mut c = rustls::Connection::Client(client(&server_ca, "m.test.com", cert));
        let failed = exchange(&mut e, at(1), id, Side::Client, &mut c);
        let all = actions(&mut e);
        let what = if cert.is_some() { "foreign certificate" } else { "no certificate" };
        assert!(!all.iter().any(|a| matches!(a, Action::Connect { .. })), "{what}: nothing connected: {all:?}");
        assert!(all.iter().any(|a| matches!(a, Action::Close { conn, .. } if *conn == id)), "{what}: closed: {all:?}");
        assert!(failed, "{what}: the client got an alert");
        assert_eq!(e.connection_count(), 0);
        assert_eq!(e.buffers_in_use(), 0, "{what}: every buffer returned");
    }
}

// ---------------------------------------------------------------------------
// The SNI sent upstream

#[test]
fn a_plain_client_sends_apisix_backend_to_a_tls_upstream() {
    let mut e = engine(vec![], tls_upstream());
    let id = accept(&mut e, at(0), PLAIN_LISTENER);
    assert_eq!(actions(&mut e), [Action::Connect { conn: id, addr: NODE.parse().unwrap() }]);
    e.handle_connected(at(1), id, Ok(()));
    assert_eq!(upstream_sni(&e, id).as_deref(), Some("apisix_backend"));
}

#[test]
fn a_tls_client_s_sni_is_sent_to_a_tls_upstream() {
    let server_ca = ca();
    let cert = leaf(&server_ca, &["a.test.com"]);
    let mut e = engine(vec![server_ssl(&cert, "a.test.com", None)], tls_upstream());
    let id = accept(&mut e, at(0), TLS_LISTENER);
    let mut c = rustls::Connection::Client(client(&server_ca, "A.Test.Com", None));
    exchange(&mut e, at(1), id, Side::Client, &mut c);
    assert!(!c.is_handshaking());
    assert_eq!(actions(&mut e), [Action::Connect { conn: id, addr: NODE.parse().unwrap() }]);
    e.handle_connected(at(2), id, Ok(()));
    assert_eq!(upstream_sni(&e, id).as_deref(), Some("a.test.com"), "the client's name, lower-cased");
}

#[test]
fn bytes_cross_a_tls_upstream_handshake_both_ways() {
    let upstream_ca = ca();
    let upstream_cert = leaf(&upstream_ca, &["upstream.internal"]);
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![upstream_cert.der.clone()], upstream_cert.key())
        .unwrap();
    let mut e = engine(vec![], tls_upstream());
    let id = accept(&mut e, at(0), PLAIN_LISTENER);
    let _ = actions(&mut e);
    // The client speaks first, before the upstream handshake is done.
    let buf = e.read_buf(id, Side::Client).unwrap();
    buf[..5].copy_from_slice(b"hello");
    e.handle_read(at(1), id, Side::Client, 5);
    e.handle_connected(at(1), id, Ok(()));
    let mut server = rustls::Connection::Server(rustls::ServerConnection::new(Arc::new(server_config)).unwrap());
    assert!(!exchange(&mut e, at(2), id, Side::Upstream, &mut server));
    assert!(!server.is_handshaking());
    let mut got = [0u8; 5];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    server.writer().write_all(b"world").unwrap();
    exchange(&mut e, at(3), id, Side::Upstream, &mut server);
    assert_eq!(e.write_buf(id, Side::Client), b"world");
}

// ---------------------------------------------------------------------------
// FINs between a TLS side and a plain side

#[test]
fn a_plain_upstream_fin_reaches_a_tls_client_as_close_notify_then_fin() {
    let server_ca = ca();
    let cert = leaf(&server_ca, &["a.test.com"]);
    let mut e = engine(vec![server_ssl(&cert, "a.test.com", None)], plain_upstream());
    let id = accept(&mut e, at(0), TLS_LISTENER);
    let mut c = rustls::Connection::Client(client(&server_ca, "a.test.com", None));
    exchange(&mut e, at(1), id, Side::Client, &mut c);
    let _ = actions(&mut e);
    e.handle_connected(at(2), id, Ok(()));
    exchange(&mut e, at(2), id, Side::Client, &mut c);
    // The upstream ends its half with nothing in flight.
    assert!(e.read_buf(id, Side::Upstream).is_some());
    e.handle_read(at(3), id, Side::Upstream, 0);
    exchange(&mut e, at(3), id, Side::Client, &mut c);
    let mut rest = Vec::new();
    assert_eq!(c.reader().read_to_end(&mut rest).unwrap(), 0, "the client read close_notify (a clean end)");
    assert!(
        actions(&mut e).contains(&Action::Shutdown { conn: id, side: Side::Client }),
        "then the client's write half is shut"
    );
}

#[test]
fn a_plain_client_fin_reaches_a_tls_upstream_as_close_notify_then_fin() {
    let upstream_ca = ca();
    let upstream_cert = leaf(&upstream_ca, &["upstream.internal"]);
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![upstream_cert.der.clone()], upstream_cert.key())
        .unwrap();
    let mut e = engine(vec![], tls_upstream());
    let id = accept(&mut e, at(0), PLAIN_LISTENER);
    let _ = actions(&mut e);
    e.handle_connected(at(1), id, Ok(()));
    let mut server = rustls::Connection::Server(rustls::ServerConnection::new(Arc::new(server_config)).unwrap());
    exchange(&mut e, at(1), id, Side::Upstream, &mut server);
    assert!(!server.is_handshaking());
    let _ = actions(&mut e);
    assert!(e.read_buf(id, Side::Client).is_some());
    e.handle_read(at(2), id, Side::Client, 0);
    exchange(&mut e, at(2), id, Side::Upstream, &mut server);
    let mut rest = Vec::new();
    assert_eq!(server.reader().read_to_end(&mut rest).unwrap(), 0, "the upstream read close_notify");
    assert!(actions(&mut e).contains(&Action::Shutdown { conn: id, side: Side::Upstream }));
}
