//! Which sessions are revoked, as every replica sees it — so ValidateToken answers from memory.
//!
//! Revocations are written to the database (`sessions.revoked_at`). Each replica keeps the set
//! of sessions revoked within the last `token_ttl` (plus slack): an older revocation no longer
//! matters, because no token minted before it can still be valid and none can be minted after.
//! The set is re-read every `revocation_sync_interval` (1 s by default), which bounds how long a
//! logout on one replica can go unseen by another; the replica that revokes sees it at once.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use tracing::warn;

use crate::store::{Store, StoreError};

/// Extra history kept beyond the token lifetime, to absorb clock differences between replicas.
const SLACK_SECS: i64 = 120;

pub struct Revocations {
    /// Revoked session id → when it was revoked (unix seconds).
    revoked: RwLock<HashMap<String, i64>>,
    /// How far back revocations matter: token lifetime plus slack.
    window_secs: i64,
}

impl Revocations {
    pub fn new(token_ttl: Duration) -> Self {
        Self {
            revoked: RwLock::new(HashMap::new()),
            window_secs: token_ttl.as_secs() as i64 + SLACK_SECS,
        }
    }

    pub fn is_revoked(&self, session_id: &str) -> bool {
        self.revoked.read().unwrap_or_else(|e| e.into_inner()).contains_key(session_id)
    }

    /// How many revocations this replica tracks.
    pub fn len(&self) -> usize {
        self.revoked.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a revocation made by this replica, effective immediately here.
    pub fn add(&self, session_id: &str, revoked_at: i64) {
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session_id.to_string(), revoked_at);
    }

    /// Re-reads the recent revocations from the database.
    pub async fn sync(&self, store: &Store, now: i64) -> Result<usize, StoreError> {
        let since = now - self.window_secs;
        let rows = store.revoked_since(since).await?;
        let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        // Keep local additions that a lagging read may not show yet; drop what aged out.
        revoked.retain(|_, at| *at >= since);
        revoked.extend(rows);
        Ok(revoked.len())
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
