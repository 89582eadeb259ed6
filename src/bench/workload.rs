//! What `quorumkv bench` asks for: the workload mixes, which key each operation touches,
//! the order `load` inserts in, and the values it writes.
//!
//! Pure code: randomness comes from a seeded [`SplitMix64`] that the caller owns (one per
//! worker), so a seed reproduces a run's sequence of operations. Nothing here talks to a
//! cluster; the run loop (`super::run`) does.

use bytes::Bytes;

/// A YCSB-style workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Insert every key of the key space once (one write per key).
    Load,
    /// 50% reads, 50% updates (YCSB A).
    A,
    /// 95% reads, 5% updates (YCSB B).
    B,
    /// 100% reads (YCSB C).
    C,
    /// 100% writes.
    W,
}

impl Workload {
    /// Share of operations that are reads, in percent.
    pub fn read_percent(self) -> u64 {
        match self {
            Workload::Load | Workload::W => 0,
            Workload::A => 50,
            Workload::B => 95,
            Workload::C => 100,
        }
    }

    /// Whether the workload reads keys (and so wants them loaded first).
    pub fn reads(self) -> bool {
        self.read_percent() > 0
    }

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Load => "load",
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::W => "w",
        }
    }

    /// Draws the next operation of this mix.
    pub fn next_op(self, rng: &mut SplitMix64) -> Op {
        if rng.below(100) < self.read_percent() {
            Op::Read
        } else {
            Op::Write
        }
    }
}

/// One kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A quorum read (`get`).
    Read,
    /// A quorum write (`put`): an insert during `load`, an update otherwise.
    Write,
}

/// How keys are picked from the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// A few hot keys (YCSB zipfian, theta 0.99), spread over the key space.
    Zipfian,
}

/// YCSB's zipfian constant: the most popular of 100,000 keys gets ~8% of the operations.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, seedable generator; plenty for
/// choosing keys, and its output is stable across library versions.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    /// Advances by the golden-ratio increment on every draw.
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; `n` must be positive).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Ranks `0..items` drawn with probability proportional to `1 / (rank + 1)^theta`
/// (Gray et al., "Quickly generating billion-record synthetic databases", as in YCSB's
/// `ZipfianGenerator`). Construction sums `items` terms once: ~1 s per 10^8 keys.
#[derive(Debug, Clone)]
pub struct Zipfian {
    /// Number of ranks.
    items: u64,
    /// Skew: 0 is uniform, towards 1 ever more skewed.
    theta: f64,
    /// `1 / (1 - theta)`.
    alpha: f64,
    /// `zeta(items, theta)`: the normalising sum.
    zetan: f64,
    /// Gray et al.'s correction term.
    eta: f64,
}

impl Zipfian {
    /// A generator over `items` ranks (at least 1) with skew `theta` in (0, 1).
    pub fn new(items: u64, theta: f64) -> Zipfian {
        let items = items.max(1);
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2, theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    /// The rank for a uniform draw `u` in `[0, 1)`; rank 0 is the most popular.
    pub fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let rank = self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (rank as u64).min(self.items - 1)
    }
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// A fixed permutation of `0..keys`: `i -> (i * stride + offset) mod keys` with a stride
/// coprime to `keys`. `load` inserts in this order (sequential keys would be an LSM-tree's
/// best case, not a realistic one), and zipfian ranks go through it so that the hot keys
/// are spread over the key space (YCSB's "scrambled" zipfian) instead of being neighbours.
#[derive(Debug, Clone, Copy)]
pub struct Permutation {
    /// Size of the key space.
    keys: u64,
    /// Coprime to `keys`, so the map is a bijection.
    stride: u64,
    /// Moves index 0 away from key 0.
    offset: u64,
}

/// 2^64 divided by the golden ratio (odd): consecutive indexes land far apart.
const PERMUTATION_STRIDE: u64 = 11_400_714_819_323_198_549;

impl Permutation {
    /// The permutation of `0..keys` (at least 1).
    pub fn new(keys: u64) -> Permutation {
        let keys = keys.max(1);
        let mut stride = PERMUTATION_STRIDE % keys;
        while gcd(stride, keys) != 1 {
            stride += 1;
        }
        Permutation {
            keys,
            stride,
            offset: keys / 2,
        }
    }

