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
