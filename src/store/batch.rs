//! Group commit for login attempts. GetLoginUrl is the busiest write: each call stores one
//! attempt, and one durable commit per call caps the rate at what the database's commit (fsync)
//! rate allows. The writer gathers the attempts that arrive while earlier writes are in flight
//! and inserts them with one multi-row INSERT — one round trip and one commit for the batch.
//! Durability is unchanged: every caller returns only after its attempt is committed. Under low
//! load a batch is a single attempt, so nothing waits for a batch to fill.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{LoginAttempt, Store, StoreError};

/// Most attempts in one INSERT.
const MAX_BATCH: usize = 128;
/// Queue length before callers wait (backpressure).
const QUEUE: usize = 4096;

type Pending = (LoginAttempt, oneshot::Sender<Result<(), StoreError>>);

/// Inserts login attempts in batches; cheap to clone.
#[derive(Clone)]
pub struct AttemptWriter {
    tx: mpsc::Sender<Pending>,
}

impl AttemptWriter {
    /// Starts the writer; at most `max_in_flight` batches are written at once (keep it below
    /// the pool size so other queries still get connections). Stops when every clone is dropped.
    pub fn start(store: Store, max_in_flight: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for a free slot first: whatever queues up meanwhile joins this batch.
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                tokio::spawn(async move {
                    let (attempts, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let result = store.insert_attempts(&attempts).await;
                    drop(permit);
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                });
            }
        });
        Self { tx }
    }

    /// Stores one attempt; returns once it is committed.
    pub async fn insert(&self, attempt: LoginAttempt) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((attempt, done))
            .await
            .map_err(|_| StoreError::Unavailable("the attempt writer has stopped".into()))?;
        wait.await.map_err(|_| StoreError::Unavailable("the attempt writer has stopped".into()))?
    }
}
