//! Per-task-type rate limits, applied as Celery's consumer applies them: a token bucket of
//! capacity 1 per task name, so limited tasks start at most once per `1 / rate` seconds and a
//! task that must wait is held by the worker (still reserved and unacked) until its turn.
//!
//! Rates are written as Celery writes them: `"10/m"`, `"5/s"`, `"100/h"`, or a bare number
//! per second; `0` or an empty string means no limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RateError {
    /// kombu's `rate()` raises `ValueError` for the number…
    #[error("could not convert string to float: {0:?}")]
    Number(String),
    /// …and `KeyError` for an unknown unit.
    #[error("unknown rate unit {0:?} (use /s, /m or /h)")]
    Unit(String),
}

/// Tasks per second for a Celery rate string (kombu's `rate()`); 0 = unlimited.
pub fn parse_rate(text: &str) -> Result<f64, RateError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0.0);
    }
    let (ops, unit) = text.split_once('/').unwrap_or((text, "s"));
    let n: f64 = ops
        .trim()
        .parse()
        .map_err(|_| RateError::Number(ops.to_string()))?;
    let per_second = match unit.trim() {
        "" | "s" => n,
        "m" => n / 60.0,
        "h" => n / 3600.0,
        other => return Err(RateError::Unit(other.to_string())),
    };
    Ok(if per_second.is_finite() && per_second > 0.0 {
        per_second
    } else {
        0.0
    })
}

struct Bucket {
    /// The rate as it was given, for `registered`.
    text: String,
    interval: Duration,
    /// When the next token is available.
    next_free: Instant,
}

/// The rate limits of one worker.
#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// Sets (or with an unlimited rate, removes) the limit of `task`. Errors leave it as it was.
    pub fn set(&self, task: &str, rate: &str) -> Result<bool, RateError> {
        let per_second = parse_rate(rate)?;
        let mut buckets = lock(&self.buckets);
        if per_second == 0.0 {
            buckets.remove(task);
            return Ok(false);
        }
        buckets.insert(
            task.to_string(),
            Bucket {
                text: rate.trim().to_string(),
                interval: Duration::from_secs_f64(1.0 / per_second),
                next_free: Instant::now(),
            },
        );
        Ok(true)
    }

    /// The limit of `task` as it was given, if any.
    pub fn get(&self, task: &str) -> Option<String> {
        lock(&self.buckets).get(task).map(|b| b.text.clone())
    }

    /// Takes `task`'s next token: how long the caller must hold the task before it may start
    /// (zero when it may start now, or when the task has no limit).
    pub fn admit(&self, task: &str, now: Instant) -> Duration {
        let mut buckets = lock(&self.buckets);
        let Some(b) = buckets.get_mut(task) else {
            return Duration::ZERO;
        };
        let start = b.next_free.max(now);
        b.next_free = start + b.interval;
        start - now
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_kombu() {
        assert_eq!(parse_rate("10/m").unwrap(), 10.0 / 60.0);
        assert_eq!(parse_rate("5/s").unwrap(), 5.0);
        assert_eq!(parse_rate("36/h").unwrap(), 0.01);
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert_eq!(parse_rate("").unwrap(), 0.0);
        assert_eq!(parse_rate("0/m").unwrap(), 0.0);
        assert_eq!(parse_rate("x/m"), Err(RateError::Number("x".into())));
        assert_eq!(parse_rate("3/d"), Err(RateError::Unit("d".into())));
    }

    #[test]
    fn spaces_starts_one_interval_apart() {
        let limits = RateLimits::default();
        assert!(limits.set("t", "2/s").unwrap());
        let now = Instant::now();
        let holds: Vec<Duration> = (0..4).map(|_| limits.admit("t", now)).collect();
        let ms: Vec<u128> = holds.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 500, 1000, 1500]);
        // After a quiet spell the bucket is full again (capacity 1: no burst beyond one).
        let later = now + Duration::from_secs(10);
        assert_eq!(limits.admit("t", later), Duration::ZERO);
        assert_eq!(limits.admit("t", later).as_millis(), 500);
        assert_eq!(limits.admit("other", now), Duration::ZERO);
        assert_eq!(limits.get("t").as_deref(), Some("2/s"));
        assert!(!limits.set("t", "0").unwrap());
        assert_eq!(limits.admit("t", now), Duration::ZERO);
        assert!(limits.set("t", "1/q").is_err());
    }
}
