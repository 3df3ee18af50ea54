//! Balancer properties: smooth weighted round robin is exact over every cycle,
//! alone and through the engine's accept path.

use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use strait_engine::balancer::SmoothWeighted;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{Action, Engine, EngineConfig, ListenerId, Resources, Snapshot, Time};

proptest! {
    #[test]
    fn round_robin_is_exact_over_every_cycle(weights in prop::collection::vec(0u32..8, 1..6), cycles in 1usize..4) {
        let all_zero = weights.iter().all(|&w| w == 0);
        let effective: Vec<usize> = weights.iter().map(|&w| if all_zero { 1 } else { w as usize }).collect();
        let cycle: usize = effective.iter().sum();
        let mut rr = SmoothWeighted::new(weights.len());
        let picks: Vec<usize> = (0..cycle * cycles).map(|_| rr.pick(&weights, |_| true).unwrap()).collect();
        // Every window of one cycle, not just the aligned ones: the sequence is periodic.
        for window in picks.windows(cycle) {
            for (i, &w) in effective.iter().enumerate() {
                prop_assert_eq!(window.iter().filter(|&&p| p == i).count(), w, "node {} in {:?}", i, window);
            }
        }
    }
}

fn engine_with_weights(weights: &[u32]) -> (Engine, Vec<SocketAddr>) {
    let addrs: Vec<SocketAddr> = (0..weights.len()).map(|i| format!("10.9.0.{}:80", i + 1).parse().unwrap()).collect();
    let nodes: Vec<_> =
        addrs.iter().zip(weights).map(|(a, w)| json!({"host": a.ip().to_string(), "port": 80, "weight": w})).collect();
    let resources =
        Resources { stream_routes: vec![("1".into(), json!({"upstream": {"nodes": nodes}}))], ..Resources::default() };
    let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| Vec::new());
    assert!(warnings.is_empty(), "{warnings:?}");
    let listener = ListenSpec {
        protocol: Protocol::Tcp,
        addr: "0.0.0.0:9100".parse().unwrap(),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    (Engine::new(vec![listener], Arc::new(snapshot), EngineConfig::default()), addrs)
}

/// Opens `n` fresh connections and counts where each one's first connect goes.
fn first_picks(engine: &mut Engine, n: usize) -> BTreeMap<SocketAddr, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let peer: SocketAddr = format!("10.1.0.1:{}", 1024 + i).parse().unwrap();
        engine
            .handle_accept(Time::from_nanos(i as u64), ListenerId(0), "127.0.0.1:9100".parse().unwrap(), peer)
            .expect("the route accepts everyone");
        while let Some(action) = engine.poll_action() {
            if let Action::Connect { addr, .. } = action {
                *counts.entry(addr).or_default() += 1;
            }
        }
    }
    counts
}

#[test]
fn weights_one_and_three_split_forty_connections_ten_and_thirty() {
    let (mut engine, addrs) = engine_with_weights(&[1, 3]);
    let counts = first_picks(&mut engine, 40);
    assert_eq!(counts[&addrs[0]], 10);
    assert_eq!(counts[&addrs[1]], 30);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_spreads_fresh_connections_by_weight(weights in prop::collection::vec(1u32..6, 1..5), cycles in 1usize..3) {
        let (mut engine, addrs) = engine_with_weights(&weights);
        let cycle: u32 = weights.iter().sum();
        let counts = first_picks(&mut engine, cycle as usize * cycles);
        for (addr, w) in addrs.iter().zip(&weights) {
            prop_assert_eq!(counts.get(addr).copied().unwrap_or(0), *w as usize * cycles);
        }
    }
}

// ---- consistent hashing ----------------------------------------------------

use strait_engine::balancer::{Balancers, HashRing, KeySource};
use strait_engine::health::{HealthEvent, Thresholds};
use strait_engine::snapshot::ResolvedUpstream;