    /// The key index at position `i` (taken modulo the key count).
    pub fn at(&self, i: u64) -> u64 {
        let scaled = u128::from(i % self.keys) * u128::from(self.stride) + u128::from(self.offset);
        (scaled % u128::from(self.keys)) as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Picks the key of each operation from `0..keys` by a [`Dist`].
#[derive(Debug, Clone)]
pub struct KeyChooser {
    /// Size of the key space.
    keys: u64,
    /// The zipfian ranks, when the distribution is zipfian.
    zipfian: Option<Zipfian>,
    /// Scatters zipfian ranks over the key space.
    scatter: Permutation,
}

impl KeyChooser {
    /// A chooser over `0..keys` (at least 1).
    pub fn new(keys: u64, dist: Dist) -> KeyChooser {
        let keys = keys.max(1);
        KeyChooser {
            keys,
            zipfian: (dist == Dist::Zipfian).then(|| Zipfian::new(keys, ZIPFIAN_THETA)),
            scatter: Permutation::new(keys),
        }
    }

    /// The next key index.
    pub fn next(&self, rng: &mut SplitMix64) -> u64 {
        match &self.zipfian {
            Some(z) => self.scatter.at(z.rank(rng.unit())),
            None => rng.below(self.keys),
        }
    }
}

/// Key bytes of key index `i`: `bench-` and ten digits, 16 bytes below 10^10 keys.
pub fn key_name(i: u64) -> Bytes {
    use std::io::Write;
    // Written into an exactly sized buffer, the key becomes `Bytes` with one allocation.
    let mut key = Vec::with_capacity(16);
    let _ = write!(key, "bench-{i:010}");
    Bytes::from(key)
}

/// Extra random bytes in a [`ValuePool`] beyond one value: the room for offsets.
const VALUE_POOL_SLACK: usize = 4096;

/// Incompressible values of one size, handed out as zero-copy slices of one random buffer
/// at random offsets (so consecutive writes differ without allocating).
#[derive(Debug, Clone)]
pub struct ValuePool {
    /// `value_size + VALUE_POOL_SLACK` random bytes.
    bytes: Bytes,
    /// Length of every value.
    value_size: usize,
}

impl ValuePool {
    /// A pool of `value_size`-byte values filled from `rng`.
    pub fn new(value_size: usize, rng: &mut SplitMix64) -> ValuePool {
        let len = value_size + VALUE_POOL_SLACK;
        let bytes: Vec<u8> = (0..len.div_ceil(8))
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .take(len)
            .collect();
        ValuePool {
            bytes: Bytes::from(bytes),
            value_size,
        }
    }

    /// A value (shares the pool's memory).
    pub fn next(&self, rng: &mut SplitMix64) -> Bytes {
        let start = rng.below(VALUE_POOL_SLACK as u64 + 1) as usize;
        self.bytes.slice(start..start + self.value_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_have_their_read_share() {
        let mut rng = SplitMix64::new(7);
        for (workload, reads) in [
            (Workload::A, 50),
            (Workload::B, 95),
            (Workload::C, 100),
            (Workload::W, 0),
        ] {
            let n = 20_000;
            let got = (0..n).filter(|_| workload.next_op(&mut rng) == Op::Read).count();
            let percent = got as f64 * 100.0 / n as f64;
            assert!((percent - reads as f64).abs() < 1.5, "{workload:?}: {percent}% reads");
        }
        assert_eq!(Workload::Load.next_op(&mut rng), Op::Write);
    }

    #[test]
    fn below_stays_in_range_and_seeds_repeat() {
        let (mut a, mut b) = (SplitMix64::new(3), SplitMix64::new(3));
        for n in [1, 2, 3, 10, 1_000_003] {
            for _ in 0..1000 {
                let x = a.below(n);
                assert!(x < n);
                assert_eq!(x, b.below(n));
            }
        }
        assert!((0..1000).map(|_| a.unit()).all(|u| (0.0..1.0).contains(&u)));
    }

    #[test]
    fn zipfian_matches_its_formula() {
        let z = Zipfian::new(1000, ZIPFIAN_THETA);
        let mut rng = SplitMix64::new(11);
        let mut counts = vec![0u64; 1000];
        let draws = 200_000;
        for _ in 0..draws {
            counts[z.rank(rng.unit()) as usize] += 1;
        }
        for rank in [0usize, 1, 9] {
            let expected = 1.0 / ((rank + 1) as f64).powf(ZIPFIAN_THETA) / zeta(1000, ZIPFIAN_THETA);
            let got = counts[rank] as f64 / draws as f64;
            assert!(
                (got - expected).abs() < expected * 0.1,
                "rank {rank}: {got} vs {expected}"
            );
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[100]);
        assert_eq!(Zipfian::new(1, ZIPFIAN_THETA).rank(0.99), 0);
        assert_eq!(Zipfian::new(2, ZIPFIAN_THETA).rank(0.999), 1);
    }

    #[test]
    fn permutations_are_bijections() {
        for keys in [1u64, 2, 3, 7, 64, 100, 1000, 4096] {
            let p = Permutation::new(keys);
            let mut seen: Vec<u64> = (0..keys).map(|i| p.at(i)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..keys).collect::<Vec<_>>(), "keys = {keys}");
        }
        let p = Permutation::new(1000);
        assert!(p.at(0).abs_diff(p.at(1)) > 1, "neighbours are scattered");
    }

    #[test]
    fn chooser_spreads_hot_keys() {
        let chooser = KeyChooser::new(10_000, Dist::Zipfian);
        let mut rng = SplitMix64::new(5);
        let mut hottest = std::collections::HashMap::new();
        for _ in 0..50_000 {
            let k = chooser.next(&mut rng);
            assert!(k < 10_000);
            *hottest.entry(k).or_insert(0u32) += 1;
        }
        let mut top: Vec<(u64, u32)> = hottest.into_iter().collect();
        top.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        assert!(top[0].1 > 2_000, "the hottest key gets ~10%: {:?}", top[0]);
        assert!(
            top[0].0.abs_diff(top[1].0) > 1,
            "hot keys are not neighbours: {:?}",
            &top[..2]
        );
        let uniform = KeyChooser::new(10, Dist::Uniform);
        assert!((0..100).all(|_| uniform.next(&mut rng) < 10));
    }

    #[test]
    fn keys_and_values_have_their_sizes() {
        assert_eq!(&key_name(42)[..], b"bench-0000000042");
        let mut rng = SplitMix64::new(1);
        let pool = ValuePool::new(1024, &mut rng);
        let (a, b) = (pool.next(&mut rng), pool.next(&mut rng));
        assert_eq!((a.len(), b.len()), (1024, 1024));
        assert_ne!(a, b);
        assert_eq!(ValuePool::new(0, &mut rng).next(&mut rng).len(), 0);
    }
}
