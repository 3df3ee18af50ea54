//! Oracles the run is checked against, computed without the engine's help:
//! which route and upstream a connection must get (the reference matcher plus
//! the stored config) and what smooth weighted round robin must pick.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use strait_engine::model::{BalancerType, StreamRoute, Upstream};
use strait_engine::snapshot::ResolvedUpstream;
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
    pub balancer: BalancerType,
    pub has_checks: bool,
    /// The upstream's own `timeout` sets a UDP session's idle timeout.
    pub udp_idle_timeout: Option<Duration>,
    pub proxy_responses: Option<u32>,
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
        balancer: config.balancer,
        has_checks: config.checks.is_some(),
        udp_idle_timeout: config.timeout.as_ref().map(|_| config.idle_timeout()),
        proxy_responses: config.proxy_responses,
    };
    for node in &config.nodes {
        let ip: IpAddr = node.bare_host().parse().ok()?;
        e.addrs.push(SocketAddr::new(ip, node.port));
        e.weights.push(node.weight);
        e.priorities.push(node.priority);
    }
    (!e.addrs.is_empty()).then_some(e)
}

/// Node `i`'s health as the control plane sees it (a node without checks is healthy).
pub fn node_healthy(upstream: &ResolvedUpstream, i: usize) -> bool {
    upstream.health.get(i).is_none_or(|h| h.is_healthy())
}

/// The nodes a balancer may pick for a connection that has tried `tried`,
/// given each node's health: untried nodes; of those only the healthy ones
/// unless none is; of those only the highest priority group. (Which of them
/// the algorithm picks is its own business.)
pub fn allowed_picks(priorities: &[i32], tried: &[usize], healthy: impl Fn(usize) -> bool) -> Vec<usize> {
    let untried: Vec<usize> = (0..priorities.len()).filter(|i| !tried.contains(i)).collect();
    let any_healthy = untried.iter().any(|&i| healthy(i));
    let usable: Vec<usize> = untried.into_iter().filter(|&i| !any_healthy || healthy(i)).collect();
    let Some(top) = usable.iter().map(|&i| priorities[i]).max() else {
        return Vec::new();
    };
    usable.into_iter().filter(|&i| priorities[i] == top).collect()
}

/// Whether the engine may find no node to pick although `allowed` is not
/// empty: chash puts weight-0 nodes on no ring point, so a group made only of
/// them has nothing to hash to (FOUND.md, "noticed").
pub fn may_find_none(up: &ExpectedUpstream, allowed: &[usize]) -> bool {
    allowed.is_empty() || (up.balancer == BalancerType::Chash && allowed.iter().all(|&i| up.weights[i] == 0))
}

/// Remembers each node's health as of the end of the previous engine call,
/// so a pick can be judged by the state before or after the call that made
/// it (a probe timing out in the same `handle_timeout` may flip a node just
/// after a retry picked it).
#[derive(Default)]
pub struct HealthSeen {
    seen: Vec<(std::sync::Weak<strait_engine::health::NodeHealth>, bool)>,
}

impl HealthSeen {
    /// The health recorded for `node`'s i-th node (healthy when never seen).
    pub fn before(&self, upstream: &ResolvedUpstream, i: usize) -> bool {
        let Some(node) = upstream.health.get(i) else {
            return true;
        };
        let ptr = std::sync::Arc::as_ptr(node);
        self.seen.iter().find(|(w, _)| w.as_ptr() == ptr).is_none_or(|&(_, healthy)| healthy)
    }

    /// Records the health of every node of `upstreams` now.
    pub fn record<'a>(&mut self, upstreams: impl Iterator<Item = &'a std::sync::Arc<ResolvedUpstream>>) {
        self.seen.retain(|(w, _)| w.strong_count() > 0);
        for up in upstreams {
            for node in &up.health {
                let ptr = std::sync::Arc::as_ptr(node);
                let healthy = node.is_healthy();
                match self.seen.iter_mut().find(|(w, _)| w.as_ptr() == ptr) {
                    Some(slot) => slot.1 = healthy,
                    None => self.seen.push((std::sync::Arc::downgrade(node), healthy)),
                }
            }
        }
    }
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
        if retry || up.balancer != BalancerType::RoundRobin || up.has_checks {
            // Off the clean cycle: a retry excluded nodes, another algorithm
            // picks, or health may have excluded nodes (allowed_picks judges those).
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
