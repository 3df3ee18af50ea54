//! [`Syncer`]: one node's view of etcd, as a sans-IO state machine.
//!
//! It owns no socket, no clock and no thread: the driver (node.rs) asks it
//! what to do next ([`Syncer::poll_action`]), performs the range or opens the
//! watch, and feeds back what came of it (`handle_*`, with `now` as a
//! [`Duration`] on the driver's monotonic clock). After a range, and after
//! each burst of watch lines, the driver drains [`Syncer::poll_publish`].
//! States and transitions are listed in LIFECYCLE.md beside this file.
//!
//! Rules it keeps (etcd.md §3, §6.4, §8):
//! - watch from the load's revision + 1, then from the last *event's*
//!   `mod_revision` + 1, never from a batch header (which is etcd's current
//!   revision, not the batch's last);
//! - a compacted start revision, or a revision below what was applied (a
//!   wiped or restored etcd, seen on the `created` line or a range), means a
//!   full re-read; objects whose `mod_revision` did not change are reused;
//! - while etcd is away the last good set stays published, retries back off
//!   from 100 ms to `resync_delay` (+0-50 % jitter) forever, and the first
//!   contact after an outage is a full re-read (a replaced etcd cannot be told
//!   apart otherwise); a plain idle timeout resumes the watch at once;
//! - an object that fails validation is skipped with a log line, and an
//!   earlier valid version of it stays in force.

use super::gateway::{Event, EventKind, Kv, WatchMsg};
use crate::kind::Kind;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);

/// What the driver should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Range `key`..`range_end` and feed [`Syncer::handle_range`].
    Range { key: String, range_end: String },
    /// Open a watch and feed its lines to [`Syncer::handle_watch`].
    Watch { key: String, range_end: String, start_revision: u64 },
    /// Nothing before this instant.
    WaitUntil(Duration),
}

/// What the driver should do with the open watch after a line.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Keep,
    /// Close it (etcd keeps a cancelled watch's response open) and poll for
    /// the next action.
    Close,
}

/// How a watch ended without a message saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// No data for `watch_timeout`: reconnect at once (APISIX #6259).
    IdleTimeout,
    /// End of body or a broken connection (etcd stopped or killed).
    Broken(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    NeedLoad,
    NeedWatch,
    /// A watch from `start` is open (or being opened).
    Watching {
        start: u64,
    },
    /// etcd was unreachable: wait, then re-read everything.
    Backoff {
        until: Duration,
    },
}

/// One accepted object.
#[derive(Clone, Debug, PartialEq)]
struct Stored {
    mod_revision: u64,
    /// FNV-1a of the value's bytes: a replaced etcd can hold a key at the same
    /// mod_revision with other content, so the revision alone cannot prove an
    /// object unchanged (found by sim/tests/etcd_sync.rs, seed 18).
    raw_hash: u64,
    kind: Kind,
    id: String,
    value: Value,
}

/// A new object set for the workers.
#[derive(Debug)]
pub struct Publication {
    pub revision: u64,
    pub resources: strait_engine::Resources,
}

/// Whether etcd is reachable, for logs and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub connected: bool,
    /// Since when the published set may be behind etcd.
    pub stale_since: Option<Duration>,
    pub last_error: Option<String>,
}

pub struct Syncer {
    prefix: String,
    state: State,
    /// The revision the object set reflects.
    applied: u64,
    loaded: bool,
    objects: BTreeMap<String, Stored>,
    /// The objects changed since the last publication.
    dirty: bool,
    backoff: Duration,
    backoff_max: Duration,
    rng: u64,
    health: Health,
}

impl Syncer {
    /// `prefix` without a trailing slash (`/apisix`); `resync_delay` caps the
    /// back-off; `seed` drives its jitter.
    pub fn new(prefix: &str, resync_delay: Duration, seed: u64) -> Syncer {
        Syncer {
            prefix: format!("{}/", prefix.trim_end_matches('/')),
            state: State::NeedLoad,
            applied: 0,
            loaded: false,
            objects: BTreeMap::new(),
            dirty: false,
            backoff: BACKOFF_FIRST,
            backoff_max: resync_delay.max(BACKOFF_FIRST),
            rng: seed | 1,
            health: Health { connected: false, stale_since: None, last_error: None },
        }
    }

