//! Least connections: score `(1 + in_flight) / weight`, lowest wins (spec
//! §4.3.6). Unlike APISIX, whose counts are per worker, the counts live on a
//! process-wide board so every worker sees every connection to a node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Connections in flight per node address, shared by every worker. The lock is
/// taken only when a worker (re)builds its view of an upstream, never per pick.
#[derive(Clone, Default)]
pub struct LoadBoard {
    counters: Arc<Mutex<HashMap<SocketAddr, Weak<AtomicU32>>>>,
}

impl LoadBoard {
    /// The shared counter of `addr`, created on first use.
    pub fn counter(&self, addr: SocketAddr) -> Arc<AtomicU32> {
        let mut counters = self.counters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(counter) = counters.get(&addr).and_then(Weak::upgrade) {
            return counter;
        }
        // Forget counters no upstream uses any more, so the map stays bounded by live nodes.
        counters.retain(|_, weak| weak.strong_count() > 0);
        let counter = Arc::new(AtomicU32::new(0));
        counters.insert(addr, Arc::downgrade(&counter));
        counter
    }
}

/// One connection counted against a node; dropping it uncounts it, so a
/// retry, a close or a panic can never leak a count.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU32>);

impl InFlight {
    pub fn new(counter: Arc<AtomicU32>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The eligible node with the lowest `(1 + in_flight) / weight`; ties go to
/// the first in order. Weight-0 nodes only when every eligible weight is 0.
pub fn pick(counters: &[Arc<AtomicU32>], weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
    let all_zero = (0..weights.len()).filter(|&i| eligible(i)).all(|i| weights[i] == 0);
    let mut best: Option<(usize, u64, u64)> = None;
    for i in (0..weights.len()).filter(|&i| eligible(i)) {
        let weight = if all_zero { 1 } else { u64::from(weights[i]) };
        if weight == 0 {
            continue;
        }
        let load = 1 + u64::from(counters[i].load(Ordering::Relaxed));
        // Compare load_i / weight_i < load_b / weight_b without division.
        if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
            best = Some((i, load, weight));
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_three_to_one_with_held_connections() {
        let board = LoadBoard::default();
        let counters: Vec<_> = ["10.0.0.1:1", "10.0.0.2:2"].iter().map(|a| board.counter(a.parse().unwrap())).collect();
        let mut held = Vec::new();
        let mut picks = [0; 2];
        for _ in 0..8 {
            let node = pick(&counters, &[3, 1], |_| true).unwrap();
            picks[node] += 1;
            held.push(InFlight::new(counters[node].clone()));
        }
        assert_eq!(picks, [6, 2], "held connections spread 3:1");
        drop(held);
        assert_eq!(counters[0].load(Ordering::Relaxed), 0, "dropping the guards uncounts");
    }

    #[test]
    fn sequential_connections_all_go_to_the_heavier_node() {
        let board = LoadBoard::default();
        let counters: Vec<_> = ["10.0.0.1:1", "10.0.0.2:2"].iter().map(|a| board.counter(a.parse().unwrap())).collect();
        assert!((0..5).all(|_| pick(&counters, &[3, 1], |_| true) == Some(0)));
    }

    #[test]
    fn the_board_shares_one_counter_per_address() {
        let board = LoadBoard::default();
        let a = board.counter("10.0.0.1:1".parse().unwrap());
        let b = board.clone().counter("10.0.0.1:1".parse().unwrap());
        assert!(Arc::ptr_eq(&a, &b));
    }
}
