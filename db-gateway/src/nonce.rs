//! Replay protection: remembers `(key id, nonce)` pairs for as long as their signature could
//! still verify, and refuses a pair seen before.
//!
//! A signature verifies while its `created` is within ±`max_skew` of the gateway clock, so a
//! nonce only needs remembering until `created + max_skew`. Entries are grouped into
//! time buckets by `created`; whole buckets are dropped once every signature in them has
//! expired, which keeps expiry O(1) per request and memory proportional to the traffic of one
//! window. Only requests whose signature already verified reach this cache, so an attacker
//! without a key cannot fill it.
//!
//! Entries are 128-bit digests of the pair rather than the strings, and the cache is split into
//! shards so concurrent requests rarely wait on the same lock. A hard cap bounds memory: when a
//! shard is full the request is refused (fail closed) rather than forgetting nonces early.
//!
//! The digest is two SipHash-1-3 values under random per-process keys, not a cryptographic
//! hash: a replay always maps to the same digest, so detection never depends on the hash's
//! strength; a collision could only make a fresh nonce look replayed, which takes about 2^64
//! pairs to happen by chance and cannot be aimed at without the keys. It costs a fraction of a
//! SHA-256 on every signed request.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher as _, BuildHasherDefault, Hash as _, Hasher};
use std::sync::Mutex;

const SHARDS: usize = 16;
/// Buckets per skew window: finer buckets free memory sooner, coarser ones mean fewer lookups.
const BUCKETS_PER_WINDOW: i64 = 8;

/// Why a nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRejection {
    /// The pair was seen before within the window.
    Replayed,
    /// The cache is at its cap; the caller should shed load.
    Full,
}

/// A bounded, expiring set of `(key id, nonce)` pairs.
#[derive(Debug)]
pub struct NonceCache {
    max_skew_secs: i64,
    bucket_secs: i64,
    max_entries_per_shard: usize,
    shards: Vec<Mutex<Shard>>,
    /// Two independently keyed hashers: together a 128-bit digest.
    digest_keys: [RandomState; 2],
}

#[derive(Debug, Default)]
struct Shard {
    /// Bucket number (`created / bucket_secs`) → digests of pairs created in it.
    buckets: BTreeMap<i64, HashSet<u128, BuildHasherDefault<PreHashed>>>,
    entries: usize,
}

impl NonceCache {
    /// `max_entries` bounds memory (about 40 bytes per entry).
    pub fn new(max_skew_secs: i64, max_entries: usize) -> Self {
        let max_skew_secs = max_skew_secs.max(1);
        Self {
            max_skew_secs,
            bucket_secs: (max_skew_secs / BUCKETS_PER_WINDOW).max(1),
            max_entries_per_shard: max_entries.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            digest_keys: [RandomState::new(), RandomState::new()],
        }
    }

    /// Records the pair, or refuses it if already present (or if the cache is full).
    /// `created` is the signature's timestamp, already checked to be within the skew window.
    pub fn check_and_insert(
        &self,
        key_id: &str,
        nonce: &str,
        created: i64,
        now: i64,
    ) -> Result<(), NonceRejection> {
        let digest = self.pair_digest(key_id, nonce);
        // The low bits pick the shard; the set hashes with the high bits (see `PreHashed`).
        let shard_index = (digest as usize) % SHARDS;
        let mut shard = self.shards[shard_index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());

        // A bucket may go once the newest signature it could hold has expired.
        let oldest_live_bucket = (now - self.max_skew_secs).div_euclid(self.bucket_secs);
        while let Some(entry) = shard.buckets.first_entry() {
            if *entry.key() >= oldest_live_bucket {
                break;
            }
            let removed = entry.remove().len();
            shard.entries -= removed;
        }

        if shard
            .buckets
            .values()
            .any(|bucket| bucket.contains(&digest))
        {
            return Err(NonceRejection::Replayed);
        }
        if shard.entries >= self.max_entries_per_shard {
            return Err(NonceRejection::Full);
        }
        shard
            .buckets
            .entry(created.div_euclid(self.bucket_secs))
            .or_default()
            .insert(digest);
        shard.entries += 1;
        Ok(())
    }

    /// Pairs currently remembered (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .entries
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NonceCache {
    /// `str`'s `Hash` ends each string with a terminator, which keeps `("ab","c")` and
    /// `("a","bc")` apart.
    fn pair_digest(&self, key_id: &str, nonce: &str) -> u128 {
        let [high, low] = self.digest_keys.each_ref().map(|keys| {
            let mut hasher = keys.build_hasher();
            key_id.hash(&mut hasher);
            nonce.hash(&mut hasher);
            hasher.finish()
        });
        (u128::from(high) << 64) | u128::from(low)
    }
}

/// The set's keys are already uniform digests, so hashing them again would only cost time.
#[derive(Debug, Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is expected; fold anything else so the hasher stays correct.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = (value >> 64) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_pair_is_accepted_once() {
        let cache = NonceCache::new(300, 1000);
        assert_eq!(cache.check_and_insert("k1", "n1", NOW, NOW), Ok(()));
        assert_eq!(
            cache.check_and_insert("k1", "n1", NOW, NOW + 10),
            Err(NonceRejection::Replayed)
        );
        // The same nonce under another key is a different pair.
        assert_eq!(cache.check_and_insert("k2", "n1", NOW, NOW), Ok(()));
        assert_eq!(cache.check_and_insert("k1n", "1", NOW, NOW), Ok(()));
        assert_eq!(cache.len(), 3);
        assert_ne!(cache.pair_digest("ab", "c"), cache.pair_digest("a", "bc"));
    }

    #[test]
    fn replay_is_caught_whatever_the_created_time() {
        let cache = NonceCache::new(300, 1000);
        cache.check_and_insert("k", "n", NOW - 250, NOW).unwrap();
        assert_eq!(
            cache.check_and_insert("k", "n", NOW + 250, NOW),
            Err(NonceRejection::Replayed)
        );
    }

    #[test]
    fn entries_expire_after_their_signature_would() {
        let cache = NonceCache::new(300, 1000);
        cache.check_and_insert("k", "old", NOW - 290, NOW).unwrap();
        cache
            .check_and_insert("k", "future", NOW + 290, NOW)
            .unwrap();
        // Still inside the window: remembered.
        assert_eq!(
            cache.check_and_insert("k", "old", NOW - 290, NOW + 5),
            Err(NonceRejection::Replayed)
        );
        // Long after `created + skew` (plus one bucket of slack) the old entry is forgotten, so
        // the same pair is new again (expiry is lazy, per shard, on the next insert there) ...
        let later = NOW - 290 + 300 + 2 * cache.bucket_secs;
        assert_eq!(cache.check_and_insert("k", "old", later, later), Ok(()));
        // ... but the future-dated one stays until its own window ends.
        assert_eq!(
            cache.check_and_insert("k", "future", NOW + 290, later),
            Err(NonceRejection::Replayed)
        );
    }

    #[test]
    fn memory_is_capped() {
        let cache = NonceCache::new(300, SHARDS);
        let mut refused = 0;
        for index in 0..200 {
            if cache.check_and_insert("k", &format!("n{index}"), NOW, NOW)
                == Err(NonceRejection::Full)
            {
                refused += 1;
            }
        }
        assert!(cache.len() <= SHARDS);
        assert_eq!(refused, 200 - cache.len());
    }
}
