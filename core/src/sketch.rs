//! Mergeable sketches kept in rollup rows, so that unique counts and percentiles over any range
//! come from merging the hours of the range — never from adding hourly uniques or averaging
//! hourly percentiles, both of which are wrong.
//!
//! - [`Uniques`]: distinct keys (visitors, people). Exact up to [`EXACT_MAX`] keys (a sorted set
//!   of their 64-bit hashes: exact but for a hash collision, about 1 in 10^13 at that size), then
//!   HyperLogLog++ (the `hyperloglogplus` crate) at precision 14: 16,384 registers, a standard
//!   error of 1.04/√16384 ≈ 0.81%, bias-corrected for small and mid cardinalities.
//! - [`Latency`]: a DDSketch (the `sketches-ddsketch` crate, a port of Datadog's) with 1%
//!   relative accuracy: every quantile it answers is within 1% of a value of the data at that
//!   rank (`floor(q·(n−1))`), whatever the distribution, merged or not.
//!
//! Both are stored as `bytea`: one version byte, then the sketch as postcard.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sketches_ddsketch::{Config, DDSketch};

/// Keys counted exactly before a [`Uniques`] turns into HyperLogLog++ (16 KiB of hashes).
pub const EXACT_MAX: usize = 2048;
/// HyperLogLog++ precision: 2^14 registers.
const PRECISION: u8 = 14;
/// DDSketch relative accuracy.
pub const LATENCY_ACCURACY: f64 = 0.01;

const EXACT: u8 = 1;
const HLL: u8 = 2;
const DDSKETCH: u8 = 3;

/// A sketch's bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable sketch: {0}")]
pub struct SketchError(String);

/// The stable 64-bit hash of a key: the first 8 bytes of its SHA-256, the same in every process
/// and version (sketches are stored and merged across both).
pub fn key_hash(key: &str) -> u64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The hasher HyperLogLog++ runs its (already uniform) u64 keys through: SplitMix64's
/// finaliser, stable across processes, unlike the standard library's hashers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Mix;

/// See [`Mix`].
#[derive(Debug, Default)]
pub struct MixHasher(u64);

impl BuildHasher for Mix {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0)
    }
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type Hll = HyperLogLogPlus<u64, Mix>;

/// Distinct keys; see the module documentation.
#[derive(Clone, Debug)]
pub enum Uniques {
    Exact(BTreeSet<u64>),
    Estimated(Box<Hll>),
}

impl Default for Uniques {
    fn default() -> Self {
        Uniques::Exact(BTreeSet::new())
    }
}

fn new_hll() -> Hll {
    // PRECISION is within the crate's 4..=18: this cannot fail.
    #[allow(clippy::expect_used)]
    HyperLogLogPlus::new(PRECISION, Mix).expect("precision 14 is valid")
}

impl Uniques {
    pub fn insert(&mut self, key: &str) {
        self.insert_hash(key_hash(key));
    }

    pub fn insert_hash(&mut self, hash: u64) {
        match self {
            Uniques::Exact(set) => {
                set.insert(hash);
                if set.len() > EXACT_MAX {
                    self.promote();
                }
            }
            Uniques::Estimated(hll) => hll.insert(&hash),
        }
    }

    fn promote(&mut self) {
        if let Uniques::Exact(set) = self {
            let mut hll = new_hll();
            for hash in set.iter() {
                hll.insert(hash);
            }
            *self = Uniques::Estimated(Box::new(hll));
        }
    }

    /// Adds `other`'s keys.
    pub fn merge(&mut self, other: &Uniques) {
        match other {
            Uniques::Exact(keys) => {
                for hash in keys {
                    self.insert_hash(*hash);
                }
            }
            Uniques::Estimated(theirs) => {
                self.promote();
                if let Uniques::Estimated(ours) = self {
                    // Same precision by construction: cannot fail.
                    let _ = ours.merge(theirs);
                }
            }
        }
    }

    /// Distinct keys: exact while small, else the HyperLogLog++ estimate.
    pub fn count(&mut self) -> u64 {
        match self {
            Uniques::Exact(set) => set.len() as u64,
            Uniques::Estimated(hll) => hll.count().round().max(0.0) as u64,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let body = match self {
            Uniques::Exact(set) => {
                let mut out = Vec::with_capacity(1 + 8 * set.len());
                out.push(EXACT);
                for hash in set {
                    out.extend_from_slice(&hash.to_le_bytes());
                }
                return out;
            }
            Uniques::Estimated(hll) => {
                // Counting folds the insertion buffer (a hash set, in random order) into the
                // sorted sparse list: the same keys then always give the same bytes.
                let mut settled = hll.as_ref().clone();
                settled.count();
                postcard::to_allocvec(&settled)
            }
        };
        let mut out = vec![HLL];
        // Serialising plain data into a Vec cannot fail; an empty sketch is the safe fallback.
        out.extend(body.unwrap_or_default());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        match bytes.split_first() {
            Some((&EXACT, rest)) if rest.len() % 8 == 0 => Ok(Uniques::Exact(
                rest.chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        u64::from_le_bytes(b)
                    })
                    .collect(),
            )),
            Some((&HLL, rest)) => postcard::from_bytes::<Hll>(rest)
                .map(|hll| Uniques::Estimated(Box::new(hll)))
                .map_err(|e| SketchError(e.to_string())),
            _ => Err(SketchError("not a uniques sketch".into())),
        }
    }
}

