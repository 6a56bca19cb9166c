//! Worker configuration: the `celery worker` flags and environment variables, resolved once into
//! a [`WorkerConfig`] the rest of the worker reads.

use std::time::Duration;

use crate::broker::url::{RedisUrl, UrlError};

pub const DEFAULT_BROKER: &str = "redis://localhost:6379/0";
pub const DEFAULT_QUEUE: &str = "celery";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("{0}")]
    Invalid(String),
}

/// What the worker does with a task name it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownTasks {
    /// Like Celery: log, discard, and store FAILURE `NotRegistered`.
    Reject,
    /// Put it back on the queue for another worker (mixed fleets sharing a queue).
    Requeue,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub broker: RedisUrl,
    /// `None`: results are not stored.
    pub backend: Option<RedisUrl>,
    pub queues: Vec<String>,
    pub concurrency: usize,
    pub hostname: String,
    pub prefetch_multiplier: usize,
    pub acks_late: bool,
    pub track_started: bool,
    pub time_limit: Option<f64>,
    pub soft_time_limit: Option<f64>,
    pub visibility_timeout: Duration,
    pub result_expires: Option<Duration>,
    pub unknown_tasks: UnknownTasks,
    pub task_events: bool,
    /// Seconds between worker-heartbeat events; `None` with `--without-heartbeat`.
    pub heartbeat_interval: Option<f64>,
    /// `--http`: where `/health` and `/metrics` are served.
    pub http: Option<std::net::SocketAddr>,
    /// Describes the compute devices for `/health`.
    pub devices: Vec<String>,
    /// Whether to load NVML for GPU telemetry (`--gpus` other than `none`).
    pub gpu_telemetry: bool,
    /// `(task name, rate)` from `--task-rate-limit`.
    pub rate_limits: Vec<(String, String)>,
    pub diagnostic_tasks: bool,
}

impl WorkerConfig {
    /// `prefetch_multiplier × concurrency`; 0 means no limit (Celery's meaning).
    pub fn prefetch_count(&self) -> usize {
        self.prefetch_multiplier.saturating_mul(self.concurrency)
    }

    /// `[hard, soft]` default limits from the command line.
    pub fn default_time_limits(&self) -> (Option<f64>, Option<f64>) {
        (self.time_limit, self.soft_time_limit)
    }
}

/// The broker URL: the flag or `CELERY_BROKER_URL` (handled by clap), else `BROKER_URL`,
/// `CELERY_BROKER`, `REDIS_URL`, else the local default.
pub fn resolve_broker(flag: Option<&str>) -> Result<RedisUrl, UrlError> {
    let env = env_first(&["BROKER_URL", "CELERY_BROKER", "REDIS_URL"]);
    RedisUrl::parse(flag.or(env.as_deref()).unwrap_or(DEFAULT_BROKER))
}

/// The result backend: the flag or `CELERY_RESULT_BACKEND`, else `REDIS_URL`, else the broker.
/// `disabled`/`none` turns result storage off.
pub fn resolve_backend(
    flag: Option<&str>,
    broker: &RedisUrl,
) -> Result<Option<RedisUrl>, UrlError> {
    let env = env_first(&["REDIS_URL"]);
    match flag.or(env.as_deref()) {
        Some("disabled" | "none" | "disabled://") => Ok(None),
        Some(url) => RedisUrl::parse(url).map(Some),
        None => Ok(Some(broker.clone())),
    }
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// Splits `-Q a,b` (repeatable) into queue names, minus `-X` exclusions; `celery` when empty.
pub fn resolve_queues(queues: &[String], exclude: &[String]) -> Result<Vec<String>, ConfigError> {
    let split = |v: &[String]| -> Vec<String> {
        v.iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let excluded = split(exclude);
    let mut names = split(queues);
    if names.is_empty() {
        names.push(DEFAULT_QUEUE.to_string());
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !excluded.contains(&n) && !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err(ConfigError::Invalid(
            "no queues left to consume after -X/--exclude-queues".into(),
        ));
    }
    Ok(out)
}

/// Celery's node name: `name@host`, with `%h` (host name), `%n` (its first label) and `%d`
/// (its domain) expanded; a name without `@` becomes `celery@name`.
pub fn node_name(pattern: Option<&str>, host: &str) -> String {
    let raw = pattern.unwrap_or("celery@%h");
    let raw = if raw.contains('@') {
        raw.to_string()
    } else {
        format!("celery@{raw}")
    };
    let (short, domain) = host.split_once('.').unwrap_or((host, ""));
    raw.replace("%h", host)
        .replace("%n", short)
        .replace("%d", domain)
        .replace("%%", "%")
}

pub fn local_hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert_eq!(node_name(None, "vm.example.org"), "celery@vm.example.org");
        assert_eq!(
            node_name(Some("w1@%h"), "vm.example.org"),
            "w1@vm.example.org"
        );
        assert_eq!(node_name(Some("w1@%n"), "vm.example.org"), "w1@vm");
        assert_eq!(
            node_name(Some("%d-w@%n"), "vm.example.org"),
            "example.org-w@vm"
        );
        assert_eq!(node_name(Some("gpu"), "vm"), "celery@gpu");
    }

    #[test]
    fn queues() {
        let q = resolve_queues(&["a,b".into(), "c".into(), "a".into()], &["b".into()]).unwrap();
        assert_eq!(q, ["a", "c"]);
        assert_eq!(resolve_queues(&[], &[]).unwrap(), ["celery"]);
        assert!(resolve_queues(&["a".into()], &["a".into()]).is_err());
    }
}
