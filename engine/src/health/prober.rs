//! Active TCP probes, planned by the engine and carried out by the driver:
//! `Action::Probe` asks for a connect to a target, the driver reports with
//! `Engine::handle_probe_result`, and a probe that outlives its timeout is
//! counted as a timeout and cancelled (`Action::ProbeCancel`).
//!
//! One target per (probe address, check settings): upstreams that share a node
//! and settings share its probes. Targets follow the config: created when an
//! upstream with `checks` appears (probed at once), dropped when it goes.

use super::node::{HealthEvent, NodeHealth};
use crate::action::{Action, ProbeId};
use crate::model::upstream::checks::HealthChecks;
use crate::snapshot::ResolvedUpstream;
use crate::time::Time;
use slab::Slab;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) struct Target {
    pub node: Arc<NodeHealth>,
    pub checks: HealthChecks,
    pub probe_addr: SocketAddr,
    pub next_at: Time,
    /// When the probe in flight started.
    pub in_flight: Option<Time>,
}

impl Target {
    pub fn deadline(&self) -> Time {
        match self.in_flight {
            Some(started) => started + self.checks.active.timeout,
            None => self.next_at,
        }
    }

    fn schedule_next(&mut self, now: Time) {
        let a = &self.checks.active;
        self.next_at = now + if self.node.is_healthy() { a.healthy_interval } else { a.unhealthy_interval };
    }
}

#[derive(Default)]
pub(crate) struct Prober {
    pub targets: Slab<Target>,
    /// Bumped whenever a probe starts or a target goes, so late results are recognised.
    pub generations: Vec<u32>,
    /// Ordered, not hashed: `sync` walks it, and the order targets are added
    /// and removed in decides their slots and probe ids, which must follow from
    /// the config alone (same config, same seed, same actions).
    by_key: BTreeMap<(SocketAddr, String), usize>,
}

impl Prober {
    /// Makes the targets match the upstreams of a new snapshot. Returns the
    /// slots added (to arm) and removed (to disarm).
    pub fn sync(
        &mut self,
        now: Time,
        upstreams: &[Arc<ResolvedUpstream>],
        actions: &mut VecDeque<Action>,
    ) -> (Vec<usize>, Vec<usize>) {
        let mut wanted: BTreeMap<(SocketAddr, String), (Arc<NodeHealth>, HealthChecks, SocketAddr)> = BTreeMap::new();
        for upstream in upstreams {
            let Some(checks) = &upstream.config.checks else { continue };
            for (index, node) in upstream.health.iter().enumerate() {
                let addr = upstream.addrs[index];
                let probe_addr = SocketAddr::new(addr.ip(), checks.active.port.unwrap_or(addr.port()));
                wanted
                    .entry((probe_addr, checks.fingerprint()))
                    .or_insert_with(|| (node.clone(), checks.clone(), probe_addr));
            }
        }
        let mut removed = Vec::new();
        self.by_key.retain(|key, &mut slot| {
            if wanted.contains_key(key) {
                return true;
            }
            removed.push(slot);
            false
        });
        for &slot in &removed {
            let target = self.targets.remove(slot);
            if target.in_flight.is_some() {
                actions.push_back(Action::ProbeCancel {
                    probe: ProbeId { index: slot as u32, generation: self.generations[slot] },
                });
            }
            self.generations[slot] = self.generations[slot].wrapping_add(1);
        }
        let mut added = Vec::new();
        for (key, (node, checks, probe_addr)) in wanted {
            if self.by_key.contains_key(&key) {
                continue;
            }
            let slot = self.targets.insert(Target { node, checks, probe_addr, next_at: now, in_flight: None });
            if slot >= self.generations.len() {
                self.generations.resize(slot + 1, 0);
            }
            self.by_key.insert(key, slot);
            added.push(slot);
        }
        added.sort_unstable();
        (added, removed)
    }

    /// The target's deadline passed: start a probe, or count the one in flight as timed out.
    pub fn on_deadline(&mut self, slot: usize, now: Time, actions: &mut VecDeque<Action>) {
        let generation = self.generations[slot];
        let target = &mut self.targets[slot];
        if target.in_flight.take().is_some() {
            actions.push_back(Action::ProbeCancel { probe: ProbeId { index: slot as u32, generation } });
            target.node.report(HealthEvent::Timeout, target.checks.active_thresholds());
            target.schedule_next(now);
            self.generations[slot] = generation.wrapping_add(1);
            return;
        }
        target.in_flight = Some(now);
        actions.push_back(Action::Probe { probe: ProbeId { index: slot as u32, generation }, addr: target.probe_addr });
    }

    /// A probe finished; returns the slot to re-arm, or `None` for a stale probe.
    pub fn on_result(&mut self, probe: ProbeId, now: Time, ok: bool) -> Option<usize> {
        let slot = probe.index as usize;
        if !self.targets.contains(slot) || self.generations[slot] != probe.generation {
            return None;
        }
        let target = &mut self.targets[slot];
        target.in_flight.take()?;
        let event = if ok { HealthEvent::Success } else { HealthEvent::TcpFailure };
        target.node.report(event, target.checks.active_thresholds());
        target.schedule_next(now);
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        Some(slot)
    }
}
