//! The TLS states of a TCP connection driven directly with an explicit clock
//! and an in-memory rustls client: termination, SNI routing, refusals,
//! timeouts, passthrough, origination.

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{Action, ConnId, Engine, EngineConfig, ListenerId, Resources, Side, Snapshot, Time};

const LISTENER: ListenerId = ListenerId(0);

struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

fn pki() -> Pki {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pki { ca_pem: cert.pem(), ca_der: cert.der().clone(), ca: cert, ca_key: key }
}

fn leaf(pki: &Pki, names: &[&str]) -> (String, String) {
    let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn engine(pki: &Pki, tls: bool, passthrough: bool, config: EngineConfig) -> Engine {
    let (cert, key) = leaf(pki, &["test.com", "*.test.com"]);
    let resources = Resources {
        stream_routes: vec![
            ("1".into(), json!({"sni": "a.test.com", "upstream": {"nodes": {"10.0.0.1:1": 1}}})),
            ("2".into(), json!({"upstream": {"nodes": {"10.0.0.2:2": 1}}})),
        ],
        ssls: vec![("s1".into(), json!({"snis": ["test.com", "*.test.com"], "cert": cert, "key": key}))],
        ..Default::default()
    };
    let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| vec![]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let listener = ListenSpec {
        protocol: Protocol::Tcp,
        addr: "127.0.0.1:9443".parse().unwrap(),
        tls,
        tls_passthrough: passthrough,
        proxy_protocol: false,
    };
    Engine::new(vec![listener], Arc::new(snapshot), config)
}

fn client(pki: &Pki, sni: &str) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(sni.to_string()).unwrap()).unwrap()
}

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

fn actions(engine: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| engine.poll_action()).collect()
}

