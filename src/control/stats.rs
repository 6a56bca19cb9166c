//! The figures behind `stats` and `conf`, shaped like a Celery 5.5 worker's replies.
//!
//! Process figures come from `/proc/self` (Linux; zeros elsewhere), standing in for Python's
//! `resource.getrusage`.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::worker::Shared;

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which is 100 on every architecture.
const USER_HZ: f64 = 100.0;

/// `stats`: the keys of `WorkController.stats()`.
pub(crate) fn stats(shared: &Shared) -> Value {
    let c = &shared.config;
    let pid = std::process::id();
    let broker = c.broker.parts();
    let (hard, soft) = c.default_time_limits();
    json!({
        "total": shared.state.totals(),
        "pid": pid,
        "clock": shared.clock.value().to_string(),
        "uptime": shared.started.elapsed().as_secs(),
        "pool": {
            "implementation": "astroworker:ThreadPool",
            "max-concurrency": shared.pool.size(),
            // Tasks run on threads of this one process.
            "processes": [pid],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": [soft.unwrap_or(0.0), hard.unwrap_or(0.0)],
        },
        "broker": {
            "hostname": broker.hostname,
            "userid": broker.userid,
            "virtual_host": c.broker.db.to_string(),
            "port": broker.port,
            "insist": false,
            "ssl": broker.ssl,
            "transport": broker.transport,
            "connect_timeout": 4,
            "transport_options": {"visibility_timeout": c.visibility_timeout.as_secs_f64()},
            "login_method": null,
            "uri_prefix": null,
            "heartbeat": 120.0,
            "failover_strategy": "round-robin",
            "alternates": [],
        },
        "prefetch_count": shared.pool.prefetch_count(),
        "rusage": rusage(),
    })
}

/// `conf`: the settings this worker runs with that differ from Celery's defaults, under
/// Celery's setting names (URLs with their password masked).
pub(crate) fn conf(shared: &Shared) -> Value {
    let c = &shared.config;
    let mut m = Map::new();
    m.insert("broker_url".into(), json!(c.broker.to_string()));
    m.insert(
        "result_backend".into(),
        json!(c.backend.as_ref().map(ToString::to_string)),
    );
    let expires = c.result_expires.map_or(0, |d| d.as_secs());
    if expires != 86_400 {
        m.insert("result_expires".into(), json!(expires));
    }
    if c.track_started {
        m.insert("task_track_started".into(), json!(true));
    }
    if c.acks_late {
        m.insert("task_acks_late".into(), json!(true));
    }
    if let Some(t) = c.time_limit {
        m.insert("task_time_limit".into(), json!(t));
    }
    if let Some(t) = c.soft_time_limit {
        m.insert("task_soft_time_limit".into(), json!(t));
    }
    if c.prefetch_multiplier != 4 {
        m.insert(
            "worker_prefetch_multiplier".into(),
            json!(c.prefetch_multiplier),
        );
    }
    if c.task_events {
        m.insert("worker_send_task_events".into(), json!(true));
    }
    if c.visibility_timeout != Duration::from_secs(3600) {
        m.insert(
            "broker_transport_options".into(),
            json!({"visibility_timeout": c.visibility_timeout.as_secs_f64()}),
        );
    }
    Value::Object(m)
}

/// `resource.getrusage(RUSAGE_SELF)`'s fields, from `/proc/self/{stat,status,io}`.
fn rusage() -> Value {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    // Fields after the parenthesised command name (which may contain spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // `rest` starts at field 3 (state): field n is fields[n - 3].
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let status_kb = |key: &str| -> u64 { proc_value(&status, key) };
    json!({
        "utime": field(14) as f64 / USER_HZ,
        "stime": field(15) as f64 / USER_HZ,
        "maxrss": status_kb("VmHWM:"),
        "ixrss": 0,
        "idrss": 0,
        "isrss": 0,
        "minflt": field(10),
        "majflt": field(12),
        "nswap": 0,
        "inblock": proc_value(&io, "read_bytes:") / 512,
        "oublock": proc_value(&io, "write_bytes:") / 512,
        "msgsnd": 0,
        "msgrcv": 0,
        "nsignals": 0,
        "nvcsw": status_kb("voluntary_ctxt_switches:"),
        "nivcsw": status_kb("nonvoluntary_ctxt_switches:"),
    })
}

/// The first number after `key` on its line of a `/proc` key-value file.
fn proc_value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Seconds since boot (`/proc/uptime`), close to Python's `time.monotonic()`; 0 when unknown.
pub(crate) fn seconds_since_boot() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_values() {
        let text = "Name:\tx\nVmHWM:\t  5120 kB\nvoluntary_ctxt_switches:\t7\n";
        assert_eq!(proc_value(text, "VmHWM:"), 5120);
        assert_eq!(proc_value(text, "voluntary_ctxt_switches:"), 7);
        assert_eq!(proc_value(text, "Missing:"), 0);
    }

    #[test]
    fn rusage_has_python_keys() {
        let r = rusage();
        let keys: Vec<_> = r.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap",
                "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw"
            ]
        );
        if cfg!(target_os = "linux") {
            assert!(r["maxrss"].as_u64().unwrap() > 0);
        }
    }
}
