//! Celery events (`celeryev`): what Flower and `celery events` build their view of a fleet from.
//!
//! Events are PUBLISHed on `/{db}.celeryev/<routing key>` (kombu's fanout over Redis pub/sub) as
//! kombu envelopes with `headers {"hostname": node}`. Worker events (`worker-online`,
//! `worker-heartbeat`, `worker-offline`) always flow, as in Celery; task events only with `-E`
//! or after `enable_events`. Task events are batched on routing key `task.multi` with a JSON
//! array body, exactly as a Python worker sends them.
//!
//! Sending never waits on Redis: events go through a channel to one publisher task, which
//! drains whatever is queued into one batch. A Redis outage loses events (as it does in Celery),
//! never tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::broker::envelope::Envelope;
use crate::broker::url::RedisUrl;
use crate::connection::RedisConn;
use crate::control::clock::LamportClock;

pub const EXCHANGE: &str = "celeryev";
/// Celery's `worker_heartbeat` default (`--heartbeat-interval`), in seconds.
pub const HEARTBEAT_FREQ: f64 = 2.0;
/// A Python worker flushes its task-event buffer at this many events.
const MAX_BATCH: usize = 24;

/// `/{db}.celeryev/<routing_key>`: the pub/sub channel kombu publishes a fanout message on.
pub fn channel(db: i64, routing_key: &str) -> String {
    format!("/{db}.{EXCHANGE}/{routing_key}")
}

/// The routing key of an event type: `task-succeeded` → `task.succeeded`.
pub fn routing_key(kind: &str) -> String {
    kind.replace('-', ".")
}

/// The software fields of worker events (`sw_ident`, `sw_ver`, `sw_sys`); `sw_sys` is what
/// Python's `platform.system()` says.
fn software() -> [(&'static str, Value); 3] {
    let system = if cfg!(target_os = "linux") {
        "Linux"
    } else if cfg!(target_os = "macos") {
        "Darwin"
    } else {
        std::env::consts::OS
    };
    [
        ("sw_ident", json!("astroworker")),
        ("sw_ver", json!(env!("CARGO_PKG_VERSION"))),
        ("sw_sys", json!(system)),
    ]
}

/// Counters a worker event reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerCounts {
    pub active: usize,
    pub processed: u64,
}

/// One queued event: a worker event is published alone, task events are batched.
struct Queued {
    body: Map<String, Value>,
    task: bool,
}

/// The event dispatcher of one worker.
pub struct Events {
    hostname: String,
    pid: u32,
    utcoffset: i64,
    clock: Arc<LamportClock>,
    /// `-E`: task events are always on (and cannot be disabled remotely, Celery's quirk).
    task_events_flag: bool,
    /// Task events switched on by `enable_events`.
    task_events_remote: AtomicBool,
    tx: mpsc::UnboundedSender<Queued>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    /// When the last worker event was queued (for `/health`).
    last_worker_event: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Events {
    pub fn new(hostname: &str, clock: Arc<LamportClock>, task_events: bool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            hostname: hostname.to_string(),
            pid: std::process::id(),
            utcoffset: utcoffset(),
            clock,
            task_events_flag: task_events,
            task_events_remote: AtomicBool::new(false),
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            last_worker_event: std::sync::Mutex::new(None),
        }
    }

    /// Whether task events are sent now.
    pub fn task_events(&self) -> bool {
        self.task_events_flag || self.task_events_remote.load(Ordering::SeqCst)
    }

    /// Celery's `enable_events`/`disable_events` on the dispatcher's groups: a `-E` worker
    /// (all groups) is "already enabled" and cannot be disabled; one without `-E` toggles the
    /// `task` group. Returns whether anything changed.
    pub fn set_task_events(&self, on: bool) -> bool {
        if self.task_events_flag {
            return false;
        }
        self.task_events_remote.swap(on, Ordering::SeqCst) != on
    }