/// Latency percentiles; see the module documentation.
#[derive(Clone)]
pub struct Latency(DDSketch);

impl Default for Latency {
    fn default() -> Self {
        // 2048 bins at 1% cover 1e-9 ms to far beyond a day: never collapses for latencies.
        Latency(DDSketch::new(Config::new(LATENCY_ACCURACY, 2048, 1.0e-9)))
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency(count = {})", self.0.count())
    }
}

impl Latency {
    pub fn add(&mut self, value: f64) {
        if value.is_finite() {
            self.0.add(value.max(0.0));
        }
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same configuration by construction: cannot fail.
        let _ = self.0.merge(&other.0);
    }

    /// The `q` quantile (0 to 1), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q.clamp(0.0, 1.0)).ok().flatten()
    }

    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![DDSKETCH];
        out.extend(postcard::to_allocvec(&self.0).unwrap_or_default());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        match bytes.split_first() {
            Some((&DDSKETCH, rest)) => postcard::from_bytes::<DDSketch>(rest)
                .map(Latency)
                .map_err(|e| SketchError(e.to_string())),
            _ => Err(SketchError("not a latency sketch".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn relative_error(estimate: f64, exact: f64) -> f64 {
        (estimate - exact).abs() / exact
    }

    #[test]
    fn small_sets_are_exact_and_survive_bytes() {
        let mut u = Uniques::default();
        for i in 0..1000 {
            u.insert(&format!("visitor-{}", i % 700));
        }
        assert_eq!(u.count(), 700);
        let mut back = Uniques::from_bytes(&u.to_bytes()).unwrap();
        assert_eq!(back.count(), 700);
        assert!(matches!(back, Uniques::Exact(_)));
    }

    #[test]
    fn large_sets_stay_within_two_percent_merged_across_hours() {
        // 48 "hours" of visitors, overlapping: the union is what a range must count.
        let mut hours: Vec<Uniques> = Vec::new();
        for h in 0..48u64 {
            let mut u = Uniques::default();
            for v in (h * 2_000)..(h * 2_000 + 5_000) {
                u.insert(&format!("v{v}"));
            }
            hours.push(Uniques::from_bytes(&u.to_bytes()).unwrap());
        }
        let mut range = Uniques::default();
        for h in &hours {
            range.merge(h);
        }
        let exact = (47 * 2_000 + 5_000) as f64;
        let estimate = range.count() as f64;
        assert!(
            relative_error(estimate, exact) <= 0.02,
            "{estimate} for {exact}"
        );
        // Adding hourly counts instead would be badly wrong.
        let summed: u64 = hours.iter_mut().map(Uniques::count).sum();
        assert!(summed as f64 > exact * 2.0);
    }

    #[test]
    fn the_exact_to_estimated_switch_is_seamless() {
        for n in [EXACT_MAX - 1, EXACT_MAX, EXACT_MAX + 1, EXACT_MAX * 3] {
            let mut u = Uniques::default();
            for i in 0..n {
                u.insert(&format!("k{i}"));
            }
            let got = u.count() as f64;
            assert!(relative_error(got, n as f64) <= 0.02, "{got} for {n}");
            let mut back = Uniques::from_bytes(&u.to_bytes()).unwrap();
            assert_eq!(back.count() as f64, got);
        }
    }

    #[test]
    fn the_same_keys_give_the_same_bytes() {
        let build = |order: &mut dyn Iterator<Item = u32>| {
            let mut u = Uniques::default();
            for i in order {
                u.insert(&format!("k{i}"));
            }
            u.to_bytes()
        };
        for n in [100u32, 3_000, 50_000] {
            let forward = build(&mut (0..n));
            let backward = build(&mut (0..n).rev());
            assert_eq!(forward, backward, "{n} keys");
        }
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_panic() {
        assert!(Uniques::from_bytes(&[]).is_err());
        assert!(Uniques::from_bytes(&[1, 2, 3]).is_err());
        assert!(Uniques::from_bytes(&[2, 255, 255]).is_err());
        assert!(Latency::from_bytes(&[3, 0]).is_err());
        assert!(Latency::from_bytes(&[9]).is_err());
    }

    /// The value at rank floor(q·(n−1)) of sorted data: the quantile DDSketch approximates.
    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() as f64 - 1.0)) as usize]
    }

    proptest! {
        /// Percentiles of merged hourly sketches stay within 2% of the exact percentiles of all
        /// the values, whatever the values (the sketch's bound is 1%).
        #[test]
        fn merged_percentiles_stay_within_two_percent(
            hours in prop::collection::vec(prop::collection::vec(0.05f64..60_000.0, 1..300), 1..12)
        ) {
            let mut all: Vec<f64> = Vec::new();
            let mut merged = Latency::default();
            for values in &hours {
                let mut hour = Latency::default();
                for v in values {
                    hour.add(*v);
                }
                let hour = Latency::from_bytes(&hour.to_bytes()).unwrap();
                merged.merge(&hour);
                all.extend(values);
            }
            all.sort_by(f64::total_cmp);
            prop_assert_eq!(merged.count(), all.len() as u64);
            for q in [0.5, 0.95, 0.99] {
                let exact = exact_quantile(&all, q);
                let got = merged.quantile(q).unwrap();
                prop_assert!(relative_error(got, exact) <= 0.02, "q{} {} vs {}", q, got, exact);
            }
        }

        #[test]
        fn uniques_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Uniques::from_bytes(&bytes);
            let _ = Latency::from_bytes(&bytes);
        }
    }
}
