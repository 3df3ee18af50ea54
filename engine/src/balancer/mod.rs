//! Picking an upstream node for a connection or a UDP session.
//!
//! Order of decisions (spec §4.3.3): nodes already tried in this connection
//! are out; unhealthy nodes are out unless every remaining node is unhealthy
//! (then all are used, as APISIX does); of what remains, only the highest
//! priority group is considered; the upstream's algorithm picks within it.
//!
//! Per-worker state (round-robin weights, EWMA averages) is kept per upstream
//! key and survives a config change when the nodes did not change. least_conn
//! counts and health are process-wide (see `least_conn.rs`, `crate::health`).

mod chash;
mod ewma;
mod least_conn;
mod roundrobin;

pub use chash::{HashRing, KeySource};
pub use ewma::Ewma;
pub use least_conn::{InFlight, LoadBoard};
pub use roundrobin::SmoothWeighted;

use crate::model::BalancerType;
use crate::rng::Rng;
use crate::snapshot::ResolvedUpstream;
use crate::time::Time;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct Balancers {
    by_key: HashMap<String, Entry>,
}

struct Entry {
    upstream: Arc<ResolvedUpstream>,
    roundrobin: SmoothWeighted,
    ewma: Ewma,
}

/// A chosen node, with its least_conn count held while the connection uses it.
#[derive(Debug)]
pub struct Pick {
    pub node: usize,
    pub in_flight: Option<InFlight>,
}

impl Balancers {
    /// Picks a node of `upstream` not in `tried`. `None` when no node is left.
    pub fn pick(
        &mut self,
        upstream: &Arc<ResolvedUpstream>,
        tried: &[usize],
        key: KeySource,
        rng: &mut Rng,
    ) -> Option<Pick> {
        let nodes = upstream.addrs.len();
        let untried = |i: &usize| !tried.contains(i);
        let healthy = |i: &usize| upstream.health.get(*i).is_none_or(|h| h.is_healthy());
        let any_healthy = (0..nodes).filter(untried).any(|i| healthy(&i));
        let usable = |i: usize| untried(&i) && (!any_healthy || healthy(&i));
        let top = (0..nodes).filter(|&i| usable(i)).map(|i| upstream.priorities[i]).max()?;
        let eligible = |i: usize| usable(i) && upstream.priorities[i] == top;

        let node = match upstream.config.balancer {
            BalancerType::RoundRobin => self.entry(upstream).roundrobin.pick(&upstream.weights, eligible),
            BalancerType::Chash => {
                let ring = upstream.ring.as_ref().expect("a chash upstream has its ring");
                let text = key.key(upstream.config.hash_on.as_deref(), upstream.config.key.as_deref());
                ring.find(text.as_bytes(), |i| !eligible(i))
            }
            BalancerType::LeastConn => least_conn::pick(&upstream.in_flight, &upstream.weights, eligible),
            BalancerType::Ewma => self.entry(upstream).ewma.pick(rng, eligible),
        }?;
        let in_flight = upstream.in_flight.get(node).map(|counter| InFlight::new(counter.clone()));
        Some(Pick { node, in_flight })
    }

    /// A connect to `node` took `connect_time` (feeds EWMA).
    pub fn observe_connect(
        &mut self,
        upstream: &Arc<ResolvedUpstream>,
        node: usize,
        now: Time,
        connect_time: Duration,
    ) {
        if upstream.config.balancer == BalancerType::Ewma {
            self.entry(upstream).ewma.observe(node, now, connect_time);
        }
    }

    fn entry(&mut self, upstream: &Arc<ResolvedUpstream>) -> &mut Entry {
        let nodes = upstream.addrs.len();
        let fresh =
            || Entry { upstream: upstream.clone(), roundrobin: SmoothWeighted::new(nodes), ewma: Ewma::new(nodes) };
        // Look up by reference: the key is cloned only when an upstream is first seen,
        // not on every pick.
        if !self.by_key.contains_key(&upstream.key) {
            self.by_key.insert(upstream.key.clone(), fresh());
        }
        let entry = self.by_key.get_mut(&upstream.key).expect("inserted above");
        if !Arc::ptr_eq(&entry.upstream, upstream) {
            let same_nodes = entry.upstream.addrs == upstream.addrs && entry.upstream.weights == upstream.weights;
            if same_nodes {
                entry.upstream = upstream.clone();
            } else {
                *entry = fresh();
            }
        }
        entry
    }

    /// Drops state of upstreams no longer in the config.
    pub fn retain_keys(&mut self, keys: &[String]) {
        self.by_key.retain(|key, _| keys.binary_search(key).is_ok());
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
