//! The verified-token cache behind ValidateToken and the gateway checks.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{Claims, TokenRejection};

/// A cache of verified tokens, keyed by the SHA-256 of the whole token, so ValidateToken pays
/// for a signature check once per token rather than once per call. Bounded in entries and in
/// bytes (each entry is charged its token's length plus overhead); an entry is dropped once its
/// token has expired — when it is next looked up, and by [`super::TokenIssuer::purge_cache`] — and
/// when a shard is full its expired entries go first, then the whole shard. The revocation
/// check is never cached.
pub(super) struct VerifiedCache {
    shards: Vec<Mutex<CacheShard>>,
    /// The `exp` leeway, exactly as [`super::TokenIssuer::verify`] applies it.
    leeway_secs: i64,
}

/// Whether a token with this `exp` is refused at `now` (the rule of `verify`).
fn expired(exp: i64, now: i64, leeway_secs: i64) -> bool {
    now >= exp + leeway_secs
}

#[derive(Default)]
struct CacheShard {
    entries: HashMap<[u8; 32], (Arc<Claims>, usize)>,
    bytes: usize,
}

impl CacheShard {
    fn retain_live(&mut self, now: i64, leeway_secs: i64) {
        self.entries.retain(|_, (c, _)| !expired(c.exp, now, leeway_secs));
        self.bytes = self.entries.values().map(|(_, cost)| cost).sum();
    }
}

const CACHE_SHARDS: usize = 16;
/// 65,536 entries in all.
const CACHE_SHARD_CAPACITY: usize = 4096;
/// 32 MiB in all.
const CACHE_SHARD_BYTES: usize = 2 * 1024 * 1024;
/// What an entry costs beyond its token's length: the key, the map slot, the `Arc`, the
/// `Claims` struct and its strings' allocation headers.
const CACHE_ENTRY_OVERHEAD: usize = 256;

impl VerifiedCache {
    pub(super) fn new(leeway_secs: i64) -> Self {
        Self { shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(), leeway_secs }
    }

    fn shard(&self, key: &[u8; 32]) -> MutexGuard<'_, CacheShard> {
        self.shards[usize::from(key[0]) % CACHE_SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached claims, unless the token has expired (then the entry is dropped).
    pub(super) fn get(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> Option<Result<Arc<Claims>, TokenRejection>> {
        let mut shard = self.shard(key);
        let (claims, cost) = shard.entries.get(key)?;
        if expired(claims.exp, now, self.leeway_secs) {
            let cost = *cost;
            shard.entries.remove(key);
            shard.bytes -= cost;
            return Some(Err(TokenRejection::Expired));
        }
        Some(Ok(Arc::clone(claims)))
    }

    pub(super) fn insert(&self, key: [u8; 32], claims: Arc<Claims>, token_len: usize, now: i64) {
        let cost = token_len + CACHE_ENTRY_OVERHEAD;
        let mut shard = self.shard(&key);
        let full = |s: &CacheShard| {
            s.entries.len() >= CACHE_SHARD_CAPACITY || s.bytes + cost > CACHE_SHARD_BYTES
        };
        if full(&shard) {
            shard.retain_live(now, self.leeway_secs);
            if full(&shard) {
                shard.entries.clear();
                shard.bytes = 0;
            }
        }
        if let Some((_, old)) = shard.entries.insert(key, (claims, cost)) {
            shard.bytes -= old;
        }
        shard.bytes += cost;
    }

    pub(super) fn purge_expired(&self, now: i64) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|e| e.into_inner()).retain_live(now, self.leeway_secs);
        }
    }

    pub(super) fn clear(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.entries.clear();
            shard.bytes = 0;
        }
    }

    /// Entries and charged bytes, for the metrics.
    pub(super) fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, b), shard| {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            (n + shard.entries.len(), b + shard.bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEEWAY: i64 = 2;

    fn claims(exp: i64, groups: usize) -> Arc<Claims> {
        Arc::new(Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "s".into(),
            exp,
            iat: 0,
            nbf: 0,
            jti: "j".into(),
            sid: "sid".into(),
            email: None,
            email_verified: None,
            name: None,
            preferred_username: None,
            groups: (0..groups).map(|i| format!("group-{i}")).collect(),
        })
    }

    fn key(shard: u8, n: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[0] = shard;
        k[1..5].copy_from_slice(&n.to_be_bytes());
        k
    }

    #[test]
    fn an_expired_entry_is_dropped_when_looked_up_and_by_a_purge() {
        let cache = VerifiedCache::new(LEEWAY);
        let now = 1_000_000;
        cache.insert(key(0, 1), claims(now + 60, 0), 500, now);
        cache.insert(key(0, 2), claims(now + 60, 0), 500, now);
        assert!(matches!(cache.get(&key(0, 1), now), Some(Ok(_))));
        assert!(
            matches!(cache.get(&key(0, 1), now + 60 + LEEWAY - 1), Some(Ok(_))),
            "accepted until exp + leeway"
        );
        let later = now + 60 + LEEWAY;
        assert_eq!(
            cache.get(&key(0, 1), later).map(|r| r.err()),
            Some(Some(TokenRejection::Expired))
        );
        assert!(cache.get(&key(0, 1), later).is_none(), "the expired entry is gone");
        assert_eq!(cache.usage().0, 1);
        cache.purge_expired(later);
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn a_shard_stays_within_its_byte_and_entry_budgets() {
        let cache = VerifiedCache::new(LEEWAY);
        let now = 1_000_000;
        // Large tokens: the byte budget binds long before the entry budget.
        for n in 0..2_000 {
            cache.insert(key(3, n), claims(now + 600, 100), 6144, now);
            let (entries, bytes) = cache.usage();
            assert!(bytes <= CACHE_SHARD_BYTES, "{bytes} bytes after {n} inserts");
            assert!(entries <= CACHE_SHARD_CAPACITY);
        }
        // Small tokens: the entry budget binds.
        for n in 0..10_000 {
            cache.insert(key(4, n), claims(now + 600, 0), 100, now);
        }
        let shard = cache.shard(&key(4, 0));
        assert!(shard.entries.len() <= CACHE_SHARD_CAPACITY);
        assert_eq!(shard.bytes, shard.entries.values().map(|(_, c)| c).sum::<usize>());
    }
}
