//! The simulator's seeded PRNG: the engine's SplitMix64 with the draws a
//! simulator needs (ranges, chances, weighted picks), fully determined by the
//! seed so a run replays bit for bit on any machine. The engine's own RNG is a
//! separate instance, seeded separately; the two never share state.

#[derive(Clone, Debug)]
pub struct Rng {
    /// The engine's SplitMix64 core; the helpers below are the simulator's own.
    core: strait_engine::rng::Rng,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { core: strait_engine::rng::Rng::new(seed) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.core.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.core.below(n)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p` (0.0..=1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 1.0 < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A copy of a uniformly chosen item.
    pub fn pick_copy<T: Copy>(&mut self, items: &[T]) -> T {
        *self.pick(items)
    }

    /// An index drawn with the given weights (at least one must be non-zero).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < u64::from(w) {
                return i;
            }
            x -= u64::from(w);
        }
        unreachable!("x < total")
    }

    /// A size skewed towards small values (log-uniform in `1..=max`): most
    /// chunks are small, a few are large, which is what finds boundary bugs.
    pub fn skewed(&mut self, max: u64) -> u64 {
        let bits = 64 - max.leading_zeros() as u64;
        let limit = 1u64 << self.below(bits.max(1));
        self.range(1, limit.min(max).max(1))
    }

    /// A child generator for an independent stream of choices.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }

    #[test]
    fn weighted_never_picks_a_zero_weight() {
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.weighted(&[0, 3, 0, 1]) % 2 == 1));
    }
}
