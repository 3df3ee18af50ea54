//! Oracles the run is checked against, computed without the engine's help:
//! which route and upstream a connection must get (the reference matcher plus
//! the stored config) and what smooth weighted round robin must pick.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use strait_engine::model::{StreamRoute, Upstream};
use strait_engine::Resources;

/// The upstream a route must send its connections to, read from the stored
/// config directly rather than from the snapshot's compiled targets.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedUpstream {
    /// The engine's balancer key for it.
    pub key: String,
    pub addrs: Vec<SocketAddr>,
    pub weights: Vec<u32>,
    pub priorities: Vec<i32>,
    pub max_tries: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub retry_timeout: Duration,
}

/// `None` when the route matches but cannot be served (missing or invalid
/// upstream, no nodes): the engine must refuse with `NoUpstream`.
pub fn expected_upstream(resources: &Resources, route: &StreamRoute) -> Option<ExpectedUpstream> {
    let (key, config) = if let Some(id) = &route.upstream_id {
        let (_, value) = resources.upstreams.iter().find(|(k, _)| k == id)?;
        (format!("/apisix/upstreams/{id}"), Upstream::from_json(value).ok()?)
    } else {
        (format!("/apisix/stream_routes/{}", route.id), route.upstream.clone()?)
    };
    let mut e = ExpectedUpstream {
        key,
        addrs: Vec::new(),
        weights: Vec::new(),
        priorities: Vec::new(),
        max_tries: config.max_tries(),
        connect_timeout: config.connect_timeout(),
        idle_timeout: config.idle_timeout(),
        retry_timeout: config.retry_timeout,
    };
    for node in &config.nodes {
        let ip: IpAddr = node.bare_host().parse().ok()?;
        e.addrs.push(SocketAddr::new(ip, node.port));
        e.weights.push(node.weight);
        e.priorities.push(node.priority);
    }
    (!e.addrs.is_empty()).then_some(e)
}

/// Mirrors the engine's per-upstream balancer state just closely enough to
/// know when its smooth weighted round robin starts from zero, and checks
/// that from there every window of one cycle (the sum of the weights) picks
/// each node exactly its weight's number of times.
#[derive(Default)]
pub struct WrrCheck {
    by_key: BTreeMap<String, Track>,
    /// Windows checked (to prove the check is not vacuous).
    pub windows_checked: u64,
}

struct Track {
    addrs: Vec<SocketAddr>,
    weights: Vec<u32>,
    priorities: Vec<i32>,
    /// Picks since the state was fresh; `None` once a retry (a pick with
    /// nodes excluded) moved the state off the clean cycle.
    picks: Option<Vec<usize>>,
}

impl WrrCheck {
    /// A new snapshot drops the state of upstreams no route uses any more.
    pub fn retain_keys(&mut self, keys: &[String]) {
        self.by_key.retain(|k, _| keys.binary_search(k).is_ok());
    }

    /// The engine picked node `index` of `up`; `retry` = nodes were excluded.
    pub fn pick(&mut self, up: &ExpectedUpstream, index: usize, retry: bool) {
        let track = self.by_key.entry(up.key.clone()).or_insert_with(|| Track {
            addrs: up.addrs.clone(),
            weights: up.weights.clone(),
            priorities: up.priorities.clone(),
            picks: Some(Vec::new()),
        });
        if track.addrs != up.addrs || track.weights != up.weights {
            // The engine starts a fresh rotation when the nodes change.
            *track = Track {
                addrs: up.addrs.clone(),
                weights: up.weights.clone(),
                priorities: up.priorities.clone(),
                picks: Some(Vec::new()),
            };
        }
        if track.priorities != up.priorities {
            // The engine keeps its state (same nodes and weights) but the
            // eligible group changed: the old partial cycle no longer sums up.
            track.priorities = up.priorities.clone();
            track.picks = None;
        }
        if retry {
            track.picks = None;
            return;
        }
        let Some(picks) = track.picks.as_mut() else {
            return;
        };
        picks.push(index);
        // Fresh picks only consider the highest priority group.
        let top = *up.priorities.iter().max().expect("an upstream has nodes");
        let eligible: Vec<usize> = (0..up.addrs.len()).filter(|&i| up.priorities[i] == top).collect();
        assert!(
            eligible.contains(&index),
            "a fresh connection goes to the highest priority group ({}: node {index})",
            up.key
        );
        let all_zero = eligible.iter().all(|&i| up.weights[i] == 0);
        let weight = |i: usize| {
            if !eligible.contains(&i) {
                0
            } else if all_zero {
                1
            } else {
                up.weights[i] as usize
            }
        };
        let cycle: usize = (0..up.addrs.len()).map(weight).sum();
        if picks.len() >= cycle {
            let window = &picks[picks.len() - cycle..];
            for i in 0..up.addrs.len() {
                let got = window.iter().filter(|&&p| p == i).count();
                assert_eq!(
                    got,
                    weight(i),
                    "weighted round robin is exact over a cycle: {} node {i} picked {got} times in the last {cycle} picks {:?}, weights {:?}",
                    up.key, window, up.weights
                );
            }
            self.windows_checked += 1;
            if picks.len() > 4 * cycle {
                picks.drain(..picks.len() - cycle);
            }
        }
    }
}
