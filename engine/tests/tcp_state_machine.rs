//! The TCP connection state machine driven directly with an explicit clock.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{
    Action, ConnId, ConnectError, Engine, EngineConfig, ListenerId, Refusal, Resources, Side, Snapshot, Time,
};

const LISTENER: ListenerId = ListenerId(0);

fn snapshot(version: u64, routes: serde_json::Value) -> Arc<Snapshot> {
    let resources = Resources {
        stream_routes: routes.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    };
    Arc::new(Snapshot::build(version, &resources, &mut |_| vec![]).0)
}

fn engine(routes: serde_json::Value, config: EngineConfig) -> Engine {
    let listener = ListenSpec {
        protocol: Protocol::Tcp,
        addr: "127.0.0.1:9100".parse().unwrap(),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    Engine::new(vec![listener], snapshot(1, routes), config)
}

fn accept(engine: &mut Engine, now: Time, peer: &str) -> Result<ConnId, Refusal> {
    engine.handle_accept(now, LISTENER, "127.0.0.1:9100".parse().unwrap(), peer.parse().unwrap())
}

fn actions(engine: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| engine.poll_action()).collect()
}

fn at(seconds: u64) -> Time {
    Time::ZERO + Duration::from_secs(seconds)
}

fn read(engine: &mut Engine, now: Time, conn: ConnId, side: Side, bytes: &[u8]) {
    let buf = engine.read_buf(conn, side).expect("room to read");
    buf[..bytes.len()].copy_from_slice(bytes);
    engine.handle_read(now, conn, side, bytes.len());
}

fn write_all(engine: &mut Engine, now: Time, conn: ConnId, side: Side) -> Vec<u8> {
    let data = engine.write_buf(conn, side).to_vec();
    engine.handle_written(now, conn, side, data.len());
    data
}

fn two_nodes() -> serde_json::Value {
    json!({"1": {"upstream": {"nodes": [
        {"host": "10.0.0.1", "port": 1, "weight": 1},
        {"host": "10.0.0.2", "port": 2, "weight": 1}
    ], "timeout": {"connect": 2, "send": 30, "read": 10}}}})
}

