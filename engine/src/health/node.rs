//! One node's health and the board that shares it.

use crate::model::upstream::checks::HealthChecks;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthEvent {
    Success,
    TcpFailure,
    Timeout,
}

/// How many consecutive events of a kind flip a node (0 = never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub successes: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

/// Consecutive events since the last opposite event or transition, as the
/// control API reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthCounters {
    pub success: u32,
    pub tcp_failure: u32,
    pub timeout_failure: u32,
}

#[derive(Debug)]
pub struct NodeHealth {
    pub addr: SocketAddr,
    healthy: AtomicBool,
    counters: Mutex<HealthCounters>,
}

impl NodeHealth {
    fn new(addr: SocketAddr) -> NodeHealth {
        NodeHealth { addr, healthy: AtomicBool::new(true), counters: Mutex::new(HealthCounters::default()) }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn counters(&self) -> HealthCounters {
        *self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one event; returns the new state when it flips the node. A flip
    /// is reported exactly once (the counters' lock orders concurrent reports).
    pub fn report(&self, event: HealthEvent, thresholds: Thresholds) -> Option<bool> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let healthy = self.healthy.load(Ordering::Relaxed);
        let reached = |count: u32, threshold: u32| threshold > 0 && count >= threshold;
        let flip = match event {
            HealthEvent::Success => {
                counters.tcp_failure = 0;
                counters.timeout_failure = 0;
                counters.success = counters.success.saturating_add(1);
                !healthy && reached(counters.success, thresholds.successes)
            }
            HealthEvent::TcpFailure => {
                counters.success = 0;
                counters.tcp_failure = counters.tcp_failure.saturating_add(1);
                healthy && reached(counters.tcp_failure, thresholds.tcp_failures)
            }
            HealthEvent::Timeout => {
                counters.success = 0;
                counters.timeout_failure = counters.timeout_failure.saturating_add(1);
                healthy && reached(counters.timeout_failure, thresholds.timeouts)
            }
        };
        if !flip {
            return None;
        }
        *counters = HealthCounters::default();
        self.healthy.store(!healthy, Ordering::Relaxed);
        log::warn!("upstream node {} is now {}", self.addr, if healthy { "unhealthy" } else { "healthy" });
        Some(!healthy)
    }
}

/// Every `NodeHealth` of the process, by (node address, check settings).
/// Entries live as long as some snapshot refers to them.
#[derive(Clone, Default)]
pub struct HealthBoard {
    nodes: Arc<Mutex<HashMap<(SocketAddr, String), Weak<NodeHealth>>>>,
}

impl HealthBoard {
    pub fn node(&self, addr: SocketAddr, checks: &HealthChecks) -> Arc<NodeHealth> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let key = (addr, checks.fingerprint());
        if let Some(node) = nodes.get(&key).and_then(Weak::upgrade) {
            return node;
        }
        nodes.retain(|_, weak| weak.strong_count() > 0);
        let node = Arc::new(NodeHealth::new(addr));
        nodes.insert(key, Arc::downgrade(&node));
        node
    }
}

impl HealthChecks {
    /// Thresholds for active probe results.
    pub fn active_thresholds(&self) -> Thresholds {
        let a = &self.active;
        Thresholds {
            successes: a.healthy_successes,
            tcp_failures: a.unhealthy_tcp_failures,
            timeouts: a.unhealthy_timeouts,
        }
    }

    /// Thresholds for what real connections report: the passive settings
    /// when given, else the active ones (so failures between probes count).
    pub fn passive_thresholds(&self) -> Thresholds {
        match &self.passive {
            Some(p) => Thresholds {
                successes: p.healthy_successes,
                tcp_failures: p.unhealthy_tcp_failures,
                timeouts: p.unhealthy_timeouts,
            },
            None => self.active_thresholds(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { successes: 2, tcp_failures: 2, timeouts: 3 };

    #[test]
    fn failures_eject_and_successes_restore() {
        let node = NodeHealth::new("10.0.0.1:1".parse().unwrap());
        assert_eq!(node.report(HealthEvent::TcpFailure, T), None);
        assert_eq!(node.report(HealthEvent::TcpFailure, T), Some(false));
        assert!(!node.is_healthy());
        assert_eq!(node.report(HealthEvent::Success, T), None);
        assert_eq!(node.report(HealthEvent::Success, T), Some(true));
        assert!(node.is_healthy());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let node = NodeHealth::new("10.0.0.1:1".parse().unwrap());
        node.report(HealthEvent::TcpFailure, T);
        node.report(HealthEvent::Success, T);
        assert_eq!(node.report(HealthEvent::TcpFailure, T), None, "not consecutive");
        assert_eq!(node.counters(), HealthCounters { success: 0, tcp_failure: 1, timeout_failure: 0 });
    }

    #[test]
    fn zero_thresholds_never_flip() {
        let node = NodeHealth::new("10.0.0.1:1".parse().unwrap());
        let never = Thresholds { successes: 0, tcp_failures: 0, timeouts: 0 };
        assert!((0..10).all(|_| node.report(HealthEvent::TcpFailure, never).is_none()));
    }
}
