//! Which sessions are revoked, as every replica sees it — so ValidateToken answers from memory.
//!
//! Revocations are written to the database (`sessions.revoked_at`). Each replica keeps the set
//! of sessions revoked within the last `token_ttl` (plus slack): an older revocation no longer
//! matters, because no token minted before it can still be valid and none can be minted after.
//! The set is re-read every `revocation_sync_interval` (1 s by default), which bounds how long a
//! logout on one replica can go unseen by another; the replica that revokes sees it at once.
//!
//! The set is bounded ([`CAPACITY`] sessions, about 100 bytes each). Should more sessions have
//! been revoked within the window than it holds, it keeps the newest and says so: a session it
//! does not hold is then [`Revocation::Unknown`], and the caller asks the database — slower, never
//! wrong.

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tracing::warn;

use crate::store::{Store, StoreError};

/// Extra history kept beyond the token lifetime, to absorb clock differences between replicas.
const SLACK_SECS: i64 = 120;
/// The most revocations a replica keeps in memory (about 25 MB).
pub const CAPACITY: usize = 250_000;

/// What the set knows about a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    NotRevoked,
    /// The set overflowed and does not hold this session: ask the database.
    Unknown,
}

pub struct Revocations {
    /// Revoked session id → when it was revoked (unix seconds).
    revoked: RwLock<HashMap<String, i64>>,
    /// How far back revocations matter: token lifetime plus slack.
    window_secs: i64,
    capacity: usize,
    /// More revocations exist within the window than the set holds.
    overflowed: AtomicBool,
}

impl Revocations {
    pub fn new(token_ttl: Duration) -> Self {
        Self::with_capacity(token_ttl, CAPACITY)
    }

    pub fn with_capacity(token_ttl: Duration, capacity: usize) -> Self {
        Self {
            revoked: RwLock::new(HashMap::new()),
            window_secs: token_ttl.as_secs() as i64 + SLACK_SECS,
            capacity: capacity.max(1),
            overflowed: AtomicBool::new(false),
        }
    }

    pub fn check(&self, session_id: &str) -> Revocation {
        if self.revoked.read().unwrap_or_else(|e| e.into_inner()).contains_key(session_id) {
            Revocation::Revoked
        } else if self.overflowed.load(Ordering::Acquire) {
            Revocation::Unknown
        } else {
            Revocation::NotRevoked
        }
    }

    /// Whether the set holds fewer revocations than exist (answers then need the database).
    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// How many revocations this replica tracks.
    pub fn len(&self) -> usize {
        self.revoked.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a revocation made by this replica, effective immediately here. (Beyond the
    /// capacity the set grows until the next sync trims it: by at most what this replica
    /// revokes in one `revocation_sync_interval`.)
    pub fn add(&self, session_id: &str, revoked_at: i64) {
        let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        revoked.insert(session_id.to_string(), revoked_at);
        if revoked.len() > self.capacity {
            self.set_overflowed(true);
        }
    }

    /// Re-reads the recent revocations from the database (the newest `capacity` of them).
    pub async fn sync(&self, store: &Store, now: i64) -> Result<usize, StoreError> {
        let since = now - self.window_secs;
        let rows = store.revoked_since(since, self.capacity + 1).await?;
        let mut overflowed = rows.len() > self.capacity;
        let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        // Keep local additions that a lagging read may not show yet; drop what aged out.
        revoked.retain(|_, at| *at >= since);
        revoked.extend(rows.into_iter().take(self.capacity));
        if revoked.len() > self.capacity {
            overflowed = true;
            let mut times: Vec<i64> = revoked.values().copied().collect();
            let cut = times.len() - self.capacity;
            let (_, oldest_kept, _) = times.select_nth_unstable(cut);
            let oldest_kept = *oldest_kept;
            revoked.retain(|_, at| *at >= oldest_kept);
        }
        self.set_overflowed(overflowed);
        Ok(revoked.len())
    }

    fn set_overflowed(&self, now: bool) {
        if self.overflowed.swap(now, Ordering::AcqRel) != now {
            if now {
                warn!(
                    capacity = self.capacity,
                    "more sessions were revoked within the token lifetime than the revocation set holds; validations of sessions it does not hold now ask the database"
                );
            } else {
                warn!("the revocation set holds every recent revocation again");
            }
        }
    }

    /// Syncs every `interval` until the task is aborted.
    pub async fn run(self: std::sync::Arc<Self>, store: Store, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.sync(&store, crate::tokens::now()).await {
                warn!(error = %e, "revocation sync failed; ValidateToken answers from the last known set");
            }
        }
    }
}
