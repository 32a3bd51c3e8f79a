//! The in-memory half of replay protection: a per-process, bounded memory of recently seen
//! `(key id, nonce)` pairs, consulted before any database work. The other half, which makes
//! writes safe across restarts and instances, is [`crate::replay`]; its module docs give the
//! whole design.
//!
//! A signature verifies while its `created` is within ±`max_skew` of the gateway clock, and a
//! replay is the *same* signed request, so it carries the same `created` (changing it would
//! break the signature). Pairs are therefore kept in one bucket per `created` second, a lookup
//! checks only the request's own bucket, and a bucket goes as a whole once its second has left
//! the window: O(1) work per request, memory proportional to the traffic of one window. Only
//! requests whose signature verified reach this cache, so nobody without a key can fill it.
//!
//! The memory is bounded by `max_entries` and never refuses a request for being full (the old
//! cap answered 503 to everything). When a shard is full it **forgets its oldest seconds** and
//! remembers how far it forgot (`floor`): a signature created before the floor is answered
//! [`NonceVerdict::Forgotten`], which callers treat as "cannot vouch for it" (reads are refused,
//! writes are left to the database claim). The floor never passes `now - ALWAYS_KEPT_SECS`, so
//! fresh requests are never refused by it. Only if a shard cannot even hold those newest
//! seconds (more than about `max_entries / (ALWAYS_KEPT_SECS + 1)` requests per second in one
//! process, far beyond what one process serves) is a request served without being remembered.
//!
//! Entries are 128-bit digests of the pair rather than the strings, and the cache is split into
//! shards so concurrent requests rarely wait on the same lock. The digest is two SipHash-1-3
//! values under random per-process keys, not a cryptographic hash: a replay always maps to the
//! same digest, so detection never depends on the hash's strength; a collision could only make
//! a fresh nonce look replayed, which takes about 2^64 pairs to happen by chance and cannot be
//! aimed at without the keys. It costs a fraction of a SHA-256 on every signed request.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher as _, BuildHasherDefault, Hash as _, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 16;
/// The newest seconds a full shard keeps no matter what: requests signed this recently are never
/// refused for having been forgotten (network latency plus clock skew stay well below it).
const ALWAYS_KEPT_SECS: i64 = 2;

/// What the memory knows about a verified request's `(key id, nonce)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceVerdict {
    /// Not seen before (now remembered, unless the memory could not hold even its newest
    /// seconds; see the module docs).
    Fresh,
    /// Seen before within the window: a replay.
    Replayed,
    /// Signed before what this process still remembers (it forgot older seconds to stay within
    /// its bound): it may or may not be a replay.
    Forgotten,
}

/// A bounded, expiring set of `(key id, nonce)` pairs.
#[derive(Debug)]
pub struct NonceCache {
    max_skew_secs: i64,
    max_entries: usize,
    max_entries_per_shard: usize,
    shards: Vec<Mutex<Shard>>,
    /// Two independently keyed hashers: together a 128-bit digest.
    digest_keys: [RandomState; 2],
    /// Pairs dropped before their signatures expired, to stay within `max_entries`.
    evicted: AtomicU64,
    /// Requests served without being remembered (a shard could not hold its newest seconds).
    unremembered: AtomicU64,
}

#[derive(Debug, Default)]
struct Shard {
    /// `created` second → digests of the pairs signed in it.
    buckets: BTreeMap<i64, HashSet<u128, BuildHasherDefault<PreHashed>>>,
    entries: usize,
    /// Signatures created before this second may have been forgotten early.
    floor: i64,
}

/// A snapshot for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceCacheStatus {
    pub entries: usize,
    pub max_entries: usize,
    pub evicted: u64,
    pub unremembered: u64,
}

