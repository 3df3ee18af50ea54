//! Turning the stored objects into snapshots for the workers. Node host names
//! are resolved here (the engine does no I/O), and looked up again every
//! `apisix.dns_resolver_valid`: a name that moves, or that failed to resolve
//! when the config was applied, is followed without a config change.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_engine::{Resources, SharedState, Snapshot};

/// Where finished snapshots go (the workers and the control API).
pub type Sink = Arc<dyn Fn(Arc<Snapshot>) + Send + Sync>;

pub struct Snapshots {
    version: AtomicU64,
    shared: SharedState,
    /// Held while a snapshot is built and handed on, so a refresh never
    /// overtakes (or is overtaken by) a config change.
    current: Mutex<Current>,
}

#[derive(Default)]
struct Current {
    /// Counts `apply` calls: a refresh whose lookups straddled one is dropped.
    generation: u64,
    resources: Resources,
    /// Every node host name of `resources` and the addresses it resolved to (sorted).
    answers: BTreeMap<String, Vec<IpAddr>>,
}

impl Snapshots {
    pub fn new(shared: SharedState) -> Snapshots {
        Snapshots { version: AtomicU64::new(1), shared, current: Mutex::new(Current::default()) }
    }

    /// Builds the snapshot of `resources`, resolving host names now, and hands it to `sink`.
    pub fn apply(&self, resources: &Resources, sink: &dyn Fn(Arc<Snapshot>)) -> Arc<Snapshot> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut answers = BTreeMap::new();
        let snapshot =
            self.build(resources, &mut |host| answers.entry(host.to_string()).or_insert_with(|| resolve(host)).clone());
        *current = Current { generation: current.generation + 1, resources: resources.clone(), answers };
        sink(snapshot.clone());
        snapshot
    }

    /// Looks the current host names up again; when an answer changed, builds
    /// and hands on a snapshot with the new addresses. Returns whether it did.
    pub fn refresh(&self, sink: &dyn Fn(Arc<Snapshot>)) -> bool {
        let (generation, hosts): (u64, Vec<String>) = {
            let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            (current.generation, current.answers.keys().cloned().collect())
        };
        if hosts.is_empty() {
            return false;
        }
        // Looked up without the lock: a name that times out must not hold up a config change.
        let fresh: BTreeMap<String, Vec<IpAddr>> = hosts
            .into_iter()
            .map(|h| {
                let addrs = resolve(&h);
                (h, addrs)
            })
            .collect();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.generation != generation || fresh == current.answers {
            // A config change came in meanwhile (and resolved its names itself), or nothing moved.
            return false;
        }
        for (host, addrs) in &fresh {
            if current.answers.get(host) != Some(addrs) {
                log::info!("upstream node host {host} now resolves to {addrs:?} (was {:?})", current.answers[host]);
            }
        }
        let snapshot = self.build(&current.resources, &mut |host| fresh.get(host).cloned().unwrap_or_default());
        current.answers = fresh;
        sink(snapshot);
        true
    }

    fn build(&self, resources: &Resources, resolve: &mut dyn FnMut(&str) -> Vec<IpAddr>) -> Arc<Snapshot> {
        let version = self.version.fetch_add(1, Ordering::Relaxed);
        let (snapshot, warnings) = Snapshot::build_with(version, resources, resolve, &self.shared);
        for warning in warnings {
            log::warn!("{warning}");
        }
        log::debug!("config version {version}: {} stream routes", snapshot.routes().len());
        Arc::new(snapshot)
    }
}

/// The system resolver's answer for `host`, sorted so that the same set of
/// addresses compares equal (and picks the same node address) whatever order
/// the resolver returned it in.
fn resolve(host: &str) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> =
        (host, 0).to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect()).unwrap_or_default();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Calls `refresh` every `every`, on its own thread, for the life of the process.
pub fn spawn_refresher(snapshots: Arc<Snapshots>, every: Duration, sink: Sink) -> std::io::Result<()> {
    std::thread::Builder::new().name("strait-dns".into()).spawn(move || loop {
        std::thread::sleep(every);
        snapshots.refresh(&*sink);
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn upstream_with_node(node: &str) -> Resources {
        let upstream = serde_json::json!({"type": "roundrobin", "nodes": {node: 1}});
        Resources { upstreams: vec![("1".into(), upstream)], ..Resources::default() }
    }

    #[test]
    fn a_refresh_republishes_only_when_an_answer_changed() {
        let snapshots = Snapshots::new(SharedState::default());
        let published = AtomicUsize::new(0);
        let sink = |_: Arc<Snapshot>| {
            published.fetch_add(1, Ordering::SeqCst);
        };
        snapshots.apply(&upstream_with_node("localhost:80"), &sink);
        assert_eq!(published.load(Ordering::SeqCst), 1);
        assert!(!snapshots.refresh(&sink), "localhost resolves as before: nothing to publish");
        assert_eq!(published.load(Ordering::SeqCst), 1);

        // Only IP nodes: nothing to look up at all.
        snapshots.apply(&upstream_with_node("127.0.0.1:80"), &sink);
        assert!(snapshots.current.lock().unwrap().answers.is_empty());
        assert!(!snapshots.refresh(&sink));

        // An answer that differs from the recorded one (as when a name moves): republished.
        snapshots.apply(&upstream_with_node("localhost:80"), &sink);
        snapshots.current.lock().unwrap().answers.insert("localhost".into(), vec![]);
        assert!(snapshots.refresh(&sink));
        assert_eq!(published.load(Ordering::SeqCst), 4);
    }
}
