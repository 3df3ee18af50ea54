//! Picking an upstream node for a connection.
//!
//! Balancer state is per worker and per upstream key. It survives a config
//! change when the upstream's nodes did not change, so an unrelated admin write
//! does not reset the rotation.

mod roundrobin;

pub use roundrobin::SmoothWeighted;

use crate::snapshot::ResolvedUpstream;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct Balancers {
    by_key: HashMap<String, Entry>,
}

struct Entry {
    upstream: Arc<ResolvedUpstream>,
    roundrobin: SmoothWeighted,
}

impl Balancers {
    /// Picks a node of `upstream` not in `tried`, from the highest priority
    /// group that still has one (spec §4.3.3). `None` when every node was tried.
    pub fn pick(&mut self, upstream: &Arc<ResolvedUpstream>, tried: &[usize]) -> Option<usize> {
        let nodes = upstream.addrs.len();
        let top_priority = (0..nodes).filter(|i| !tried.contains(i)).map(|i| upstream.priorities[i]).max()?;
        let entry = self.entry(upstream);
        entry.roundrobin.pick(&upstream.weights, |i| !tried.contains(&i) && upstream.priorities[i] == top_priority)
    }

    fn entry(&mut self, upstream: &Arc<ResolvedUpstream>) -> &mut Entry {
        let fresh = || Entry { upstream: upstream.clone(), roundrobin: SmoothWeighted::new(upstream.addrs.len()) };
        let entry = self.by_key.entry(upstream.key.clone()).or_insert_with(fresh);
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