/// Moves ciphertext both ways between the client and the engine's client side until quiet.
fn exchange(engine: &mut Engine, now: Time, id: ConnId, client: &mut rustls::ClientConnection) {
    for _ in 0..20 {
        let mut moved = false;
        while client.wants_write() {
            let mut out = Vec::new();
            client.write_tls(&mut out).unwrap();
            let Some(buf) = engine.read_buf(id, Side::Client) else { break };
            let n = out.len().min(buf.len());
            buf[..n].copy_from_slice(&out[..n]);
            engine.handle_read(now, id, Side::Client, n);
            moved = true;
        }
        let data = engine.write_buf(id, Side::Client).to_vec();
        if !data.is_empty() {
            let mut slice = &data[..];
            let n = client.read_tls(&mut slice).unwrap();
            engine.handle_written(now, id, Side::Client, n);
            if client.process_new_packets().is_err() {
                return;
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn accept(engine: &mut Engine, now: Time) -> ConnId {
    engine
        .handle_accept(now, LISTENER, "127.0.0.1:9443".parse().unwrap(), "10.9.9.9:5555".parse().unwrap())
        .expect("a TLS listener accepts before routing")
}

#[test]
fn termination_routes_by_sni_after_the_handshake_and_proxies_plaintext() {
    let pki = pki();
    let mut e = engine(&pki, true, false, EngineConfig::default());
    let id = accept(&mut e, at(0));
    assert!(actions(&mut e).is_empty(), "nothing is connected before the ClientHello");
    let mut c = client(&pki, "a.test.com");
    exchange(&mut e, at(1), id, &mut c);
    assert!(!c.is_handshaking(), "the handshake completes");
    let connects = actions(&mut e);
    assert_eq!(connects, [Action::Connect { conn: id, addr: "10.0.0.1:1".parse().unwrap() }], "the sni route's node");
    e.handle_connected(at(2), id, Ok(()));
    c.writer().write_all(b"ping").unwrap();
    exchange(&mut e, at(3), id, &mut c);
    assert_eq!(e.write_buf(id, Side::Upstream), b"ping", "the upstream gets plaintext");
    e.handle_written(at(3), id, Side::Upstream, 4);
    let buf = e.read_buf(id, Side::Upstream).unwrap();
    buf[..4].copy_from_slice(b"pong");
    e.handle_read(at(4), id, Side::Upstream, 4);
    exchange(&mut e, at(4), id, &mut c);
    let mut got = [0u8; 4];
    c.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    // The client closes: close_notify, then FIN go to the upstream as a FIN.
    c.send_close_notify();
    exchange(&mut e, at(5), id, &mut c);
    assert!(actions(&mut e).contains(&Action::Shutdown { conn: id, side: Side::Upstream }));
}

#[test]
fn a_name_without_sni_route_takes_the_plain_route() {
    let pki = pki();
    let mut e = engine(&pki, true, false, EngineConfig::default());
    let id = accept(&mut e, at(0));
    let mut c = client(&pki, "b.test.com");
    exchange(&mut e, at(1), id, &mut c);
    assert!(!c.is_handshaking());
    assert_eq!(actions(&mut e), [Action::Connect { conn: id, addr: "10.0.0.2:2".parse().unwrap() }]);
}

#[test]
fn an_unknown_sni_is_refused_with_an_alert_and_nothing_connected() {
    let pki = pki();
    let mut e = engine(&pki, true, false, EngineConfig::default());
    let id = accept(&mut e, at(0));
    let mut c = client(&pki, "other.org");
    exchange(&mut e, at(1), id, &mut c);
    let all = actions(&mut e);
    assert!(!all.iter().any(|a| matches!(a, Action::Connect { .. })), "{all:?}");
    assert!(all.contains(&Action::Close { conn: id, reset: false }), "{all:?}");
    assert!(c.process_new_packets().is_err() || c.is_handshaking(), "the client saw the alert");
    assert_eq!(e.connection_count(), 0);
    assert_eq!(e.buffers_in_use(), 0);
}

#[test]
fn garbage_on_a_tls_listener_is_closed() {
    let pki = pki();
    let mut e = engine(&pki, true, false, EngineConfig::default());
    let id = accept(&mut e, at(0));
    let buf = e.read_buf(id, Side::Client).unwrap();
    buf[..18].copy_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    e.handle_read(at(1), id, Side::Client, 18);
    assert_eq!(actions(&mut e), [Action::Close { conn: id, reset: false }]);
    assert_eq!(e.buffers_in_use(), 0);
}

#[test]
fn a_stalled_client_is_closed_at_the_handshake_timeout() {
    let pki = pki();
    let config = EngineConfig { tls_handshake_timeout: Duration::from_secs(3), ..EngineConfig::default() };
    let mut e = engine(&pki, true, false, config);
    let id = accept(&mut e, at(0));
    let buf = e.read_buf(id, Side::Client).unwrap();
    buf[..3].copy_from_slice(&[22, 3, 1]);
    e.handle_read(at(1), id, Side::Client, 3);
    assert_eq!(e.poll_timeout(), Some(at(3000)));
    e.handle_timeout(at(3000));
    assert_eq!(actions(&mut e), [Action::Close { conn: id, reset: false }]);
    assert_eq!(e.connection_count(), 0);
    assert_eq!(e.timer_count(), 0);
}

#[test]
fn passthrough_forwards_a_client_hello_sent_byte_by_byte_untouched() {
    let pki = pki();
    let mut e = engine(&pki, false, true, EngineConfig::default());
    let id = accept(&mut e, at(0));
    let mut c = client(&pki, "a.test.com");
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    for (i, byte) in hello.iter().enumerate() {
        let buf = e.read_buf(id, Side::Client).unwrap();
        buf[0] = *byte;
        e.handle_read(at(1), id, Side::Client, 1);
        let connects: Vec<_> = actions(&mut e);
        if i + 1 < hello.len() {
            assert!(connects.is_empty(), "no route before the whole ClientHello (byte {i})");
        } else {
            assert_eq!(connects, [Action::Connect { conn: id, addr: "10.0.0.1:1".parse().unwrap() }]);
        }
    }
    e.handle_connected(at(2), id, Ok(()));
    assert_eq!(e.write_buf(id, Side::Upstream), &hello[..], "the original bytes, untouched");
}

#[test]
fn fallback_sni_names_a_client_without_sni() {
    let pki = pki();
    let config = EngineConfig { fallback_sni: Some("a.test.com".into()), ..EngineConfig::default() };
    let mut e = engine(&pki, true, false, config);
    let id = accept(&mut e, at(0));
    // An IP address as the server name: rustls sends no SNI.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let mut c = client(&pki, "a.test.com");
    let _ = &mut c;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(strait_engine::tls::upstream::AcceptAnyServerCertificate::new(
            rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )))
        .with_no_client_auth();
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("10.0.0.9").unwrap()).unwrap();
    exchange(&mut e, at(1), id, &mut c);
    assert!(!c.is_handshaking());
    assert_eq!(actions(&mut e), [Action::Connect { conn: id, addr: "10.0.0.1:1".parse().unwrap() }]);
    let _ = pki.ca_pem.len();
}

#[test]
fn no_sni_and_no_fallback_is_refused() {
    let pki = pki();
    let mut e = engine(&pki, true, false, EngineConfig::default());
    let id = accept(&mut e, at(0));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(strait_engine::tls::upstream::AcceptAnyServerCertificate::new(
            rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )))
        .with_no_client_auth();
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("10.0.0.9").unwrap()).unwrap();
    exchange(&mut e, at(1), id, &mut c);
    let all = actions(&mut e);
    assert!(!all.iter().any(|a| matches!(a, Action::Connect { .. })));
    assert!(all.contains(&Action::Close { conn: id, reset: false }));
}
