//! The etcd Syncer (strait-admin) driven against an in-memory etcd, seeded:
//! puts and deletes, compaction, a wiped etcd, outages, watches that break or
//! go idle, events delivered in batches of any size. Invariant: once the faults
//! stop and the syncer catches up, what it published is exactly what etcd holds;
//! along the way it never publishes a set older than one it already published
//! (unless etcd itself went back), and it always watches from what it applied + 1.
//!
//! `STRAIT_SIM_SEEDS` widens the run (default 300 seeds) and `STRAIT_SIM_SEED=N` replays one, as for the
//! TCP simulator (`STRAIT_SIM_VERBOSE=1` prints every step).

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use strait_admin::etcd::gateway::{Event, EventKind, Kv, WatchMsg};
use strait_admin::etcd::sync::{Action, Ended, Stream, Syncer};
use strait_sim::rng::Rng;

const PREFIX: &str = "/apisix";

/// etcd as the syncer sees it: a revisioned key space with history.
struct Etcd {
    revision: u64,
    kvs: BTreeMap<String, Kv>,
    /// Every change after `compacted`, in revision order.
    history: Vec<Event>,
    compacted: u64,
    down: bool,
}

impl Etcd {
    fn new() -> Etcd {
        Etcd { revision: 1, kvs: BTreeMap::new(), history: Vec::new(), compacted: 0, down: false }
    }

    fn put(&mut self, key: String, value: Value) {
        self.revision += 1;
        let create_revision = self.kvs.get(&key).map_or(self.revision, |kv| kv.create_revision);
        let kv = Kv {
            key: key.clone(),
            value: value.to_string().into_bytes(),
            create_revision,
            mod_revision: self.revision,
        };
        self.history.push(Event { kind: EventKind::Put, kv: kv.clone() });
        self.kvs.insert(key, kv);
    }

    fn delete(&mut self, key: &str) {
        if self.kvs.remove(key).is_some() {
            self.revision += 1;
            let kv = Kv { key: key.to_string(), value: Vec::new(), create_revision: 0, mod_revision: self.revision };
            self.history.push(Event { kind: EventKind::Delete, kv });
        }
    }

    fn compact(&mut self) {
        self.compacted = self.revision;
        self.history.clear();
    }

    /// A new, empty etcd (a restore or a wipe): revisions start over.
    fn wipe(&mut self) {
        *self = Etcd::new();
    }

    fn events_from(&self, start: u64) -> Vec<Event> {
        self.history.iter().filter(|e| e.kv.mod_revision >= start).cloned().collect()
    }
}

/// What the driver has open.
enum Watch {
    None,
    /// Events up to `delivered` have been sent on the open watch.
    Open {
        delivered: u64,
    },
}

struct Run {
    rng: Rng,
    etcd: Etcd,
    syncer: Syncer,
    watch: Watch,
    now: Duration,
    published: Option<(u64, BTreeMap<String, Value>)>,
    wiped_since_publish: bool,
}

impl Run {
    fn new(seed: u64) -> Run {
        Run {
            rng: Rng::new(seed),
            etcd: Etcd::new(),
            syncer: Syncer::new(PREFIX, Duration::from_secs(5), seed),
            watch: Watch::None,
            now: Duration::ZERO,
            published: None,
            wiped_since_publish: false,
        }
    }

    fn route(&mut self) -> (String, Value) {
        let id = self.rng.range(1, 6);
        let port = self.rng.range(1000, 1010);
        (
            format!("{PREFIX}/stream_routes/{id}"),
            json!({"server_port": port, "upstream": {"nodes": {format!("127.0.0.1:{port}"): 1}}}),
        )
    }

    fn trace(&self, what: &str) {
        if std::env::var("STRAIT_SIM_VERBOSE").is_ok() {
            eprintln!(
                "[{:?}] etcd rev {} compacted {} down {} | syncer applied {} | {what}",
                self.now,
                self.etcd.revision,
                self.etcd.compacted,
                self.etcd.down,
                self.syncer.applied_revision()
            );
        }
    }

    /// One change or fault in the world.
    fn world_step(&mut self, faults: bool) {
        let pick = self.rng.below(if faults { 12 } else { 6 });
        self.trace(&format!("world {pick}"));
        match pick {
            0..=3 => {
                let (key, value) = self.route();
                self.etcd.put(key, value);
            }
            4 | 5 => {
                let (key, _) = self.route();
                self.etcd.delete(&key);
            }
            6 => self.etcd.compact(),
            7 => {
                self.etcd.wipe();
                self.wiped_since_publish = true;
                self.watch = Watch::None;
            }
            8 | 9 => self.etcd.down = !self.etcd.down,
            10 => self.end_watch(Ended::Broken("connection reset".into())),
            _ => self.end_watch(Ended::IdleTimeout),
        }
    }

    fn end_watch(&mut self, how: Ended) {
        if let Watch::Open { .. } = self.watch {
            self.watch = Watch::None;
            self.syncer.handle_watch_ended(self.now, how);
        }
    }