impl NonceCache {
    /// `max_entries` bounds memory (about 25 to 40 bytes per entry, depending on how full each
    /// second's set is).
    pub fn new(max_skew_secs: i64, max_entries: usize) -> Self {
        let max_entries = max_entries.max(SHARDS);
        Self {
            max_skew_secs: max_skew_secs.max(1),
            max_entries,
            max_entries_per_shard: max_entries.div_ceil(SHARDS),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        floor: i64::MIN,
                        ..Shard::default()
                    })
                })
                .collect(),
            digest_keys: [RandomState::new(), RandomState::new()],
            evicted: AtomicU64::new(0),
            unremembered: AtomicU64::new(0),
        }
    }

    /// Looks the pair up and remembers it if it is new. `created` is the signature's timestamp,
    /// already checked to be within the skew window around `now`.
    pub fn check_and_insert(
        &self,
        key_id: &str,
        nonce: &str,
        created: i64,
        now: i64,
    ) -> NonceVerdict {
        let digest = self.pair_digest(key_id, nonce);
        // The low bits pick the shard; the set hashes with the high bits (see `PreHashed`).
        let shard_index = (digest as usize) % SHARDS;
        let mut shard = self.shards[shard_index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());

        // Seconds whose signatures can no longer verify are no longer needed.
        let oldest_live = now.saturating_sub(self.max_skew_secs);
        while let Some(bucket) = shard.buckets.first_entry() {
            if *bucket.key() >= oldest_live {
                break;
            }
            let removed = bucket.remove().len();
            shard.entries -= removed;
        }

        if created < shard.floor {
            return NonceVerdict::Forgotten;
        }
        if shard
            .buckets
            .get(&created)
            .is_some_and(|bucket| bucket.contains(&digest))
        {
            return NonceVerdict::Replayed;
        }

        if shard.entries >= self.max_entries_per_shard {
            // Full: forget the oldest seconds, but never the newest ones.
            let keep_from = now.saturating_sub(ALWAYS_KEPT_SECS);
            while shard.entries >= self.max_entries_per_shard {
                let Some(bucket) = shard.buckets.first_entry() else {
                    break;
                };
                if *bucket.key() >= keep_from {
                    break;
                }
                let second = *bucket.key();
                let removed = bucket.remove().len();
                shard.entries -= removed;
                shard.floor = shard.floor.max(second + 1);
                self.evicted.fetch_add(removed as u64, Ordering::Relaxed);
            }
            if created < shard.floor {
                return NonceVerdict::Forgotten;
            }
            if shard.entries >= self.max_entries_per_shard {
                self.unremembered.fetch_add(1, Ordering::Relaxed);
                return NonceVerdict::Fresh;
            }
        }
        shard.buckets.entry(created).or_default().insert(digest);
        shard.entries += 1;
        NonceVerdict::Fresh
    }

    /// Pairs currently remembered.
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

    pub fn status(&self) -> NonceCacheStatus {
        NonceCacheStatus {
            entries: self.len(),
            max_entries: self.max_entries,
            evicted: self.evicted.load(Ordering::Relaxed),
            unremembered: self.unremembered.load(Ordering::Relaxed),
        }
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
    use NonceVerdict::{Forgotten, Fresh, Replayed};

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_pair_is_accepted_once() {
        let cache = NonceCache::new(300, 1000);
        assert_eq!(cache.check_and_insert("k1", "n1", NOW, NOW), Fresh);
        assert_eq!(cache.check_and_insert("k1", "n1", NOW, NOW + 10), Replayed);
        // The same nonce under another key is a different pair.
        assert_eq!(cache.check_and_insert("k2", "n1", NOW, NOW), Fresh);
        assert_eq!(cache.check_and_insert("k1n", "1", NOW, NOW), Fresh);
        assert_eq!(cache.len(), 3);
        assert_ne!(cache.pair_digest("ab", "c"), cache.pair_digest("a", "bc"));
    }

    #[test]
    fn a_replay_carries_its_original_created_time() {
        // Only a key holder can sign the same nonce with another `created`; that is a new
        // request as far as this memory goes (the database claim still refuses it for writes).
        let cache = NonceCache::new(300, 1000);
        assert_eq!(cache.check_and_insert("k", "n", NOW - 250, NOW), Fresh);
        assert_eq!(
            cache.check_and_insert("k", "n", NOW - 250, NOW + 40),
            Replayed
        );
        assert_eq!(cache.check_and_insert("k", "n", NOW + 250, NOW), Fresh);
    }

    #[test]
    fn entries_expire_after_their_signature_would() {
        let cache = NonceCache::new(300, 10_000);
        assert_eq!(cache.check_and_insert("k", "old", NOW - 290, NOW), Fresh);
        assert_eq!(cache.check_and_insert("k", "future", NOW + 290, NOW), Fresh);
        // Still inside the window: remembered.
        assert_eq!(
            cache.check_and_insert("k", "old", NOW - 290, NOW + 5),
            Replayed
        );
        // Once `created + skew` has passed, the old second is dropped. Expiry is lazy, per
        // shard, on the next request there: these fresh requests reach every shard.
        let later = NOW - 290 + 301;
        for index in 0..1000 {
            let nonce = format!("fresh{index}");
            assert_eq!(cache.check_and_insert("k", &nonce, later, later), Fresh);
        }
        assert_eq!(cache.len(), 1001, "the old entry is gone, the others stay");
        // ... but the future-dated one stays until its own window ends.
        assert_eq!(
            cache.check_and_insert("k", "future", NOW + 290, later),
            Replayed
        );
    }

    #[test]
    fn a_full_cache_forgets_its_oldest_seconds_and_refuses_nothing_fresh() {
        // Room for about 8 seconds of this traffic; 100 seconds of it is 12.5 times the cap.
        let cap = 16 * 32;
        let cache = NonceCache::new(300, cap);
        let mut verdicts = Vec::new();
        for second in 0..100 {
            for index in 0..64 {
                let now = NOW + second;
                verdicts.push(cache.check_and_insert("k", &format!("n{second}-{index}"), now, now));
                assert!(cache.len() <= cap, "the bound holds at every step");
            }
        }
        assert!(verdicts.iter().all(|verdict| *verdict == Fresh));
        let status = cache.status();
        assert!(status.evicted > 0 && status.unremembered == 0, "{status:?}");

        // A request signed long ago (still within the skew window) is no longer vouched for
        // once its second was forgotten; a replay of a recent one is still caught.
        let now = NOW + 99;
        assert_eq!(cache.check_and_insert("k", "n1-1", NOW + 1, now), Forgotten);
        assert_eq!(cache.check_and_insert("k", "n99-63", now, now), Replayed);
        assert_eq!(
            cache.check_and_insert("k", "late", now - ALWAYS_KEPT_SECS, now),
            Fresh,
            "requests signed within the last seconds are never refused"
        );
    }

    #[test]
    fn a_shard_that_cannot_hold_its_newest_seconds_serves_without_remembering() {
        let cache = NonceCache::new(300, 16);
        let verdicts: Vec<_> = (0..1000)
            .map(|index| cache.check_and_insert("k", &format!("n{index}"), NOW, NOW))
            .collect();
        assert!(verdicts.iter().all(|verdict| *verdict == Fresh));
        assert!(cache.len() <= 16);
        assert_eq!(cache.status().unremembered, 1000 - cache.len() as u64);
    }
}