    pub fn applied_revision(&self) -> u64 {
        self.applied
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// True once a full load succeeded.
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    pub fn poll_action(&mut self, now: Duration) -> Action {
        match self.state.clone() {
            State::NeedLoad => {
                Action::Range { key: self.prefix.clone(), range_end: super::gateway::prefix_end(&self.prefix) }
            }
            State::NeedWatch | State::Watching { .. } => {
                let start = self.applied + 1;
                self.state = State::Watching { start };
                Action::Watch {
                    key: self.prefix.clone(),
                    range_end: super::gateway::prefix_end(&self.prefix),
                    start_revision: start,
                }
            }
            State::Backoff { until } => {
                if now < until {
                    return Action::WaitUntil(until);
                }
                self.state = State::NeedLoad;
                self.poll_action(now)
            }
        }
    }

    /// A full range answer at store revision `revision`.
    pub fn handle_range(&mut self, now: Duration, revision: u64, kvs: Vec<Kv>) {
        if self.loaded && revision < self.applied {
            log::warn!(
                "etcd's revision went backwards ({revision} < {}): etcd was wiped or restored; serving what it holds now",
                self.applied
            );
        }
        let mut objects = BTreeMap::new();
        let mut changed = !self.loaded;
        for kv in kvs {
            let previous = self.objects.remove(&kv.key);
            let previous_version = previous.as_ref().map(|p| (p.mod_revision, p.raw_hash));
            let stored = self.accept(kv.key.clone(), &kv, previous);
            // Same mod_revision = the very object already published (reused).
            changed |= stored.as_ref().map(|s| (s.mod_revision, s.raw_hash)) != previous_version;
            if let Some(stored) = stored {
                objects.insert(kv.key, stored);
            }
        }
        // Whatever is left was deleted while this node was not watching.
        changed |= !self.objects.is_empty();
        if self.loaded {
            log::info!(
                "etcd: re-read everything at revision {revision} ({} objects, {})",
                objects.len(),
                if changed { "changes published" } else { "nothing changed" }
            );
        }
        self.objects = objects;
        self.dirty |= changed;
        self.applied = revision;
        self.loaded = true;
        self.state = State::NeedWatch;
        self.reachable(now);
        self.check_invariants();
    }

    pub fn handle_range_failed(&mut self, now: Duration, error: String) {
        self.unreachable(now, error);
    }

    /// The watch could not be opened (connection refused, HTTP error).
    pub fn handle_watch_failed(&mut self, now: Duration, error: String) {
        self.unreachable(now, error);
    }

    /// One parsed watch line.
    pub fn handle_watch(&mut self, now: Duration, msg: WatchMsg) -> Stream {
        let State::Watching { start } = self.state else {
            debug_assert!(false, "a watch line arrives only while watching");
            return Stream::Close;
        };
        let verdict = match msg {
            WatchMsg::Created { revision } => {
                // A watch from a future revision on a wiped etcd just waits:
                // the created line is the only signal (etcd.md §3.4).
                if revision + 1 < start {
                    log::warn!(
                        "etcd's revision went backwards ({revision} < {}): etcd was wiped or restored; re-reading everything",
                        self.applied
                    );
                    self.state = State::NeedLoad;
                    Stream::Close
                } else {
                    self.reachable(now);
                    Stream::Keep
                }
            }
            WatchMsg::Events { events } => {
                for event in events {
                    self.apply(event);
                }
                Stream::Keep
            }
            WatchMsg::Progress { revision } => {
                // Only periodic marks arrive (none is requested), and etcd
                // sends those once the watcher has caught up.
                self.applied = self.applied.max(revision);
                Stream::Keep
            }
            WatchMsg::Compacted { compact_revision } => {
                // Never resume from compact_revision: its tombstones are gone.
                log::warn!(
                    "etcd compacted revisions up to {compact_revision} past this node's {}: re-reading everything",
                    self.applied
                );
                self.state = State::NeedLoad;
                Stream::Close
            }
            WatchMsg::Canceled { reason } => {
                self.unreachable(now, format!("etcd cancelled the watch: {reason}"));
                Stream::Close
            }
            WatchMsg::Error { message } => {
                self.unreachable(now, format!("etcd watch error: {message}"));
                Stream::Close
            }
        };
        self.check_invariants();
        verdict
    }

    /// The watch ended without a message (EOF, broken, idle).
    pub fn handle_watch_ended(&mut self, now: Duration, how: Ended) {
        if !matches!(self.state, State::Watching { .. }) {
            return; // already decided by the last line (error, compaction)
        }
        match how {
            Ended::IdleTimeout => self.state = State::NeedWatch,
            Ended::Broken(error) => self.unreachable(now, error),
        }
    }

    /// The new object set, once per burst: `None` when nothing changed.
    #[must_use]
    pub fn poll_publish(&mut self) -> Option<Publication> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let objects = self.objects.values().map(|s| (s.kind, s.id.clone(), s.value.clone()));
        Some(Publication { revision: self.applied, resources: super::resources_of(objects) })
    }

