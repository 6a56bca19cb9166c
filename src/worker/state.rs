//! What the worker holds right now: reserved (prefetched) requests, ETA requests waiting in the
//! timer, and running ones — plus counters. Everything here is unacked on the broker until it
//! runs (acks early) or finishes (acks late), so it is also the list of what a shutdown must
//! give back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::revoked::RevokedSet;
use crate::protocol::Request;
use crate::tasks::{CancelFlag, CancelReason};

/// A received request waiting to run.
pub struct Reserved {
    pub request: Arc<Request>,
    pub received: SystemTime,
    /// The prefetch slot it occupies; released when the message is acked.
    pub prefetch: Option<OwnedSemaphorePermit>,
    /// Whether its task type's rate limit was already applied (it took its token).
    pub rate_checked: bool,
}

/// A running request.
pub struct Active {
    pub request: Arc<Request>,
    pub started: SystemTime,
    pub cancel: Arc<CancelFlag>,
    /// Whether its message has been acked (acks early) or is still unacked (acks late).
    pub acked: bool,
}

#[derive(Default)]
pub struct WorkerState {
    reserved: Mutex<VecDeque<Reserved>>,
    /// Requests held until a time: ETA requests and rate-limited ones, earliest first.
    scheduled: Mutex<Vec<(DateTime<Utc>, Reserved)>>,
    active: Mutex<HashMap<String, Active>>,
    totals: Mutex<BTreeMap<String, u64>>,
    processed: AtomicU64,
    revoked: Mutex<RevokedSet>,
    /// `[hard, soft]` per task name, set by the `time_limit` command; replaces the task's own.
    time_limits: Mutex<HashMap<String, TimeLimitOverride>>,
    /// Signalled when a request becomes ready to run.
    pub work_ready: Notify,
    /// Signalled when the earliest ETA may have changed.
    pub timer_changed: Notify,
}

/// Time limits set remotely for one task name (`None`: no limit), kept as the JSON numbers
/// they were given as, so that `registered` shows them as Python would.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimeLimitOverride {
    pub hard: Option<serde_json::Number>,
    pub soft: Option<serde_json::Number>,
}

/// A snapshot of a running request, for remote inspection.
pub struct ActiveInfo {
    pub request: Arc<Request>,
    pub started: SystemTime,
    pub acked: bool,
}

impl WorkerState {
    /// Empty state with the revoked-id limits taken from Celery's environment variables.
    pub fn new() -> Self {
        Self {
            revoked: Mutex::new(RevokedSet::from_env()),
            ..Self::default()
        }
    }

