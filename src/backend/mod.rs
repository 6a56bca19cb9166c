//! The Redis result backend, written exactly as Celery's `RedisBackend` writes it.
//!
//! A state is stored under `celery-task-meta-<id>` as `{"status", "result", "traceback",
//! "children", "date_done", ["group_id"], ["parent_id"], "task_id"}` with `SETEX` (TTL =
//! `result_expires`) and the same bytes are `PUBLISH`ed on the same channel in one transaction:
//! `AsyncResult.get()` waits on that channel. A stored SUCCESS is never overwritten (Celery's
//! duplicate guard).

pub mod chord;

use std::time::Duration;

use redis::AsyncCommands as _;
use serde_json::{Map, Value, json};

use crate::broker::url::RedisUrl;
use crate::connection::RedisConn;
use crate::protocol::{pyrepr, time};

pub const TASK_KEY_PREFIX: &str = "celery-task-meta-";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("result backend Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Url(#[from] crate::broker::url::UrlError),
}

/// Task states, as Celery names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Started,
    Success,
    Failure,
    Retry,
    Revoked,
    /// A state set by the task itself (`update_state`), such as `PROGRESS`.
    Custom(String),
}

impl State {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Started => "STARTED",
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
            Self::Retry => "RETRY",
            Self::Revoked => "REVOKED",
            Self::Custom(s) => s,
        }
    }

    /// SUCCESS, FAILURE and REVOKED are final (Celery's `READY_STATES`).
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Revoked)
    }
}

/// A serialized exception: what Python's `AsyncResult` turns back into an exception instance.
/// Python looks the class up by `exc_module` + `exc_type`, and builds a class of that name when
/// the module is not loaded, so `type(e).__name__` is always `exc_type`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionInfo {
    pub exc_type: String,
    pub exc_module: String,
    pub exc_message: Vec<Value>,
}

impl ExceptionInfo {
    pub fn new(exc_type: &str, exc_module: &str, message: impl Into<String>) -> Self {
        Self {
            exc_type: exc_type.into(),
            exc_module: exc_module.into(),
            exc_message: vec![Value::String(message.into())],
        }
    }

    /// A Python built-in exception (`ValueError`, `TypeError`, `FileNotFoundError`, …).
    pub fn builtin(exc_type: &str, message: impl Into<String>) -> Self {
        Self::new(exc_type, "builtins", message)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "exc_type": self.exc_type,
            "exc_message": self.exc_message,
            "exc_module": self.exc_module,
        })
    }

    /// `ValueError('boom')`, as Python's `repr(exc)`.
    pub fn repr(&self) -> String {
        let args = pyrepr::repr_args(&self.exc_message);
        let inner = if self.exc_message.len() == 1 {
            args.trim_start_matches('(')
                .trim_end_matches(')')
                .trim_end_matches(',')
                .to_string()
        } else {
            args.trim_start_matches('(')
                .trim_end_matches(')')
                .to_string()
        };
        format!("{}({inner})", self.exc_type)
    }

    /// The message text (`str(exc)` for one-argument exceptions).
    pub fn message(&self) -> String {
        match self.exc_message.as_slice() {
            [Value::String(s)] => s.clone(),
            [] => String::new(),
            [one] => one.to_string(),
            many => Value::Array(many.to_vec()).to_string(),
        }
    }
}

/// Everything written for one state change.
#[derive(Debug, Clone)]
pub struct TaskMeta<'a> {
    pub task_id: &'a str,
    pub state: State,
    pub result: Value,
    pub traceback: Option<String>,
    pub children: Vec<Value>,
    pub group_id: Option<&'a str>,
    pub parent_id: Option<&'a str>,
}

impl<'a> TaskMeta<'a> {
    pub fn new(task_id: &'a str, state: State, result: Value) -> Self {
        Self {
            task_id,
            state,
            result,
            traceback: None,
            children: Vec::new(),
            group_id: None,
            parent_id: None,
        }
    }