#[test]
fn accept_connects_at_once_without_waiting_for_client_bytes() {
    let mut e = engine(two_nodes(), EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    assert_eq!(actions(&mut e), [Action::Connect { conn: id, addr: "10.0.0.1:1".parse().unwrap() }]);
    assert_eq!(e.poll_timeout(), Some(at(2)), "the connect deadline is armed");
}

#[test]
fn no_matching_route_refuses_without_state() {
    let mut e = engine(
        json!({"1": {"remote_addr": "10.0.0.0/8", "upstream": {"nodes": {"10.0.0.1:1": 1}}}}),
        EngineConfig::default(),
    );
    assert_eq!(accept(&mut e, at(0), "1.2.3.4:5"), Err(Refusal::NoRoute));
    assert_eq!(e.connection_count(), 0);
    assert!(actions(&mut e).is_empty());
}

#[test]
fn connect_timeout_moves_to_the_next_node_and_keeps_early_client_bytes() {
    let mut e = engine(two_nodes(), EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    read(&mut e, at(1), id, Side::Client, b"early");
    assert!(e.write_buf(id, Side::Upstream).is_empty(), "nothing is written before the upstream accepts");
    e.handle_timeout(at(2));
    assert_eq!(actions(&mut e), [Action::Connect { conn: id, addr: "10.0.0.2:2".parse().unwrap() }]);
    e.handle_connected(at(3), id, Ok(()));
    assert_eq!(write_all(&mut e, at(3), id, Side::Upstream), b"early");
}

#[test]
fn when_every_try_fails_the_client_is_closed() {
    let mut e = engine(two_nodes(), EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(0), id, Err(ConnectError::Refused));
    let _ = actions(&mut e);
    e.handle_connected(at(0), id, Err(ConnectError::Refused));
    assert_eq!(actions(&mut e), [Action::Close { conn: id, reset: false }]);
    assert_eq!((e.connection_count(), e.timer_count()), (0, 0));
}

#[test]
fn retries_zero_means_no_failover() {
    let routes = json!({"1": {"upstream": {"nodes": {"10.0.0.1:1": 1, "10.0.0.2:2": 1}, "retries": 0}}});
    let mut e = engine(routes, EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(0), id, Err(ConnectError::Refused));
    assert_eq!(actions(&mut e), [Action::Close { conn: id, reset: false }]);
}

#[test]
fn retry_timeout_cuts_retries_short() {
    let routes =
        json!({"1": {"upstream": {"nodes": {"10.0.0.1:1": 1, "10.0.0.2:2": 1, "10.0.0.3:3": 1}, "retry_timeout": 1}}});
    let mut e = engine(routes, EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(5), id, Err(ConnectError::Refused));
    assert_eq!(actions(&mut e), [Action::Close { conn: id, reset: false }]);
}

#[test]
fn half_close_is_forwarded_and_the_other_direction_keeps_flowing() {
    let mut e = engine(two_nodes(), EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(0), id, Ok(()));
    read(&mut e, at(0), id, Side::Client, b"query");
    e.handle_read(at(0), id, Side::Client, 0);
    assert!(actions(&mut e).is_empty(), "the FIN waits behind unsent bytes");
    assert!(e.read_buf(id, Side::Client).is_none(), "no reads after FIN");
    assert_eq!(write_all(&mut e, at(0), id, Side::Upstream), b"query");
    assert_eq!(actions(&mut e), [Action::Shutdown { conn: id, side: Side::Upstream }]);
    read(&mut e, at(1), id, Side::Upstream, b"answer");
    assert_eq!(write_all(&mut e, at(1), id, Side::Client), b"answer");
    e.handle_read(at(1), id, Side::Upstream, 0);
    assert_eq!(
        actions(&mut e),
        [Action::Shutdown { conn: id, side: Side::Client }, Action::Close { conn: id, reset: false }]
    );
    assert_eq!((e.connection_count(), e.buffers_in_use(), e.timer_count()), (0, 0, 0));
}

#[test]
fn a_reset_on_one_side_resets_the_other() {
    let mut e = engine(two_nodes(), EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(0), id, Ok(()));
    read(&mut e, at(0), id, Side::Upstream, b"partial");
    e.handle_reset(at(0), id, Side::Upstream);
    assert_eq!(actions(&mut e), [Action::Close { conn: id, reset: true }]);
    assert_eq!(e.buffers_in_use(), 0);
}

#[test]
fn a_full_buffer_stops_reading_until_it_drains() {
    let mut e = engine(two_nodes(), EngineConfig { buffer_bytes: 8, ..EngineConfig::default() });
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(0), id, Ok(()));
    read(&mut e, at(0), id, Side::Client, b"12345678");
    assert!(e.read_buf(id, Side::Client).is_none(), "back-pressure: a full buffer offers no room");
    assert_eq!(write_all(&mut e, at(0), id, Side::Upstream), b"12345678");
    assert!(e.read_buf(id, Side::Client).is_some());
}

#[test]
fn idle_connections_close_after_the_idle_timeout_and_activity_postpones_it() {
    let mut e = engine(two_nodes(), EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(1), id, Ok(()));
    read(&mut e, at(5), id, Side::Client, b"x");
    let _ = write_all(&mut e, at(5), id, Side::Upstream);
    e.handle_timeout(at(11));
    assert!(actions(&mut e).is_empty(), "activity at 5 s moved the deadline to 5 + max(send, read) = 35 s");
    e.handle_timeout(at(35));
    assert_eq!(actions(&mut e), [Action::Close { conn: id, reset: false }]);
}

#[test]
fn established_connections_keep_their_upstream_across_config_changes() {
    let mut e = engine(json!({"1": {"upstream": {"nodes": {"10.0.0.1:1": 1}}}}), EngineConfig::default());
    let old = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_snapshot(at(1), snapshot(2, json!({"1": {"upstream": {"nodes": {"10.0.0.9:9": 1}}}})));
    // The old connection fails its first connect and retries within its own upstream only.
    e.handle_connected(at(1), old, Err(ConnectError::Refused));
    assert_eq!(actions(&mut e), [Action::Close { conn: old, reset: false }]);
    let new = accept(&mut e, at(2), "1.2.3.4:6").unwrap();
    assert_eq!(actions(&mut e), [Action::Connect { conn: new, addr: "10.0.0.9:9".parse().unwrap() }]);
}

#[test]
fn the_connection_limit_refuses_new_connections() {
    let mut e = engine(two_nodes(), EngineConfig { max_connections: 1, ..EngineConfig::default() });
    accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    assert_eq!(accept(&mut e, at(0), "1.2.3.4:6"), Err(Refusal::TooManyConnections));
}

#[test]
fn stale_ids_are_ignored() {
    let mut e = engine(two_nodes(), EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_reset(at(0), id, Side::Client);
    let _ = actions(&mut e);
    let reused = accept(&mut e, at(0), "1.2.3.4:6").unwrap();
    assert_eq!(reused.index, id.index, "the slot is reused");
    e.handle_reset(at(0), id, Side::Client);
    assert_eq!(e.connection_count(), 1, "an event for the old generation does not touch the new connection");
}

#[test]
fn weights_one_to_three_split_forty_connections_ten_to_thirty() {
    let mut e =
        engine(json!({"1": {"upstream": {"nodes": {"10.0.0.1:1": 1, "10.0.0.2:2": 3}}}}), EngineConfig::default());
    let mut counts = [0; 2];
    for i in 0..40 {
        let id = accept(&mut e, at(0), &format!("1.2.3.4:{}", 1000 + i)).unwrap();
        match actions(&mut e).as_slice() {
            [Action::Connect { addr, .. }] => counts[(addr.port() - 1) as usize] += 1,
            other => panic!("unexpected {other:?}"),
        }
        e.handle_reset(at(0), id, Side::Client);
        let _ = actions(&mut e);
    }
    assert_eq!(counts, [10, 30]);
}

#[test]
fn splice_is_granted_once_nothing_waits_in_engine_buffers() {
    let config = EngineConfig { driver_can_splice: true, ..EngineConfig::default() };
    let mut e = engine(two_nodes(), config);
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    let bulk = vec![7u8; 40_000];
    read(&mut e, at(0), id, Side::Client, &bulk);
    e.handle_connected(at(1), id, Ok(()));
    assert!(actions(&mut e).is_empty(), "early bytes go through the engine first");
    assert_eq!(write_all(&mut e, at(1), id, Side::Upstream), bulk);
    assert_eq!(actions(&mut e), [Action::Splice { conn: id }], "a bulk read, drained: the driver takes over");
    assert_eq!(e.buffers_in_use(), 0, "a spliced connection holds no engine buffer");
    assert!(e.read_buf(id, Side::Client).is_none(), "the driver moves the bytes now");
    e.handle_spliced(at(20), id, Side::Upstream, 1000);
    e.handle_timeout(at(31));
    assert!(actions(&mut e).is_empty(), "spliced bytes count as activity");
    e.handle_read(at(32), id, Side::Client, 0);
    assert_eq!(actions(&mut e), [Action::Shutdown { conn: id, side: Side::Upstream }]);
    e.handle_read(at(33), id, Side::Upstream, 0);
    assert_eq!(
        actions(&mut e),
        [Action::Shutdown { conn: id, side: Side::Client }, Action::Close { conn: id, reset: false }]
    );
}

#[test]
fn small_request_response_traffic_is_never_spliced() {
    let config = EngineConfig { driver_can_splice: true, ..EngineConfig::default() };
    let mut e = engine(two_nodes(), config);
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(1), id, Ok(()));
    for _ in 0..100 {
        read(&mut e, at(1), id, Side::Client, b"PING\r\n");
        let _ = write_all(&mut e, at(1), id, Side::Upstream);
        read(&mut e, at(1), id, Side::Upstream, b"+PONG\r\n");
        let _ = write_all(&mut e, at(1), id, Side::Client);
    }
    assert!(actions(&mut e).is_empty(), "read/write costs less than a pipe for small messages");
}

#[test]
fn no_splice_unless_the_driver_offers_it() {
    let mut e = engine(two_nodes(), EngineConfig::default());
    let id = accept(&mut e, at(0), "1.2.3.4:5").unwrap();
    let _ = actions(&mut e);
    e.handle_connected(at(1), id, Ok(()));
    assert!(actions(&mut e).is_empty());
}