    /// Queues a task event (`task-received`, …) when task events are on. `fields` come after
    /// the common ones, in the order given.
    pub fn task(
        &self,
        kind: &str,
        uuid: &str,
        fields: impl IntoIterator<Item = (&'static str, Value)>,
    ) {
        if !self.task_events() {
            return;
        }
        let mut extra = vec![("uuid", json!(uuid))];
        extra.extend(fields);
        self.queue(kind, extra, true);
    }

    /// Queues a worker event with its counters (`freq` 2 s, or `freq` for a requested beat).
    pub fn worker(&self, kind: &str, freq: f64, counts: WorkerCounts) {
        let mut fields = vec![
            ("freq", json!(freq)),
            ("active", json!(counts.active)),
            ("processed", json!(counts.processed)),
            ("loadavg", json!(loadavg())),
        ];
        fields.extend(software());
        self.queue(kind, fields, false);
    }

    /// Time since the last worker event (online or heartbeat) was sent.
    pub fn since_last_worker_event(&self) -> Option<Duration> {
        self.last_worker_event
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()))
    }

    fn queue(&self, kind: &str, fields: Vec<(&'static str, Value)>, task: bool) {
        if !task && let Ok(mut last) = self.last_worker_event.lock() {
            *last = Some(std::time::Instant::now());
        }
        let mut body = Map::new();
        body.insert("hostname".into(), json!(self.hostname));
        body.insert("utcoffset".into(), json!(self.utcoffset));
        body.insert("pid".into(), json!(self.pid));
        body.insert("clock".into(), json!(self.clock.forward()));
        for (k, v) in fields {
            body.insert(k.into(), v);
        }
        body.insert("timestamp".into(), json!(crate::broker::epoch_seconds()));
        body.insert("type".into(), json!(kind));
        // The receiver lives as long as the publisher task; after it stopped, events are moot.
        let _ = self.tx.send(Queued { body, task });
    }

    /// Runs the publisher until every sender is gone and the queue is drained, or until
    /// `stop` fires and what was queued by then has been sent.
    pub async fn publish_loop(&self, url: RedisUrl, stop: impl std::future::Future<Output = ()>) {
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let conn = match RedisConn::new(&url, Some(Duration::from_secs(5))) {
            Ok(c) => c.with_retry_for(Duration::from_secs(2)),
            Err(e) => {
                tracing::error!(target: "astroworker::events", "events disabled: {e}");
                return;
            }
        };
        let publisher = Publisher {
            conn,
            db: url.db,
            hostname: self.hostname.clone(),
        };
        tokio::pin!(stop);
        loop {
            let first = tokio::select! {
                e = rx.recv() => match e { Some(e) => e, None => return },
                () = &mut stop => break,
            };
            publisher.flush(first, &mut rx).await;
        }
        while let Ok(e) = rx.try_recv() {
            publisher.flush(e, &mut rx).await;
        }
    }
}

struct Publisher {
    conn: RedisConn,
    db: i64,
    hostname: String,
}

impl Publisher {
    /// Sends `first` and what is queued behind it: task events together as one `task.multi`
    /// batch (at most [`MAX_BATCH`]), a worker event on its own.
    async fn flush(&self, first: Queued, rx: &mut mpsc::UnboundedReceiver<Queued>) {
        if !first.task {
            self.send(Value::Object(first.body.clone()), &first.body)
                .await;
            return;
        }
        let mut batch = vec![first.body];
        let mut worker_events = Vec::new();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) if q.task => batch.push(q.body),
                Ok(q) => worker_events.push(q.body),
                Err(_) => break,
            }
        }
        let kind_of_first = batch[0].clone();
        let body = Value::Array(batch.into_iter().map(Value::Object).collect());
        self.send_multi(body, &kind_of_first).await;
        for w in worker_events {
            self.send(Value::Object(w.clone()), &w).await;
        }
    }

    async fn send_multi(&self, body: Value, first: &Map<String, Value>) {
        self.publish("task.multi", &body, first).await;
    }

    async fn send(&self, body: Value, event: &Map<String, Value>) {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        self.publish(&routing_key(kind), &body, event).await;
    }

    async fn publish(&self, rk: &str, body: &Value, event: &Map<String, Value>) {
        let envelope = event_envelope(&self.hostname, rk, body);
        let channel = channel(self.db, rk);
        let payload = envelope.to_json();
        let sent = self
            .conn
            .retrying("publish event", |mut c| {
                let (channel, payload) = (channel.clone(), payload.clone());
                async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<i64>(&mut c)
                        .await
                }
            })
            .await;
        if let Err(e) = sent {
            let kind = event.get("type").and_then(Value::as_str).unwrap_or("?");
            tracing::debug!(target: "astroworker::events", "event {kind} not sent: {e}");
        }
    }
}

