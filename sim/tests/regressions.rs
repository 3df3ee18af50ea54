//! Every bug the simulator or the property tests found, kept as the input (or
//! seed) that found it. See FOUND.md for the story of each.

use serde_json::json;
use strait_engine::model::Upstream;

/// FOUND.md #1: `Duration::from_secs_f64` panicked on a timeout too large for a
/// Duration, so one Admin API write could crash the process.
#[test]
fn huge_timeouts_are_rejected_not_a_panic() {
    for value in [
        json!({"nodes": {}, "timeout": {"connect": 1e20, "send": 1, "read": 1}}),
        json!({"nodes": {"10.0.0.1:80": 1}, "timeout": {"connect": 1, "send": 1e300, "read": 1}}),
        json!({"nodes": {"10.0.0.1:80": 1}, "retry_timeout": 1e20}),
    ] {
        let error = Upstream::from_json(&value).expect_err("a timeout past Duration's range is invalid");
        assert!(error.contains("at most"), "{error}");
    }
}

/// FOUND.md #2: a positive timeout below a nanosecond became a zero Duration.
#[test]
fn sub_nanosecond_timeouts_are_rejected() {
    let value = json!({"nodes": {"10.0.0.1:80": 1}, "timeout": {"connect": 1, "send": 1, "read": 4.2e-309}});
    let error = Upstream::from_json(&value).expect_err("a timeout that rounds to zero is invalid");
    assert!(error.contains("one nanosecond"), "{error}");
}

/// FOUND.md #3: the prober kept its targets in a `HashMap` and added them in
/// its iteration order, so probe ids and the order of `Probe` actions changed
/// from run to run (std's hasher is randomly seeded per map): one seed, two
/// traces. Found by `the_same_seed_gives_the_same_trace` (seed 1234).
#[test]
fn probes_follow_the_config_not_a_hash_seed() {
    use std::sync::Arc;
    use strait_engine::config::{ListenSpec, Protocol};
    use strait_engine::{Action, Engine, EngineConfig, Resources, Snapshot, Time};

    let nodes: serde_json::Map<String, serde_json::Value> =
        (1..=8).map(|i| (format!("10.9.0.{i}:80"), json!(1))).collect();
    let resources = Resources {
        upstreams: vec![("1".into(), json!({"nodes": nodes, "checks": {"active": {"timeout": 1}}}))],
        ..Resources::default()
    };
    let listener = ListenSpec {
        protocol: Protocol::Tcp,
        addr: "0.0.0.0:9100".parse().unwrap(),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    let probes = || {
        let snapshot = Snapshot::build(1, &resources, &mut |_| Vec::new()).0;
        let mut engine = Engine::new(vec![listener.clone()], Arc::new(snapshot), EngineConfig::default());
        engine.handle_timeout(Time::ZERO);
        let mut order = Vec::new();
        while let Some(action) = engine.poll_action() {
            if let Action::Probe { probe, addr } = action {
                order.push((probe.index, addr));
            }
        }
        order
    };
    let first = probes();
    assert_eq!(first.len(), 8);
    // Each engine's maps get a fresh random hash seed: eight targets in the
    // same order ten times over is no accident.
    for _ in 0..10 {
        assert_eq!(probes(), first, "the same config gives the same probes in the same order");
    }
}
