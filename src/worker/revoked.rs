//! The ids of revoked tasks: Celery's `LimitedSet` (worker/state.py `revoked`), a set bounded
//! in size (oldest dropped first) whose members expire after a while.
//!
//! Defaults are Celery's: 50 000 ids, 10 800 s, overridable with the same environment variables
//! (`CELERY_WORKER_REVOKES_MAX`, `CELERY_WORKER_REVOKE_EXPIRES`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub const DEFAULT_MAXLEN: usize = 50_000;
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(10_800);

#[derive(Debug)]
pub struct RevokedSet {
    maxlen: usize,
    expires: Duration,
    /// id → insertion time.
    data: HashMap<String, Instant>,
    /// (insertion time, id): oldest first.
    order: BTreeSet<(Instant, String)>,
}

impl Default for RevokedSet {
    fn default() -> Self {
        Self::new(DEFAULT_MAXLEN, DEFAULT_EXPIRES)
    }
}

impl RevokedSet {
    pub fn new(maxlen: usize, expires: Duration) -> Self {
        Self {
            maxlen,
            expires,
            data: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Celery's limits, read from its environment variables where set.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
        let maxlen = var("CELERY_WORKER_REVOKES_MAX").map_or(DEFAULT_MAXLEN, |v: f64| v as usize);
        let expires = var("CELERY_WORKER_REVOKE_EXPIRES")
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .map_or(DEFAULT_EXPIRES, Duration::from_secs_f64);
        Self::new(maxlen, expires)
    }

    /// Adds an id (or refreshes its insertion time), then drops what is over the limits.
    pub fn add(&mut self, id: &str, now: Instant) {
        if let Some(old) = self.data.insert(id.to_string(), now) {
            self.order.remove(&(old, id.to_string()));
        }
        self.order.insert((now, id.to_string()));
        self.purge(now);
    }

    /// Drops the oldest ids over `maxlen` and every expired id.
    pub fn purge(&mut self, now: Instant) {
        while self.maxlen > 0 && self.data.len() > self.maxlen {
            self.pop_oldest();
        }
        if !self.expires.is_zero() {
            while let Some((at, _)) = self.order.first() {
                if now.saturating_duration_since(*at) < self.expires {
                    break;
                }
                self.pop_oldest();
            }
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_first() {
            self.data.remove(&id);
        }
    }

    /// Whether `id` is revoked (and not expired) at `now`.
    pub fn contains(&self, id: &str, now: Instant) -> bool {
        self.data.get(id).is_some_and(|at| {
            self.expires.is_zero() || now.saturating_duration_since(*at) < self.expires
        })
    }

    /// The unexpired ids with their insertion times, oldest first.
    pub fn entries(&self, now: Instant) -> Vec<(String, Instant)> {
        self.order
            .iter()
            .filter(|(at, _)| {
                self.expires.is_zero() || now.saturating_duration_since(*at) < self.expires
            })
            .map(|(at, id)| (id.clone(), *at))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_first() {
        let mut s = RevokedSet::new(3, Duration::from_secs(100));
        let t0 = Instant::now();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            s.add(id, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), 3);
        assert!(!s.contains("a", t0));
        let ids: Vec<_> = s.entries(t0).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["b", "c", "d"]);
        // Re-adding refreshes: "b" becomes the newest and "c" the oldest.
        s.add("b", t0 + Duration::from_millis(10));
        s.add("e", t0 + Duration::from_millis(11));
        let ids: Vec<_> = s.entries(t0).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["d", "b", "e"]);
    }

    #[test]
    fn members_expire() {
        let mut s = RevokedSet::new(0, Duration::from_secs(10));
        let t0 = Instant::now();
        s.add("a", t0);
        s.add("b", t0 + Duration::from_secs(5));
        assert!(s.contains("a", t0 + Duration::from_secs(9)));
        assert!(!s.contains("a", t0 + Duration::from_secs(10)));
        assert!(s.contains("b", t0 + Duration::from_secs(10)));
        s.purge(t0 + Duration::from_secs(12));
        assert_eq!(s.len(), 1);
        assert_eq!(s.entries(t0 + Duration::from_secs(12))[0].0, "b");
    }
}
