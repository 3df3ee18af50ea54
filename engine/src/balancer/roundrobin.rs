//! Smooth weighted round robin (nginx's algorithm): exact over a cycle and
//! interleaved (weights 5:1:1 give `A A B A C A A`, not APISIX's bursty
//! `A A A A A B C`, spec §8.20).

#[derive(Clone, Debug)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(nodes: usize) -> SmoothWeighted {
        SmoothWeighted { current: vec![0; nodes] }
    }

    /// Picks among the nodes for which `eligible(i)` holds, with `weights[i]`.
    /// Weight-0 nodes are chosen only when every eligible weight is 0 (then in
    /// plain rotation). Returns `None` when no node is eligible.
    pub fn pick(&mut self, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        debug_assert_eq!(weights.len(), self.current.len(), "state and nodes agree");
        let all_zero = (0..weights.len()).filter(|&i| eligible(i)).all(|i| weights[i] == 0);
        let weight = |i: usize| if all_zero { 1 } else { i64::from(weights[i]) };
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..weights.len() {
            if !eligible(i) || weight(i) == 0 {
                continue;
            }
            self.current[i] += weight(i);
            total += weight(i);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_five_one_one_interleave() {
        let mut rr = SmoothWeighted::new(3);
        let order: String = (0..7).map(|_| ["A", "B", "C"][rr.pick(&[5, 1, 1], |_| true).unwrap()]).collect();
        assert_eq!(order, "AABACAA");
    }

    #[test]
    fn exact_over_a_cycle() {
        let mut rr = SmoothWeighted::new(2);
        let mut counts = [0; 2];
        for _ in 0..40 {
            counts[rr.pick(&[1, 3], |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [10, 30]);
    }

    #[test]
    fn zero_weights_only_when_nothing_else() {
        let mut rr = SmoothWeighted::new(2);
        assert!((0..10).all(|_| rr.pick(&[0, 2], |_| true) == Some(1)));
        let mut rr = SmoothWeighted::new(2);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&[0, 0], |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        assert_eq!(rr.pick(&[1, 1], |_| false), None);
    }
}