    /// Flags ids as revoked: requests reaching the worker (or still waiting in it) with one of
    /// these ids are discarded as REVOKED instead of run.
    pub fn revoke<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut set = lock(&self.revoked);
        for id in ids {
            set.add(id, now);
        }
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        lock(&self.revoked).contains(id, Instant::now())
    }

    /// Revoked ids, oldest first, with when they were revoked.
    pub fn revoked(&self) -> Vec<(String, Instant)> {
        lock(&self.revoked).entries(Instant::now())
    }

    /// Asks the running requests with one of `ids` to stop (`revoke --terminate`); returns them.
    pub fn terminate(&self, ids: &[String]) -> Vec<Arc<Request>> {
        lock(&self.active)
            .values()
            .filter(|a| ids.contains(&a.request.id))
            .map(|a| {
                a.cancel.cancel(CancelReason::Terminated);
                a.request.clone()
            })
            .collect()
    }

    pub fn set_time_limits(&self, task: &str, limits: TimeLimitOverride) {
        lock(&self.time_limits).insert(task.to_string(), limits);
    }

    pub fn time_limits(&self, task: &str) -> Option<TimeLimitOverride> {
        lock(&self.time_limits).get(task).cloned()
    }

    /// Prefetched requests not started yet (not the ETA ones), in start order.
    pub fn reserved_requests(&self) -> Vec<Arc<Request>> {
        lock(&self.reserved)
            .iter()
            .map(|r| r.request.clone())
            .collect()
    }

    /// Requests waiting for their ETA, earliest first.
    pub fn scheduled_requests(&self) -> Vec<Arc<Request>> {
        lock(&self.scheduled)
            .iter()
            .filter(|(_, r)| r.request.eta.is_some())
            .map(|(_, r)| r.request.clone())
            .collect()
    }

    /// Running requests, oldest first.
    pub fn active_requests(&self) -> Vec<ActiveInfo> {
        let mut out: Vec<ActiveInfo> = lock(&self.active)
            .values()
            .map(|a| ActiveInfo {
                request: a.request.clone(),
                started: a.started,
                acked: a.acked,
            })
            .collect();
        out.sort_by_key(|a| a.started);
        out
    }

    pub fn push_reserved(&self, r: Reserved) {
        lock(&self.reserved).push_back(r);
        self.work_ready.notify_one();
    }

    pub fn pop_reserved(&self) -> Option<Reserved> {
        lock(&self.reserved).pop_front()
    }

    /// Holds a request in the timer until `due`.
    pub fn schedule(&self, due: DateTime<Utc>, r: Reserved) {
        let mut s = lock(&self.scheduled);
        let pos = s.partition_point(|(at, _)| *at <= due);
        s.insert(pos, (due, r));
        drop(s);
        self.timer_changed.notify_one();
    }

    /// When the earliest held request is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        lock(&self.scheduled).first().map(|(at, _)| *at)
    }

    /// Removes and returns the held requests due at `now`.
    pub fn take_due(&self, now: DateTime<Utc>) -> Vec<Reserved> {
        let mut s = lock(&self.scheduled);
        let n = s.partition_point(|(at, _)| *at <= now);
        s.drain(..n).map(|(_, r)| r).collect()
    }

    /// Everything received but not started (reserved and held), for giving back.
    pub fn drain_waiting(&self) -> Vec<Reserved> {
        let mut out: Vec<Reserved> = lock(&self.reserved).drain(..).collect();
        out.extend(lock(&self.scheduled).drain(..).map(|(_, r)| r));
        out
    }

    pub fn start(&self, tag: &str, active: Active) {
        lock(&self.active).insert(tag.to_string(), active);
    }

    pub fn mark_acked(&self, tag: &str) {
        if let Some(a) = lock(&self.active).get_mut(tag) {
            a.acked = true;
        }
    }

    pub fn finish(&self, tag: &str) -> Option<Active> {
        let done = lock(&self.active).remove(tag)?;
        self.processed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.totals)
            .entry(done.request.task.clone())
            .or_default() += 1;
        Some(done)
    }

    /// Asks every running task to stop; returns the delivery tags of those still unacked.
    pub fn cancel_active(&self, reason: crate::tasks::CancelReason) -> Vec<String> {
        let active = lock(&self.active);
        for a in active.values() {
            a.cancel.cancel(reason);
        }
        active
            .iter()
            .filter(|(_, a)| !a.acked)
            .map(|(tag, _)| tag.clone())
            .collect()
    }

    pub fn active_count(&self) -> usize {
        lock(&self.active).len()
    }

    pub fn reserved_count(&self) -> usize {
        lock(&self.reserved).len() + lock(&self.scheduled).len()
    }

    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    pub fn totals(&self) -> BTreeMap<String, u64> {
        lock(&self.totals).clone()
    }

    /// Delivery tags of every message this worker holds unacked.
    pub fn unacked_tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = lock(&self.reserved)
            .iter()
            .chain(lock(&self.scheduled).iter().map(|(_, r)| r))
            .map(|r| r.request.delivery.tag.clone())
            .collect();
        tags.extend(
            lock(&self.active)
                .iter()
                .filter(|(_, a)| !a.acked)
                .map(|(t, _)| t.clone()),
        );
        tags
    }
}

/// Locks a mutex; a panic while holding one of these small maps leaves data that is still
/// consistent, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
