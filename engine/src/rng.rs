//! The engine's only source of randomness: SplitMix64 seeded by the driver,
//! so every decision can be replayed from the seed.

#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0). The modulo bias is irrelevant at our bounds.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0, "a random bound is never zero");
        self.next_u64() % bound
    }
}
