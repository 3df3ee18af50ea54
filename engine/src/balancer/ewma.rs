//! EWMA: power of two choices on an exponentially decayed average of connect
//! times (APISIX cannot do it in stream, spec §4.3.7). Two distinct eligible
//! nodes are drawn from the engine's seeded RNG; the one with the lower
//! average wins. A node never measured scores 0, so new nodes get tried.

use crate::rng::Rng;
use crate::time::Time;
use std::time::Duration;

/// The decay constant: a measurement's weight halves in about 7 s (τ = 10 s as APISIX's http ewma).
const DECAY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Ewma {
    /// Per node: (average connect time in ns, time of the last update).
    averages: Vec<(f64, Option<Time>)>,
}

impl Ewma {
    pub fn new(nodes: usize) -> Ewma {
        Ewma { averages: vec![(0.0, None); nodes] }
    }

    /// Folds one connect time into node `i`'s average.
    pub fn observe(&mut self, node: usize, now: Time, connect_time: Duration) {
        let Some((average, last)) = self.averages.get_mut(node) else { return };
        let sample = connect_time.as_nanos() as f64;
        *average = match *last {
            None => sample,
            Some(last) => {
                let weight = (-((now - last).as_secs_f64()) / DECAY.as_secs_f64()).exp();
                *average * weight + sample * (1.0 - weight)
            }
        };
        *last = Some(now);
    }

    pub fn pick(&self, rng: &mut Rng, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.averages.len()).filter(|&i| eligible(i)).collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let first = rng.below(n as u64) as usize;
                let second = (first + 1 + rng.below(n as u64 - 1) as usize) % n;
                let (a, b) = (candidates[first], candidates[second]);
                Some(if self.averages[b].0 < self.averages[a].0 { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faster_of_two_nodes_wins_every_draw() {
        let mut ewma = Ewma::new(2);
        ewma.observe(0, Time::ZERO, Duration::from_millis(50));
        ewma.observe(1, Time::ZERO, Duration::from_millis(1));
        let mut rng = Rng::new(7);
        assert!((0..20).all(|_| ewma.pick(&mut rng, |_| true) == Some(1)));
    }

    #[test]
    fn old_measurements_decay() {
        let mut ewma = Ewma::new(1);
        ewma.observe(0, Time::ZERO, Duration::from_millis(100));
        ewma.observe(0, Time::ZERO + Duration::from_secs(60), Duration::from_millis(1));
        assert!(ewma.averages[0].0 < 2_000_000.0, "a minute later the old sample has all but vanished");
    }
}
