//! Group commit for the hot writes. Each login writes three times — GetLoginUrl stores an
//! attempt, ExchangeCode consumes it and stores the session — and one statement and one durable
//! commit per write caps the login rate at the database's statement and commit rate. A
//! [`Batcher`] gathers the requests that arrive while earlier writes are in flight and hands
//! them to one set-based statement: one round trip and one commit for the batch.
//!
//! Durability and atomicity are unchanged: every caller returns only after the statement that
//! carries its request has committed, and each request's result is its own (a consume still
//! succeeds for exactly one caller). Under low load a batch is a single request, so nothing
//! waits for a batch to fill.
//!
//! Isolation: a batch runs as one statement or one transaction, so when it fails nothing of it
//! was written. If the failure may belong to one member (a duplicate key, a constraint, a
//! trigger — anything but the database being unavailable), each member is run again alone, so
//! every caller gets its own result and no member fails because of another. When the database
//! is unavailable every member would fail alone too: they all get that error at once.

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;

/// Most requests in one statement.
const MAX_BATCH: usize = 128;
/// Queue length before callers wait (backpressure).
const QUEUE: usize = 4096;

type Waiter<R> = oneshot::Sender<Result<R, StoreError>>;
type BatchFuture<R> = Pin<Box<dyn Future<Output = Result<Vec<R>, StoreError>> + Send>>;

/// Runs requests of type `T` in batches; the batch function returns one result per request, in
/// order. Cheap to clone; stops when every clone is dropped.
pub struct Batcher<T, R> {
    tx: mpsc::Sender<(T, Waiter<R>)>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<T: Clone + Send + 'static, R: Clone + Send + 'static> Batcher<T, R> {
    /// Starts the batcher; at most `max_in_flight` batches run at once (keep it below the pool
    /// size so other queries still get connections).
    pub fn start<F>(max_in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> BatchFuture<R> + Send + Sync + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<(T, Waiter<R>)>(QUEUE);
        let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
        let run = Arc::new(run);
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
                let run = Arc::clone(&run);
                tokio::spawn(async move {
                    let (items, waiters): (Vec<T>, Vec<Waiter<R>>) = batch.into_iter().unzip();
                    let alone = (items.len() > 1).then(|| items.clone());
                    let result = checked(run(items).await, waiters.len());
                    match (result, alone) {
                        (Ok(results), _) => {
                            for (waiter, r) in waiters.into_iter().zip(results) {
                                let _ = waiter.send(Ok(r));
                            }
                        }
                        (Err(e), Some(items)) if !matches!(e, StoreError::Unavailable(_)) => {
                            tracing::debug!(error = %e, members = items.len(), "batch failed; running its members alone");
                            for (item, waiter) in items.into_iter().zip(waiters) {
                                let result =
                                    checked(run(vec![item]).await, 1).and_then(|mut one| {
                                        one.pop().ok_or_else(|| {
                                            StoreError::Other(
                                                "a batch of one returned no result".into(),
                                            )
                                        })
                                    });
                                let _ = waiter.send(result);
                            }
                        }
                        (Err(e), _) => {
                            for waiter in waiters {
                                let _ = waiter.send(Err(e.clone()));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// Runs one request; returns its result once the batch carrying it has committed.
    /// (See the module documentation for what a failing batch means for each caller.)
    pub async fn call(&self, item: T) -> Result<R, StoreError> {
        let stopped = || StoreError::Unavailable("the batch writer has stopped".into());
        let (done, wait) = oneshot::channel();
        self.tx.send((item, done)).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

/// A batch's results, refused unless there is exactly one per request.
fn checked<R>(result: Result<Vec<R>, StoreError>, expected: usize) -> Result<Vec<R>, StoreError> {
    match result {
        Ok(results) if results.len() == expected => Ok(results),
        Ok(results) => Err(StoreError::Other(format!(
            "a batch of {expected} returned {} results",
            results.len()
        ))),
        Err(e) => Err(e),
    }
}
