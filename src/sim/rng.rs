//! The simulator's random source: a small seeded generator (SplitMix64), so that a run
//! is a function of its seed. Never reads the OS or the clock; not for cryptography
//! outside the simulator.

/// SplitMix64's increment (the golden-ratio constant of its reference implementation).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// Bits of a `u64` that fit an `f64` mantissa exactly: `unit` uses the top 53.
const UNIT_BITS: u32 = 53;

/// A seeded pseudo-random generator: the same seed gives the same sequence.
#[derive(Debug, Clone)]
pub struct SimRng {
    /// The generator's whole state: advanced by [`GAMMA`] per draw.
    state: u64,
}

impl SimRng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> (64 - UNIT_BITS)) as f64 / (1u64 << UNIT_BITS) as f64
    }

    /// True with probability `p` (0 or less: never; 1 or more: always).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniform draw from `[0, bound]` (`bound` itself included).
    pub fn up_to(&mut self, bound: u64) -> u64 {
        match bound.checked_add(1) {
            Some(span) => self.next_u64() % span,
            None => self.next_u64(),
        }
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// An independent generator seeded from this one (one per endpoint, per key, ...),
    /// so that adding draws to one part does not shift another's sequence.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::SimRng;

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let draw = |seed| {
            (0..4)
                .map({
                    let mut rng = SimRng::new(seed);
                    move |_| rng.next_u64()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn chance_follows_its_probability() {
        let mut rng = SimRng::new(1);
        let hits = (0..10_000).filter(|_| rng.chance(0.1)).count();
        assert!((800..1200).contains(&hits), "{hits} of 10000 at p = 0.1");
        assert!(!(0..1000).any(|_| rng.chance(0.0)));
        assert!((0..1000).all(|_| rng.chance(1.0)));
    }
}
