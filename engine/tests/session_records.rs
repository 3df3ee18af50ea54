//! Access-log records: one per finished connection, session or refused
//! accept, with nginx's stream `$status`, byte counts and duration; none
//! unless `EngineConfig::session_records` asks for them.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{ConnectError, Engine, EngineConfig, ListenerId, Resources, SessionRecord, Side, Snapshot, Time};

fn engine(config: EngineConfig) -> Engine {
    let routes = json!({
        "tcp": {"server_port": 9100, "upstream": {"nodes": {"10.0.0.1:1": 1}, "retries": 0}},
        "udp": {"server_port": 9200, "upstream": {"nodes": {"10.0.0.2:53": 1}, "proxy_responses": 1}}
    });
    let resources = Resources {
        stream_routes: routes.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    };
    let snapshot = Arc::new(Snapshot::build(1, &resources, &mut |_| vec![]).0);
    let listen = |protocol, addr: &str| ListenSpec {
        protocol,
        addr: addr.parse().unwrap(),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    let listeners = vec![listen(Protocol::Tcp, "127.0.0.1:9100"), listen(Protocol::Udp, "127.0.0.1:9200")];
    Engine::new(listeners, snapshot, EngineConfig { session_records: true, ..config })
}

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

fn records(e: &mut Engine) -> Vec<SessionRecord> {
    while e.poll_action().is_some() {}
    std::iter::from_fn(|| e.poll_session_record()).collect()
}

fn read(e: &mut Engine, now: Time, conn: strait_engine::ConnId, side: Side, bytes: &[u8]) {
    let buf = e.read_buf(conn, side).expect("room to read");
    buf[..bytes.len()].copy_from_slice(bytes);
    e.handle_read(now, conn, side, bytes.len());
}

#[test]
fn a_served_connection_is_one_200_record_with_its_bytes_and_duration() {
    let mut e = engine(EngineConfig::default());
    let peer = "1.2.3.4:5555".parse().unwrap();
    let local = "127.0.0.1:9100".parse().unwrap();
    let id = e.handle_accept(at(0), ListenerId(0), local, peer).unwrap();
    e.handle_connected(at(1), id, Ok(()));
    read(&mut e, at(2), id, Side::Client, b"hello");
    let n = e.write_buf(id, Side::Upstream).len();
    e.handle_written(at(2), id, Side::Upstream, n);
    read(&mut e, at(3), id, Side::Upstream, b"hi, 1.2.3.4");
    let n = e.write_buf(id, Side::Client).len();
    e.handle_written(at(3), id, Side::Client, n);
    assert!(records(&mut e).is_empty(), "nothing is logged while the connection is open");
    e.handle_read(at(1500), id, Side::Client, 0);
    e.handle_read(at(1500), id, Side::Upstream, 0);
    let logged = records(&mut e);
    assert_eq!(
        logged,
        [SessionRecord {
            protocol: Protocol::Tcp,
            peer,
            local,
            route_id: "tcp".into(),
            upstream: Some("10.0.0.1:1".parse().unwrap()),
            status: 200,
            bytes_from_client: 5,
            bytes_from_upstream: 11,
            duration: Duration::from_millis(1500),
        }]
    );
}

#[test]
fn a_failed_upstream_connect_is_502_and_a_refused_accept_503() {
    let mut e = engine(EngineConfig::default());
    let local = "127.0.0.1:9100".parse().unwrap();
    let id = e.handle_accept(at(0), ListenerId(0), local, "1.2.3.4:1".parse().unwrap()).unwrap();
    e.handle_connected(at(5), id, Err(ConnectError::Refused));
    let failed = records(&mut e);
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].status, failed[0].upstream), (502, Some("10.0.0.1:1".parse().unwrap())));

    // A worker at its connection limit refuses at accept.
    let mut limited = engine(EngineConfig { max_connections: 0, ..EngineConfig::default() });
    assert!(limited.handle_accept(at(0), ListenerId(0), local, "1.2.3.4:2".parse().unwrap()).is_err());
    let refused = records(&mut limited);
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].status, refused[0].upstream, refused[0].duration), (503, None, Duration::ZERO));
}

#[test]
fn a_udp_session_is_logged_when_it_ends_with_its_bytes() {
    let mut e = engine(EngineConfig::default());
    let peer = "1.2.3.4:4000".parse().unwrap();
    let local = "127.0.0.1:9200".parse().unwrap();
    let session = e.handle_client_datagram(at(0), ListenerId(1), local, peer, 40).unwrap();
    assert!(records(&mut e).is_empty());
    e.handle_upstream_datagram(at(7), session, 120).expect("the reply goes back");
    let logged = records(&mut e);
    assert_eq!(logged.len(), 1, "proxy_responses 1: the reply ends the session");
    let r = &logged[0];
    assert_eq!((r.protocol, r.status, r.bytes_from_client, r.bytes_from_upstream), (Protocol::Udp, 200, 40, 120));
    assert_eq!((r.route_id.as_str(), r.duration), ("udp", Duration::from_millis(7)));
}

#[test]
fn nothing_is_collected_unless_asked() {
    let snapshot = Arc::new(Snapshot::build(1, &Resources::default(), &mut |_| vec![]).0);
    let mut e = Engine::new(vec![], snapshot, EngineConfig::default());
    let refused = e.handle_accept(at(0), ListenerId(0), "127.0.0.1:1".parse().unwrap(), "1.2.3.4:1".parse().unwrap());
    assert!(refused.is_err());
    assert_eq!(e.poll_session_record(), None);
}