    fn apply(&mut self, event: Event) {
        let revision = event.kv.mod_revision;
        if revision <= self.applied {
            return; // already applied (a replayed revision)
        }
        self.applied = revision;
        match event.kind {
            EventKind::Delete => {
                if self.objects.remove(&event.kv.key).is_some() {
                    self.dirty = true;
                }
            }
            EventKind::Put => {
                let previous = self.objects.remove(&event.kv.key);
                let key = event.kv.key.clone();
                match self.accept(key.clone(), &event.kv, previous.clone()) {
                    Some(stored) => {
                        self.dirty |= previous.as_ref() != Some(&stored);
                        self.objects.insert(key, stored);
                    }
                    None => self.dirty |= previous.is_some(),
                }
            }
        }
    }

    /// Validates one stored object. Unchanged (same `mod_revision`) objects
    /// are reused as they are; an invalid new version leaves the previous
    /// one in force.
    fn accept(&self, key: String, kv: &Kv, previous: Option<Stored>) -> Option<Stored> {
        let raw_hash = fnv1a(&kv.value);
        if let Some(previous) =
            previous.as_ref().filter(|p| p.mod_revision == kv.mod_revision && p.raw_hash == raw_hash)
        {
            return Some(previous.clone());
        }
        let rest = key.strip_prefix(&self.prefix)?;
        let (folder, id) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(kind) = Kind::from_segment(folder) else {
            log::debug!("etcd key {key}: not a type Strait serves, ignored");
            return None;
        };
        // `apisix init` writes `<prefix>/<type>/` = init_dir placeholders.
        if id.is_empty() || id.contains('/') {
            return None;
        }
        match super::check_object(kind, id, &kv.value, true) {
            Ok(value) => Some(Stored { mod_revision: kv.mod_revision, raw_hash, kind, id: id.to_string(), value }),
            Err(reason) => {
                match &previous {
                    Some(_) => log::error!(
                        "etcd key {key} (revision {}): invalid, keeping its previous version: {reason}",
                        kv.mod_revision
                    ),
                    None => log::error!("etcd key {key} (revision {}): invalid, skipped: {reason}", kv.mod_revision),
                }
                previous
            }
        }
    }

    fn reachable(&mut self, now: Duration) {
        let _ = now;
        self.backoff = BACKOFF_FIRST;
        if !self.health.connected {
            if self.health.stale_since.is_some() {
                log::info!("etcd is reachable again; catching up from revision {}", self.applied);
            }
            self.health = Health { connected: true, stale_since: None, last_error: None };
        }
    }

    /// etcd could not be reached, or the watch broke: back off, then re-read
    /// everything. A watch cannot resume safely: etcd may have been replaced by
    /// an empty one whose revision has already passed ours (its `cluster_id` is
    /// the same, etcd.md §3.4), and resuming would miss its first writes and keep
    /// keys it no longer has. The re-read reuses unchanged objects, so nothing is
    /// republished when nothing changed. (Found by sim/tests/etcd_sync.rs, seed 120.)
    fn unreachable(&mut self, now: Duration, error: String) {
        if self.health.connected || self.health.stale_since.is_none() {
            if self.loaded {
                log::warn!(
                    "etcd unreachable ({error}); still serving revision {} and retrying every {:?} at most",
                    self.applied,
                    self.backoff_max
                );
            } else {
                log::warn!("etcd unreachable ({error}); retrying");
            }
            self.health.stale_since = Some(now);
        } else {
            log::debug!("etcd still unreachable: {error}");
        }
        self.health.connected = false;
        self.health.last_error = Some(error);
        let delay = self.backoff + self.jitter(self.backoff / 2);
        self.backoff = (self.backoff * 2).min(self.backoff_max);
        self.state = State::Backoff { until: now + delay };
    }

    /// A uniform duration in `[0, max]` from a xorshift stream.
    fn jitter(&mut self, max: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let nanos = max.as_nanos() as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { self.rng % (nanos + 1) })
    }

    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            for (key, stored) in &self.objects {
                assert!(key.starts_with(&self.prefix), "only keys under the prefix are kept: {key}");
                assert!(
                    !self.loaded || stored.mod_revision <= self.applied,
                    "no kept object is newer than the applied revision ({key})"
                );
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