    /// Lets the syncer act once: answers its request, or streams pending events.
    fn syncer_step(&mut self) {
        if let Watch::Open { delivered } = self.watch {
            if self.etcd.down {
                return self.end_watch(Ended::Broken("etcd stopped".into()));
            }
            if delivered < self.etcd.compacted {
                // Revisions this watch still owed were compacted away: etcd cancels it.
                let msg = WatchMsg::Compacted { compact_revision: self.etcd.compacted };
                assert_eq!(self.syncer.handle_watch(self.now, msg), Stream::Close, "a compacted watch is closed");
                self.watch = Watch::None;
                return;
            }
            let pending = self.etcd.events_from(delivered + 1);
            if pending.is_empty() {
                return;
            }
            // Deliver in a batch of random size: a batch never splits a revision here,
            // as etcd sends one revision's events together.
            let take = self.rng.range(1, pending.len() as u64) as usize;
            let batch: Vec<Event> = pending[..take].to_vec();
            let last = batch.last().expect("non-empty").kv.mod_revision;
            self.watch = Watch::Open { delivered: last };
            if self.syncer.handle_watch(self.now, WatchMsg::Events { events: batch }) == Stream::Close {
                self.watch = Watch::None;
            }
            return;
        }
        let action = self.syncer.poll_action(self.now);
        self.trace(&format!("{action:?}"));
        match action {
            Action::WaitUntil(until) => self.now = until,
            Action::Range { .. } => {
                if self.etcd.down {
                    self.syncer.handle_range_failed(self.now, "connection refused".into());
                } else {
                    let kvs = self.etcd.kvs.values().cloned().collect();
                    self.syncer.handle_range(self.now, self.etcd.revision, kvs);
                }
            }
            Action::Watch { start_revision, .. } => {
                assert_eq!(
                    start_revision,
                    self.syncer.applied_revision() + 1,
                    "a watch starts right after what was applied"
                );
                if self.etcd.down {
                    self.syncer.handle_watch_failed(self.now, "connection refused".into());
                    return;
                }
                let created = self.syncer.handle_watch(self.now, WatchMsg::Created { revision: self.etcd.revision });
                if created == Stream::Close {
                    return;
                }
                if start_revision <= self.etcd.compacted {
                    let msg = WatchMsg::Compacted { compact_revision: self.etcd.compacted };
                    assert_eq!(self.syncer.handle_watch(self.now, msg), Stream::Close, "a compacted watch is closed");
                    return;
                }
                self.watch = Watch::Open { delivered: start_revision - 1 };
            }
        }
    }

    fn collect(&mut self) {
        while let Some(publication) = self.syncer.poll_publish() {
            let set: BTreeMap<String, Value> =
                publication.resources.stream_routes.iter().map(|(id, v)| (id.clone(), v.clone())).collect();
            if let Some((revision, _)) = &self.published {
                assert!(
                    publication.revision >= *revision || self.wiped_since_publish,
                    "published revisions never go back unless etcd did: {} after {revision}",
                    publication.revision
                );
            }
            self.wiped_since_publish = false;
            self.published = Some((publication.revision, set));
        }
    }

    /// What etcd holds, as the published set should read.
    fn expected(&self) -> BTreeMap<String, Value> {
        self.etcd
            .kvs
            .values()
            .map(|kv| {
                let id = kv.key.rsplit('/').next().expect("a key has an id").to_string();
                let mut value: Value = serde_json::from_slice(&kv.value).expect("the model writes JSON");
                // The data plane takes the id from the key, as APISIX's does.
                value["id"] = json!(id);
                (id, value)
            })
            .collect()
    }
}

fn run(seed: u64, steps: usize) {
    let mut r = Run::new(seed);
    let fault_rate = r.rng.range(0, 40);
    for _ in 0..steps {
        if r.rng.below(100) < 30 {
            let faults = r.rng.below(100) < fault_rate;
            r.world_step(faults);
        }
        r.syncer_step();
        r.collect();
    }
    // Quiesce: etcd up, no more changes; the syncer must catch up exactly.
    r.etcd.down = false;
    for _ in 0..500 {
        r.syncer_step();
        r.collect();
    }
    let published = r.published.as_ref().map(|(_, set)| set.clone()).unwrap_or_default();
    assert_eq!(published, r.expected(), "seed {seed}: after catching up, the published set is what etcd holds");
    assert_eq!(r.syncer.applied_revision(), r.etcd.revision, "seed {seed}: caught up to etcd's revision");
}

#[test]
fn the_syncer_converges_on_what_etcd_holds_through_faults() {
    let seeds: u64 = std::env::var("STRAIT_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let only: Option<u64> = std::env::var("STRAIT_SIM_SEED").ok().and_then(|s| s.parse().ok());
    for seed in only.map_or(0..seeds, |s| s..s + 1) {
        let outcome = std::panic::catch_unwind(|| run(seed, 400));
        if let Err(e) = outcome {
            eprintln!(
                "etcd sync simulation failed with seed {seed}: replay with \
                 STRAIT_SIM_SEED={seed} STRAIT_SIM_VERBOSE=1 cargo test -p strait-sim --test etcd_sync -- --nocapture"
            );
            std::panic::resume_unwind(e);
        }
    }
}