/// The envelope of an event message (delivery mode 1, exchange `celeryev`).
pub fn event_envelope(hostname: &str, routing_key: &str, body: &Value) -> Envelope {
    let mut headers = Map::new();
    headers.insert("hostname".into(), json!(hostname));
    Envelope::with_delivery(
        body,
        headers,
        1,
        json!({"exchange": EXCHANGE, "routing_key": routing_key}),
    )
}

/// Python's `time.timezone // 3600`: hours *west* of UTC, floor-divided (UTC+1 → -1).
fn utcoffset() -> i64 {
    use chrono::Offset as _;
    let east = chrono::Local::now().offset().fix().local_minus_utc();
    i64::from(-east).div_euclid(3600)
}

/// The 1-, 5- and 15-minute load averages rounded to 2 decimals (`[0.0, 0.0, 0.0]` where the
/// system does not say).
fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = field
            .parse::<f64>()
            .map_or(0.0, |x| (x * 100.0).round() / 100.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(env: &Envelope) -> Value {
        serde_json::from_slice(&env.body_bytes().unwrap()).unwrap()
    }

    #[test]
    fn envelope_matches_the_golden_heartbeat() {
        let golden: Value =
            serde_json::from_str(include_str!("../tests/golden/event_worker_heartbeat.json"))
                .unwrap();
        let body = json!({"type": "worker-heartbeat"});
        let ours = event_envelope("w1@vm", "worker.heartbeat", &body).as_value();
        for key in ["content-encoding", "content-type", "headers"] {
            if key == "headers" {
                assert_eq!(ours[key], json!({"hostname": "w1@vm"}));
            } else {
                assert_eq!(ours[key], golden[key], "{key}");
            }
        }
        let (mut a, mut b) = (ours["properties"].clone(), golden["properties"].clone());
        a.as_object_mut().unwrap().remove("delivery_tag");
        b.as_object_mut().unwrap().remove("delivery_tag");
        assert_eq!(a, b);
    }

    #[test]
    fn worker_event_fields_in_celery_order() {
        let events = Events::new("w1@vm", Arc::new(LamportClock::default()), false);
        events.worker(
            "worker-heartbeat",
            HEARTBEAT_FREQ,
            WorkerCounts {
                active: 1,
                processed: 7,
            },
        );
        let mut rx = events.rx.lock().unwrap().take().unwrap();
        let q = rx.try_recv().unwrap();
        assert!(!q.task);
        let keys: Vec<&str> = q.body.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "hostname",
                "utcoffset",
                "pid",
                "clock",
                "freq",
                "active",
                "processed",
                "loadavg",
                "sw_ident",
                "sw_ver",
                "sw_sys",
                "timestamp",
                "type"
            ]
        );
        assert_eq!(q.body["clock"], json!(1));
        assert_eq!(q.body["active"], json!(1));
        assert_eq!(q.body["processed"], json!(7));
        let env = event_envelope("w1@vm", "worker.heartbeat", &Value::Object(q.body));
        assert_eq!(decoded(&env)["type"], json!("worker-heartbeat"));
    }

    #[test]
    fn task_events_follow_the_flags() {
        let events = Events::new("w", Arc::new(LamportClock::default()), false);
        events.task("task-started", "id-1", []);
        let mut rx = events.rx.lock().unwrap().take().unwrap();
        assert!(rx.try_recv().is_err(), "no task events without -E");
        assert!(events.set_task_events(true));
        assert!(!events.set_task_events(true), "already enabled");
        events.task(
            "task-succeeded",
            "id-1",
            [("result", json!("5")), ("runtime", json!(0.5))],
        );
        let q = rx.try_recv().unwrap();
        assert!(q.task);
        let keys: Vec<&str> = q.body.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "hostname",
                "utcoffset",
                "pid",
                "clock",
                "uuid",
                "result",
                "runtime",
                "timestamp",
                "type"
            ]
        );
        let with_e = Events::new("w", Arc::new(LamportClock::default()), true);
        assert!(
            !with_e.set_task_events(false),
            "-E cannot be disabled remotely"
        );
        assert!(with_e.task_events());
    }

    #[test]
    fn names_and_offsets() {
        assert_eq!(routing_key("task-succeeded"), "task.succeeded");
        assert_eq!(channel(3, "task.multi"), "/3.celeryev/task.multi");
        assert_eq!(loadavg().len(), 3);
    }
}
