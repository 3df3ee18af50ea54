//! Active health probes in the simulator: the driver answers `Probe` per the
//! node model (up: connected; refusing or absent: refused; unreachable: an
//! error; a black hole: nothing, so the engine's probe timeout ends it).
//!
//! Checked: probes go only to targets of the current config; a
//! `ProbeCancel` names a probe in flight; every target has exactly one timer
//! and none outlives its target (see `check_counts`); late results are ignored.

use super::{Event, Sim};
use crate::models::NodeBehaviour;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use strait_engine::{ConnectError, ProbeId};

#[derive(Default)]
pub(super) struct ProbeWorld {
    /// Probes asked for and neither answered nor cancelled, by (index, generation).
    pub in_flight: BTreeMap<(u32, u32), SocketAddr>,
    /// `abort_all` dropped the engine's probe targets.
    pub aborted: bool,
}

fn key(probe: ProbeId) -> (u32, u32) {
    (probe.index, probe.generation)
}

impl Sim {
    /// The engine's probe targets per the current config: one per (probe
    /// address, check settings) of every upstream with `checks`.
    pub(super) fn probe_targets(&self) -> BTreeSet<(SocketAddr, String)> {
        let mut targets = BTreeSet::new();
        if !self.swarm.run_active_checks || self.probes.aborted {
            return targets;
        }
        for up in self.engine.snapshot().upstreams() {
            let Some(checks) = &up.config.checks else { continue };
            for addr in &up.addrs {
                let probe_addr = SocketAddr::new(addr.ip(), checks.active.port.unwrap_or(addr.port()));
                targets.insert((probe_addr, checks.fingerprint()));
            }
        }
        targets
    }

    pub(super) fn on_probe(&mut self, probe: ProbeId, addr: SocketAddr) {
        self.ev("probe", &[u64::from(probe.index), u64::from(probe.generation)]);
        assert!(
            self.probe_targets().iter().any(|(a, _)| *a == addr),
            "probes go only to targets of the current config ({addr})"
        );
        assert!(self.probes.in_flight.insert(key(probe), addr).is_none(), "a probe id is never reused while in flight");
        self.stats.probes += 1;
        let latency = self.rng.range(0, self.swarm.latency_max_us) * 1000;
        let result = match self.nodes.get(&addr) {
            Some(NodeBehaviour::Up) => Ok(()),
            None | Some(NodeBehaviour::Refuses) => Err(ConnectError::Refused),
            Some(NodeBehaviour::Unreachable) => Err(ConnectError::Other),
            Some(NodeBehaviour::BlackHole) => return,
        };
        self.schedule(latency, Event::ProbeDone { probe, result });
    }

    pub(super) fn on_probe_cancel(&mut self, probe: ProbeId) {
        self.ev("probe_cancel", &[u64::from(probe.index), u64::from(probe.generation)]);
        assert!(self.probes.in_flight.remove(&key(probe)).is_some(), "a ProbeCancel names a probe in flight");
        self.stats.probe_timeouts += 1;
    }

    /// A probe's connect finished. A cancelled probe's socket would be closed
    /// already; its result is fed anyway and must change nothing.
    pub(super) fn probe_done(&mut self, probe: ProbeId, result: Result<(), ConnectError>) {
        let live = self.probes.in_flight.remove(&key(probe)).is_some();
        self.ev("probe_done", &[u64::from(probe.index), u64::from(probe.generation), u64::from(live)]);
        let timers = self.engine.timer_count();
        let deadline = self.engine.poll_timeout();
        self.engine.handle_probe_result(self.now, probe, result);
        self.drain_actions();
        if !live {
            assert_eq!(
                (self.engine.timer_count(), self.engine.poll_timeout()),
                (timers, deadline),
                "a late probe result changes nothing"
            );
        }
    }
}
