//! How many login attempts are pending, as this replica knows it: kept in memory so that
//! `/metrics` (and, later, admission caps) cost no table scan.
//!
//! Counted per expiry second: an attempt started here counts until it is exchanged here or
//! expires. An attempt exchanged on another replica still counts here until it expires, so
//! across replicas the figure is an upper bound per replica, never an undercount.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

#[derive(Default)]
pub struct PendingAttempts {
    /// (expiry second, attempts) in expiry order.
    buckets: Mutex<VecDeque<(i64, u64)>>,
    total: AtomicU64,
}

impl PendingAttempts {
    /// An attempt was stored that expires at `expires_at`.
    pub fn started(&self, expires_at: i64, now: i64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut buckets, now);
        match buckets.back_mut() {
            Some((at, n)) if *at == expires_at => *n += 1,
            Some((at, _)) if *at > expires_at => {
                // The clock stepped back: keep the order.
                let i = buckets.partition_point(|(at, _)| *at < expires_at);
                match buckets.get_mut(i) {
                    Some((at, n)) if *at == expires_at => *n += 1,
                    _ => buckets.insert(i, (expires_at, 1)),
                }
            }
            _ => buckets.push_back((expires_at, 1)),
        }
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt that expires at `expires_at` was exchanged (consumed) on this replica.
    pub fn finished(&self, expires_at: i64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let i = buckets.partition_point(|(at, _)| *at < expires_at);
        if let Some((at, n)) = buckets.get_mut(i)
            && *at == expires_at
            && *n > 0
        {
            *n -= 1;
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Attempts started here, not exchanged here, and not expired at `now`.
    pub fn count(&self, now: i64) -> u64 {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut buckets, now);
        self.total.load(Ordering::Relaxed)
    }

    fn expire(&self, buckets: &mut VecDeque<(i64, u64)>, now: i64) {
        while let Some(&(at, n)) = buckets.front() {
            if at >= now {
                break;
            }
            buckets.pop_front();
            self.total.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_until_exchanged_or_expired() {
        let pending = PendingAttempts::default();
        pending.started(1_600, 1_000);
        pending.started(1_600, 1_000);
        pending.started(1_601, 1_001);
        pending.started(1_599, 1_001); // the clock stepped back a second
        assert_eq!(pending.count(1_001), 4);
        pending.finished(1_600);
        pending.finished(9_999); // started elsewhere: nothing to take off
        assert_eq!(pending.count(1_001), 3);
        assert_eq!(pending.count(1_600), 2, "the 1,599 attempt expired");
        assert_eq!(pending.count(1_601), 1);
        assert_eq!(pending.count(1_602), 0);
        pending.finished(1_601);
        assert_eq!(pending.count(1_602), 0, "never below zero");
    }
}
