//! Balancers, priorities, health and retries through the engine, with an
//! explicit clock.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{Action, ConnId, ConnectError, Engine, EngineConfig, ListenerId, Resources, Side, Snapshot, Time};

fn engine(routes: serde_json::Value) -> Engine {
    let resources = Resources {
        stream_routes: routes.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    };
    let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| vec![]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let listener = ListenSpec {
        protocol: Protocol::Tcp,
        addr: "127.0.0.1:9100".parse().unwrap(),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    Engine::new(vec![listener], Arc::new(snapshot), EngineConfig::default())
}

fn at_ms(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

/// Accepts a connection from `peer` and returns its id and the node it is sent to.
fn connect(e: &mut Engine, now: Time, peer: &str) -> (ConnId, u16) {
    let id = e.handle_accept(now, ListenerId(0), "127.0.0.1:9100".parse().unwrap(), peer.parse().unwrap()).unwrap();
    let port = connect_port(e, id);
    (id, port)
}

fn connect_port(e: &mut Engine, id: ConnId) -> u16 {
    let mut port = None;
    while let Some(action) = e.poll_action() {
        if let Action::Connect { conn, addr } = action {
            assert_eq!(conn, id);
            port = Some(addr.port());
        }
    }
    port.expect("a connect was asked for")
}

fn finish(e: &mut Engine, now: Time, id: ConnId) {
    e.handle_reset(now, id, Side::Client);
    while e.poll_action().is_some() {}
}

#[test]
fn the_highest_priority_group_is_used_until_it_has_no_untried_node() {
    let mut e = engine(json!({"1": {"upstream": {"nodes": [
        {"host": "10.0.0.1", "port": 1, "weight": 1, "priority": -1},
        {"host": "10.0.0.2", "port": 2, "weight": 1, "priority": 5},
        {"host": "10.0.0.3", "port": 3, "weight": 1, "priority": 5}
    ]}}}));
    let (id, first) = connect(&mut e, at_ms(0), "1.1.1.1:1");
    assert!(first == 2 || first == 3);
    e.handle_connected(at_ms(0), id, Err(ConnectError::Refused));
    let second = connect_port(&mut e, id);
    assert_eq!(second, 5 - first, "the other node of the top group before the backup");
    e.handle_connected(at_ms(0), id, Err(ConnectError::Refused));
    assert_eq!(connect_port(&mut e, id), 1, "the backup group last");
}

#[test]
fn chash_sends_a_client_to_the_same_node_as_apisix() {
    let mut e = engine(json!({"1": {"upstream": {
        "type": "chash", "key": "remote_addr",
        "nodes": {"0.0.0.0:1995": 1, "127.0.0.1:1995": 1}
    }}}));
    // APISIX's test vector: key "127.0.0.1" -> 127.0.0.1:1995 (node index 1).
    for port in [1000, 2000, 3000] {
        let id = e
            .handle_accept(
                at_ms(0),
                ListenerId(0),
                "127.0.0.1:9100".parse().unwrap(),
                format!("127.0.0.1:{port}").parse().unwrap(),
            )
            .unwrap();
        let mut addr = None;
        while let Some(action) = e.poll_action() {
            if let Action::Connect { addr: a, .. } = action {
                addr = Some(a);
            }
        }
        assert_eq!(addr.unwrap(), "127.0.0.1:1995".parse().unwrap());
        finish(&mut e, at_ms(0), id);
    }
}

#[test]
fn least_conn_with_weights_three_to_one_and_held_connections() {
    let mut e = engine(json!({"1": {"upstream": {"type": "least_conn", "nodes": {"10.0.0.1:1": 3, "10.0.0.2:2": 1}}}}));
    let mut counts = [0; 2];
    let mut held = Vec::new();
    for i in 0..8 {
        let (id, port) = connect(&mut e, at_ms(0), &format!("1.1.1.1:{}", 100 + i));
        counts[port as usize - 1] += 1;
        held.push(id);
    }
    assert_eq!(counts, [6, 2]);
    for id in held {
        finish(&mut e, at_ms(0), id);
    }
    let (_, port) = connect(&mut e, at_ms(0), "1.1.1.1:999");
    assert_eq!(port, 1, "closed connections no longer count");
}

#[test]
fn ewma_prefers_the_node_that_connects_faster() {
    let mut e = engine(json!({"1": {"upstream": {"type": "ewma", "nodes": {"10.0.0.1:1": 1, "10.0.0.2:2": 1}}}}));
    // Teach it: node 1 connects in 100 ms, node 2 in 1 ms.
    for i in 0..6 {
        let (id, port) = connect(&mut e, at_ms(i * 1000), &format!("1.1.1.1:{}", 100 + i));
        let took = if port == 1 { 100 } else { 1 };
        e.handle_connected(at_ms(i * 1000 + took), id, Ok(()));
        finish(&mut e, at_ms(i * 1000 + took), id);
    }
    let to_fast = (0..20)
        .filter(|i| {
            let (id, port) = connect(&mut e, at_ms(10_000), &format!("1.1.1.1:{}", 200 + i));
            finish(&mut e, at_ms(10_000), id);
            port == 2
        })
        .count();
    assert_eq!(to_fast, 20, "with two nodes, power of two choices always compares both");
}

fn checked_upstream(extra: serde_json::Value) -> serde_json::Value {
    let mut checks = json!({"active": {"type": "tcp", "timeout": 1, "healthy": {"interval": 1, "successes": 2}, "unhealthy": {"interval": 1, "tcp_failures": 2, "timeouts": 3}}});
    if let Some(passive) = extra.get("passive") {
        checks["passive"] = passive.clone();
    }
    json!({"1": {"upstream": {"nodes": {"10.0.0.1:1": 1, "10.0.0.2:2": 1}, "checks": checks}}})
}

/// Answers every probe due at `now`: node 1 per `node1_up`, node 2 always up.
fn answer_probes(e: &mut Engine, now: Time, node1_up: bool) -> usize {
    e.handle_timeout(now);
    let mut probes = Vec::new();
    while let Some(action) = e.poll_action() {
        if let Action::Probe { probe, addr } = action {
            probes.push((probe, addr));
        }
    }
    for (probe, addr) in &probes {
        let up = addr.port() == 2 || node1_up;
        e.handle_probe_result(now, *probe, if up { Ok(()) } else { Err(ConnectError::Refused) });
    }
    probes.len()
}

#[test]
fn active_checks_eject_a_dead_node_and_bring_it_back() {
    let mut e = engine(checked_upstream(json!({})));
    assert_eq!(answer_probes(&mut e, at_ms(0), false), 2, "both nodes are probed at once");
    assert_eq!(answer_probes(&mut e, at_ms(1000), false), 2, "then every interval");
    // Two consecutive failures: node 1 is out.
    assert!((0..6).all(|i| connect(&mut e, at_ms(1000), &format!("1.1.1.1:{}", 100 + i)).1 == 2));
    answer_probes(&mut e, at_ms(2000), true);
    answer_probes(&mut e, at_ms(3000), true);
    let ports: Vec<u16> = (0..4).map(|i| connect(&mut e, at_ms(3000), &format!("1.1.1.1:{}", 200 + i)).1).collect();
    assert!(ports.contains(&1), "two successes bring node 1 back: {ports:?}");
}

#[test]
fn a_probe_that_never_answers_counts_as_a_timeout() {
    let mut e = engine(checked_upstream(json!({})));
    for second in 0..3 {
        // Start probes, answer none; the 1 s probe timeout fires at the next second.
        e.handle_timeout(at_ms(second * 2000));
        let mut started = 0;
        let mut cancelled = 0;
        while let Some(action) = e.poll_action() {
            match action {
                Action::Probe { .. } => started += 1,
                Action::ProbeCancel { .. } => cancelled += 1,
                _ => {}
            }
        }
        assert!(started == 2 || cancelled == 2, "probes start or time out");
        e.handle_timeout(at_ms(second * 2000 + 1000));
        while e.poll_action().is_some() {}
    }
    // Three timeouts on both nodes: all unhealthy, so all are used (as APISIX).
    let (_, port) = connect(&mut e, at_ms(7000), "1.1.1.1:1");
    assert!(port == 1 || port == 2);
}

#[test]
fn passive_failures_eject_and_passive_successes_restore() {
    let mut e =
        engine(checked_upstream(json!({"passive": {"healthy": {"successes": 1}, "unhealthy": {"tcp_failures": 1}}})));
    // Node 1 refuses one real connection: ejected at once (tcp_failures 1).
    let (id, port) = connect(&mut e, at_ms(0), "1.1.1.1:1");
    assert_eq!(port, 1);
    e.handle_connected(at_ms(0), id, Err(ConnectError::Refused));
    assert_eq!(connect_port(&mut e, id), 2, "the retry goes to node 2");
    e.handle_connected(at_ms(0), id, Ok(()));
    assert!((0..4).all(|i| connect(&mut e, at_ms(0), &format!("1.1.1.1:{}", 10 + i)).1 == 2));
}

#[test]
fn a_client_reset_is_not_the_upstreams_fault() {
    let mut e = engine(checked_upstream(json!({"passive": {"unhealthy": {"tcp_failures": 1}}})));
    for i in 0..4 {
        let (id, _) = connect(&mut e, at_ms(0), &format!("1.1.1.1:{}", 10 + i));
        e.handle_connected(at_ms(0), id, Ok(()));
        finish(&mut e, at_ms(0), id);
    }
    let ports: Vec<u16> = (0..2).map(|i| connect(&mut e, at_ms(0), &format!("1.1.1.1:{}", 50 + i)).1).collect();
    assert!(ports.contains(&1) && ports.contains(&2), "both nodes still healthy: {ports:?}");
}