/// CRC-32/IEEE bit by bit: independent of the crc32fast the engine uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// lua-resty-balancer's chash as APISIX uses it, written out from its source
/// for this test: weights over their gcd, 160 points per unit, `:` -> NUL in
/// the id, each point the crc32 of the id and the previous point (LE), the
/// first point >= crc32(key), wrapping.
fn apisix_chash(nodes: &[(String, u32)], key: &str) -> Option<usize> {
    let g = nodes.iter().map(|n| n.1).filter(|&w| w > 0).fold(0, gcd);
    let mut points: Vec<(u32, usize)> = Vec::new();
    for (index, (id, weight)) in nodes.iter().enumerate() {
        if *weight == 0 {
            continue;
        }
        let id: Vec<u8> = id.bytes().map(|b| if b == b':' { 0 } else { b }).collect();
        let mut previous = 0u32;
        for _ in 0..160 * (weight / g) {
            let mut input = id.clone();
            input.extend_from_slice(&previous.to_le_bytes());
            previous = crc32(&input);
            points.push((previous, index));
        }
    }
    // Stable by hash: equal points keep node order, as the engine's sort does.
    points.sort_by_key(|p| p.0);
    let hash = crc32(key.as_bytes());
    points.iter().find(|(h, _)| *h >= hash).or(points.first()).map(|p| p.1)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn node_ids(n: usize, salt: u8) -> Vec<String> {
    (0..n).map(|i| format!("10.{salt}.{}.{}:{}", i / 200, i % 200 + 1, 1000 + i)).collect()
}

#[test]
fn chash_apisix_vectors() {
    // From lua-resty-balancer's and APISIX's chash tests (spec §4.3.5).
    let ring = HashRing::new(&["0.0.0.0:1995".into(), "127.0.0.1:1995".into()], &[1, 1]);
    assert_eq!(ring.find(b"f", |_| false), Some(0), "f -> 0.0.0.0:1995");
    assert_eq!(ring.find(b"g", |_| false), Some(1), "g -> 127.0.0.1:1995");
    assert_eq!(ring.find(b"127.0.0.1", |_| false), Some(1), "127.0.0.1 -> 127.0.0.1:1995");
    let nodes = [("0.0.0.0:1995".to_string(), 1), ("127.0.0.1:1995".to_string(), 1)];
    assert_eq!(apisix_chash(&nodes, "f"), Some(0), "the written-out ring agrees on the vectors");
    assert_eq!(apisix_chash(&nodes, "g"), Some(1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The engine's ring is the APISIX ring, key for key.
    #[test]
    fn chash_agrees_with_the_apisix_ring(
        weights in prop::collection::vec(0u32..5, 1..6),
        salt in 0u8..255,
        keys in prop::collection::vec("[0-9a-f.:]{1,20}", 1..40),
    ) {
        let ids = node_ids(weights.len(), salt);
        let ring = HashRing::new(&ids, &weights);
        let nodes: Vec<(String, u32)> = ids.iter().cloned().zip(weights.iter().copied()).collect();
        for key in &keys {
            prop_assert_eq!(ring.find(key.as_bytes(), |_| false), apisix_chash(&nodes, key), "key {}", key);
        }
    }

    /// Adding a node moves about 1/n of the keys, and only onto the new node.
    #[test]
    fn chash_moves_about_one_nth_of_the_keys_when_a_node_is_added(
        n in 1usize..12,
        unit in 1u32..3,
        factors in prop::collection::vec(1u32..4, 12),
        new_factor in 1u32..4,
        salt in 0u8..255,
    ) {
        // The new weight is a multiple of the old weights' gcd, so the gcd, and
        // with it every old node's points, stays put (a new gcd rescales the
        // whole ring: APISIX does the same).
        let weights: Vec<u32> = factors[..n].iter().map(|f| f * unit).collect();
        let g = weights.iter().fold(0, |a, &b| gcd(a, b));
        let ids = node_ids(n + 1, salt);
        let before = HashRing::new(&ids[..n], &weights);
        let mut grown = weights.clone();
        grown.push(new_factor * g);
        let after = HashRing::new(&ids, &grown);
        let keys = 2000;
        let mut moved = 0;
        for k in 0..keys {
            let key = format!("192.168.{}.{}", k / 250, k % 250);
            let (old, new) = (before.find(key.as_bytes(), |_| false), after.find(key.as_bytes(), |_| false));
            if old != new {
                prop_assert_eq!(new, Some(n), "a key moves only onto the new node ({})", key);
                moved += 1;
            }
        }
        let share = f64::from(new_factor * g) / f64::from(grown.iter().sum::<u32>());
        let bound = (2.0 * share * keys as f64) as usize + 60;
        prop_assert!(moved <= bound, "{} of {} keys moved, expected about {:.0} (bound {})", moved, keys, share * keys as f64, bound);
    }
}

// ---- least_conn and priority groups through the engine's balancer ----------

fn upstream_of(json_upstream: serde_json::Value) -> Arc<ResolvedUpstream> {
    let resources = Resources { upstreams: vec![("1".into(), json_upstream)], ..Resources::default() };
    let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| Vec::new());
    assert!(warnings.is_empty(), "{warnings:?}");
    snapshot.upstreams()[0].clone()
}

fn key_source(i: usize) -> KeySource {
    KeySource {
        local: "10.0.0.1:9100".parse().unwrap(),
        peer: format!("192.168.{}.{}:{}", i / 250, i % 250, 1024 + i).parse().unwrap(),
    }
}

const EJECT: Thresholds = Thresholds { successes: 1, tcp_failures: 1, timeouts: 1 };

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// least_conn picks a node whose (1 + in flight) / weight is lowest: never
    /// one with a strictly worse score than another eligible node.
    #[test]
    fn least_conn_never_picks_a_strictly_worse_score(
        weights in prop::collection::vec(0u32..5, 1..6),
        ops in prop::collection::vec((any::<bool>(), 0usize..64), 1..80),
    ) {
        let nodes: Vec<_> = weights.iter().enumerate()
            .map(|(i, w)| json!({"host": format!("10.9.0.{}", i + 1), "port": 80, "weight": w}))
            .collect();
        let up = upstream_of(json!({"type": "least_conn", "nodes": nodes}));
        let mut balancers = Balancers::default();
        let mut rng = strait_engine::rng::Rng::new(1);
        let mut held = Vec::new();
        for (i, (pick, which)) in ops.into_iter().enumerate() {
            if !pick && !held.is_empty() {
                held.remove(which % held.len()); // a connection ends
                continue;
            }
            let load: Vec<u64> = up.in_flight.iter().map(|c| u64::from(c.load(std::sync::atomic::Ordering::Relaxed))).collect();
            let Some(chosen) = balancers.pick(&up, &[], key_source(i), &mut rng) else {
                prop_assert!(false, "least_conn always finds a node");
                unreachable!()
            };
            let all_zero = weights.iter().all(|&w| w == 0);
            let weight = |n: usize| if all_zero { 1 } else { u64::from(weights[n]) };
            prop_assert!(weight(chosen.node) > 0, "a weight-0 node only when every weight is 0");
            for other in (0..weights.len()).filter(|&n| weight(n) > 0) {
                // score(chosen) <= score(other), without division.
                prop_assert!(
                    (1 + load[chosen.node]) * weight(other) <= (1 + load[other]) * weight(chosen.node),
                    "node {} (load {}, weight {}) picked over node {} (load {}, weight {})",
                    chosen.node, load[chosen.node], weight(chosen.node), other, load[other], weight(other)
                );
            }
            held.push(chosen);
        }
    }

    /// Priority groups: a pick comes from the highest group that has an
    /// untried usable node (healthy, unless no untried node is); a lower group
    /// only when the higher one has none. For every algorithm.
    #[test]
    fn a_lower_priority_group_only_when_the_higher_has_no_untried_usable_node(
        algorithm in 0usize..4,
        nodes in prop::collection::vec((1u32..4, -1i32..2, any::<bool>()), 1..7),
        tried_mask in any::<u8>(),
        client in 0usize..1000,
    ) {
        let types = ["roundrobin", "chash", "least_conn", "ewma"];
        let list: Vec<_> = nodes.iter().enumerate()
            .map(|(i, (w, p, _))| json!({"host": format!("10.9.0.{}", i + 1), "port": 80, "weight": w, "priority": p}))
            .collect();
        let up = upstream_of(
            json!({"type": types[algorithm], "key": "remote_addr", "nodes": list, "checks": {"active": {}}}),
        );
        for (i, (_, _, healthy)) in nodes.iter().enumerate() {
            if !healthy {
                up.health[i].report(HealthEvent::TcpFailure, EJECT);
                prop_assert!(!up.health[i].is_healthy());
            }
        }
        let tried: Vec<usize> = (0..nodes.len()).filter(|i| tried_mask & (1 << i) != 0).collect();
        let untried: Vec<usize> = (0..nodes.len()).filter(|i| !tried.contains(i)).collect();
        let any_healthy = untried.iter().any(|&i| nodes[i].2);
        let usable: Vec<usize> = untried.iter().copied().filter(|&i| !any_healthy || nodes[i].2).collect();
        let mut balancers = Balancers::default();
        let mut rng = strait_engine::rng::Rng::new(client as u64);
        let pick = balancers.pick(&up, &tried, key_source(client), &mut rng).map(|p| p.node);
        match usable.iter().map(|&i| nodes[i].1).max() {
            None => prop_assert_eq!(pick, None, "nothing untried, nothing picked"),
            Some(top) => {
                let node = pick.expect("an untried usable node is picked");
                prop_assert!(usable.contains(&node), "node {} is untried and usable {:?}", node, usable);
                prop_assert_eq!(nodes[node].1, top, "node {} is of the highest group with a usable node", node);
            }
        }
    }
}