    /// The JSON text, keys in Celery's order.
    pub fn encode(&self) -> String {
        let mut m = Map::new();
        m.insert("status".into(), json!(self.state.as_str()));
        m.insert("result".into(), self.result.clone());
        m.insert("traceback".into(), json!(self.traceback));
        m.insert("children".into(), Value::Array(self.children.clone()));
        let date_done = self.state.is_ready().then(time::now_iso);
        m.insert("date_done".into(), json!(date_done));
        if let Some(g) = self.group_id {
            m.insert("group_id".into(), json!(g));
        }
        if let Some(p) = self.parent_id {
            m.insert("parent_id".into(), json!(p));
        }
        m.insert("task_id".into(), json!(self.task_id));
        Value::Object(m).to_string()
    }
}

pub struct ResultBackend {
    conn: RedisConn,
    expires: Option<Duration>,
}

impl ResultBackend {
    /// `expires`: the TTL of stored results (`None` or zero: keep for ever).
    pub fn new(url: &RedisUrl, expires: Option<Duration>) -> Result<Self, BackendError> {
        Ok(Self {
            conn: RedisConn::new(url, Some(Duration::from_secs(30)))?,
            expires: expires.filter(|d| !d.is_zero()),
        })
    }

    pub fn url(&self) -> &RedisUrl {
        self.conn.url()
    }

    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    pub fn expires(&self) -> Option<Duration> {
        self.expires
    }

    /// Stores and publishes a state. Returns false when a stored SUCCESS prevented the write.
    pub async fn store(&self, meta: &TaskMeta<'_>) -> Result<bool, BackendError> {
        let key = format!("{TASK_KEY_PREFIX}{}", meta.task_id);
        let current: Option<String> = self
            .conn
            .retrying("read result", |mut c| {
                let key = key.clone();
                async move { c.get(key).await }
            })
            .await?;
        if current.as_deref().is_some_and(is_success) {
            tracing::debug!(target: "astroworker::backend", task_id = meta.task_id, "result already SUCCESS; not overwritten with {}", meta.state.as_str());
            return Ok(false);
        }
        let payload = meta.encode();
        let ttl = self.expires.map(|d| d.as_secs().max(1));
        self.conn
            .retrying("store result", |mut c| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                match ttl {
                    Some(secs) => pipe.set_ex(&key, &payload, secs).ignore(),
                    None => pipe.set(&key, &payload).ignore(),
                };
                pipe.publish(&key, &payload).ignore();
                async move { pipe.query_async::<()>(&mut c).await }
            })
            .await?;
        Ok(true)
    }

    /// The stored state JSON of a task, if any.
    pub async fn get(&self, task_id: &str) -> Result<Option<Value>, BackendError> {
        let key = format!("{TASK_KEY_PREFIX}{task_id}");
        let raw: Option<String> = self
            .conn
            .retrying("read result", |mut c| {
                let key = key.clone();
                async move { c.get(key).await }
            })
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }
}

fn is_success(raw: &str) -> bool {
    serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| {
            v.get("status")
                .and_then(Value::as_str)
                .map(|s| s == "SUCCESS")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_in_celery_key_order() {
        let mut meta = TaskMeta::new("abc", State::Success, json!(5));
        meta.group_id = Some("g");
        let v: Value = serde_json::from_str(&meta.encode()).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "status",
                "result",
                "traceback",
                "children",
                "date_done",
                "group_id",
                "task_id"
            ]
        );
        let golden: Value = serde_json::from_str(include_str!(
            "../../tests/golden/result_success_group_member.json"
        ))
        .unwrap();
        let gkeys: Vec<_> = golden.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, gkeys);
        assert!(time::parse_iso(v["date_done"].as_str().unwrap()).is_some());
        let started = TaskMeta::new("abc", State::Started, json!({}));
        let v: Value = serde_json::from_str(&started.encode()).unwrap();
        assert!(v["date_done"].is_null());
    }

    #[test]
    fn exception_reprs() {
        let e = ExceptionInfo::builtin("ValueError", "boom");
        assert_eq!(e.repr(), "ValueError('boom')");
        assert_eq!(e.message(), "boom");
        assert_eq!(
            e.to_json(),
            json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"})
        );
        let t = ExceptionInfo {
            exc_type: "TimeLimitExceeded".into(),
            exc_module: "billiard.exceptions".into(),
            exc_message: vec![json!(1.0)],
        };
        assert_eq!(t.repr(), "TimeLimitExceeded(1.0)");
        assert!(is_success(r#"{"status": "SUCCESS"}"#));
        assert!(!is_success(r#"{"status": "STARTED"}"#));
    }
}
