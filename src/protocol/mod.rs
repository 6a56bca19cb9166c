//! Celery task messages: protocol v2 (headers + `[args, kwargs, embed]` body) and protocol v1
//! (everything in the body), decoded into one [`Request`]; and new task messages built the way
//! Celery builds them (retries now, canvas steps later).
//!
//! Only `application/json` is accepted, like a worker with `accept_content=["json"]`.

pub mod pyrepr;
pub mod signature;
pub mod time;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::broker::Delivery;
use crate::broker::envelope::Envelope;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("refusing content type {0:?} (only application/json is accepted)")]
    ContentType(String),
    #[error("{0}")]
    Envelope(String),
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("invalid task message: {0}")]
    Invalid(String),
    #[error("message is not a Celery task (no task name in headers or body)")]
    NotATask,
}

impl From<crate::broker::BrokerError> for ProtocolError {
    fn from(e: crate::broker::BrokerError) -> Self {
        Self::Envelope(e.to_string())
    }
}

/// Callbacks, errbacks, the rest of a chain and a chord body: signatures kept as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    pub callbacks: Option<Vec<Value>>,
    pub errbacks: Option<Vec<Value>>,
    pub chain: Option<Vec<Value>>,
    pub chord: Option<Value>,
}

impl Embed {
    fn from_object(obj: &Map<String, Value>) -> Self {
        let list = |k: &str| obj.get(k).and_then(Value::as_array).cloned();
        Self {
            callbacks: list("callbacks"),
            errbacks: list("errbacks"),
            chain: list("chain"),
            chord: obj.get("chord").filter(|v| !v.is_null()).cloned(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "callbacks": self.callbacks,
            "errbacks": self.errbacks,
            "chain": self.chain,
            "chord": self.chord,
        })
    }
}

/// `timelimit` header: `[hard, soft]` in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeLimits {
    pub hard: Option<f64>,
    pub soft: Option<f64>,
}

/// A decoded task message.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub embed: Embed,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub retries: u32,
    pub time_limits: TimeLimits,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group: Option<String>,
    pub group_index: Option<i64>,
    pub shadow: Option<String>,
    pub ignore_result: bool,
    pub argsrepr: String,
    pub kwargsrepr: String,
    pub origin: Option<String>,
    /// The v2 headers as received (v1 messages: converted), for re-publishing.
    pub headers: Map<String, Value>,
    pub delivery: Delivery,
    pub protocol: u8,
}

impl Request {
    /// Decodes a delivered envelope. Errors name what is wrong, for one clear log line.
    pub fn decode(delivery: Delivery) -> Result<Self, ProtocolError> {
        let env = &delivery.envelope;
        match env.content_type() {
            Some("application/json") => {}
            Some(other) => return Err(ProtocolError::ContentType(other.to_string())),
            None => return Err(ProtocolError::ContentType("<missing>".into())),
        }
        let body_bytes = env.body_bytes()?;
        let body: Value =
            serde_json::from_slice(&body_bytes).map_err(|e| ProtocolError::Json(e.to_string()))?;
        let body = decode_typed(body);
        let headers = env.headers().cloned().unwrap_or_default();
        if headers.get("task").and_then(Value::as_str).is_some() {
            Self::from_v2(headers, body, delivery)
        } else if body.get("task").and_then(Value::as_str).is_some() {
            Self::from_v1(body, delivery)
        } else {
            Err(ProtocolError::NotATask)
        }
    }

    fn from_v2(
        headers: Map<String, Value>,
        body: Value,
        delivery: Delivery,
    ) -> Result<Self, ProtocolError> {
        let (args, kwargs, embed) = match body {
            Value::Array(parts) => {
                let mut it = parts.into_iter();
                let args = match it.next() {
                    Some(Value::Array(a)) => a,
                    Some(Value::Null) | None => Vec::new(),
                    Some(_) => return Err(invalid("args (body[0]) is not a list")),
                };
                let kwargs = match it.next() {
                    Some(Value::Object(k)) => k,
                    Some(Value::Null) | None => Map::new(),
                    Some(_) => return Err(invalid("kwargs (body[1]) is not an object")),
                };
                let embed = match it.next() {
                    Some(Value::Object(e)) => Embed::from_object(&e),
                    Some(Value::Null) | None => Embed::default(),
                    Some(_) => return Err(invalid("embed (body[2]) is not an object")),
                };
                (args, kwargs, embed)
            }
            // The "hybrid" form: v2 headers with a v1-style body object.
            Value::Object(obj) => {
                let args = obj
                    .get("args")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let kwargs = obj
                    .get("kwargs")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                (args, kwargs, Embed::from_object(&obj))
            }
            _ => {
                return Err(invalid(
                    "body is neither [args, kwargs, embed] nor an object",
                ));
            }
        };
        Self::build(headers, args, kwargs, embed, delivery, 2)
    }

    fn from_v1(body: Value, delivery: Delivery) -> Result<Self, ProtocolError> {
        let Value::Object(b) = body else {
            return Err(ProtocolError::NotATask);
        };
        let args = match b.get("args") {
            Some(Value::Array(a)) => a.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(invalid("args is not a list")),
        };
        let kwargs = match b.get("kwargs") {
            Some(Value::Object(k)) => k.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(invalid("kwargs is not an object")),
        };
        let get = |k: &str| b.get(k).cloned().unwrap_or(Value::Null);
        let id = get("id");
        let mut headers = Map::new();
        headers.insert("lang".into(), json!("py"));
        headers.insert("task".into(), get("task"));
        headers.insert("id".into(), id.clone());
        headers.insert("shadow".into(), Value::Null);
        headers.insert("eta".into(), get("eta"));
        headers.insert("expires".into(), get("expires"));
        headers.insert("group".into(), get("taskset"));
        headers.insert("group_index".into(), get("group_index"));
        headers.insert("retries".into(), get("retries"));
        headers.insert("timelimit".into(), get("timelimit"));
        headers.insert("root_id".into(), id);
        headers.insert("parent_id".into(), Value::Null);
        headers.insert("argsrepr".into(), json!(pyrepr::repr_args(&args)));
        headers.insert("kwargsrepr".into(), json!(pyrepr::repr_kwargs(&kwargs)));
        headers.insert("origin".into(), Value::Null);
        if headers["group"].is_null() {
            headers.insert("group".into(), get("group"));
        }
        let embed = Embed {
            chain: None,
            ..Embed::from_object(&b)
        };
        Self::build(headers, args, kwargs, embed, delivery, 1)
    }

    fn build(
        headers: Map<String, Value>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        embed: Embed,
        delivery: Delivery,
        protocol: u8,
    ) -> Result<Self, ProtocolError> {
        let text = |k: &str| headers.get(k).and_then(Value::as_str).map(String::from);
        let task = text("task").ok_or_else(|| invalid("missing task name"))?;
        let id = text("id").ok_or_else(|| invalid("missing task id"))?;
        let time = |k: &str| -> Result<Option<DateTime<Utc>>, ProtocolError> {
            match headers.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => time::parse_iso(s)
                    .map(Some)
                    .ok_or_else(|| invalid(&format!("{k} {s:?} is not an ISO 8601 time"))),
                Some(_) => Err(invalid(&format!("{k} is not a string"))),
            }
        };
        let time_limits = match headers.get("timelimit") {
            Some(Value::Array(v)) => TimeLimits {
                hard: v.first().and_then(Value::as_f64),
                soft: v.get(1).and_then(Value::as_f64),
            },
            _ => TimeLimits::default(),
        };
        let retries = match headers.get("retries") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid("retries is not a small non-negative integer"))?,
            _ => 0,
        };
        Ok(Self {
            eta: time("eta")?,
            expires: time("expires")?,
            retries,
            time_limits,
            root_id: text("root_id"),
            parent_id: text("parent_id"),
            group: text("group"),
            group_index: headers.get("group_index").and_then(Value::as_i64),
            shadow: text("shadow"),
            ignore_result: headers
                .get("ignore_result")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            argsrepr: text("argsrepr").unwrap_or_else(|| pyrepr::repr_args(&args)),
            kwargsrepr: text("kwargsrepr").unwrap_or_else(|| pyrepr::repr_kwargs(&kwargs)),
            origin: text("origin"),
            id,
            task,
            args,
            kwargs,
            embed,
            headers,
            delivery,
            protocol,
        })
    }

    /// The name used in logs and events (`shadow` if set).
    pub fn display_name(&self) -> &str {
        self.shadow.as_deref().unwrap_or(&self.task)
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// The routing this task was published with (for re-publishing retries to the same queue).
    pub fn routing(&self) -> (String, String) {
        let env = &self.delivery.envelope;
        let rk = env
            .routing_key()
            .unwrap_or_else(|| self.delivery.queue())
            .to_string();
        (env.exchange().to_string(), rk)
    }

    /// The message Celery's `Task.retry` publishes: same id, body and options, `retries + 1`, the
    /// given ETA, `parent_id` = this task, a new delivery tag, and `properties.origin`.
    pub fn retry_envelope(&self, eta: DateTime<Utc>, origin: &str) -> Envelope {
        let mut headers = self.headers.clone();
        headers.remove("redelivered");
        headers.insert("retries".into(), json!(self.retries + 1));
        headers.insert("eta".into(), json!(time::format_iso(eta)));
        headers.insert("parent_id".into(), json!(self.id));
        headers.insert(
            "root_id".into(),
            json!(self.root_id.clone().unwrap_or_else(|| self.id.clone())),
        );
        if headers.get("origin").is_none_or(Value::is_null) {
            headers.insert("origin".into(), json!(origin));
        }
        let body = json!([self.args, self.kwargs, self.embed.to_json()]);
        let old = self
            .delivery
            .envelope
            .properties()
            .cloned()
            .unwrap_or_default();
        let (exchange, routing_key) = self.routing();
        let mut props = Map::new();
        for key in ["correlation_id", "reply_to"] {
            if let Some(v) = old.get(key) {
                props.insert(key.into(), v.clone());
            }
        }
        props.insert("origin".into(), json!(origin));
        props.insert(
            "delivery_mode".into(),
            old.get("delivery_mode").cloned().unwrap_or(json!(2)),
        );
        props.insert(
            "delivery_info".into(),
            json!({"exchange": exchange, "routing_key": routing_key}),
        );
        props.insert("priority".into(), json!(self.delivery.envelope.priority()));
        props.insert("body_encoding".into(), json!("base64"));
        props.insert(
            "delivery_tag".into(),
            json!(uuid::Uuid::new_v4().to_string()),
        );
        Envelope::new(&body, headers, props)
    }
}

fn invalid(why: &str) -> ProtocolError {
    ProtocolError::Invalid(why.to_string())
}

/// Replaces kombu's typed JSON values (`{"__type__": "datetime", "__value__": …}`) by their
/// plain value: ISO text for times, the hex string for UUIDs, the text for decimals and bytes.
pub fn decode_typed(value: Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(decode_typed).collect()),
        Value::Object(mut map) => {
            if map.len() == 2 && map.contains_key("__type__") && map.contains_key("__value__") {
                let inner = map.remove("__value__").expect("checked");
                return match inner {
                    Value::Object(ref o) if o.contains_key("hex") => o["hex"].clone(),
                    other => decode_typed(other),
                };
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, decode_typed(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(raw: &str, list: &str) -> Delivery {
        let envelope = Envelope::parse(raw.as_bytes()).unwrap();
        let tag = envelope.delivery_tag().unwrap_or("t").to_string();
        Delivery {
            list: list.into(),
            envelope,
            tag,
        }
    }

    fn golden(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/golden/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn decodes_v2_plain() {
        let r = Request::decode(delivery(&golden("task_plain.json"), "celery")).unwrap();
        assert_eq!(r.task, "proj.add");
        assert_eq!(r.args, vec![json!(2), json!(3)]);
        assert!(r.kwargs.is_empty());
        assert_eq!(r.protocol, 2);
        assert_eq!(r.retries, 0);
        assert_eq!(r.argsrepr, "(2, 3)");
        assert_eq!(r.routing(), ("".into(), "celery".into()));
    }

    #[test]
    fn decodes_v1_with_eta_and_link() {
        let r = Request::decode(delivery(&golden("task_protocol_v1.json"), "celery")).unwrap();
        assert_eq!(r.protocol, 1);
        assert_eq!(r.task, "proj.add");
        assert!(r.eta.is_some());
        assert_eq!(r.embed.callbacks.as_ref().unwrap()[0]["task"], "proj.mul");
        assert_eq!(r.root_id.as_deref(), Some(r.id.as_str()));
    }

    #[test]
    fn decodes_time_limits_eta_expires_chain() {
        let r = Request::decode(delivery(&golden("task_time_limits.json"), "celery")).unwrap();
        assert_eq!(
            r.time_limits,
            TimeLimits {
                hard: Some(10.0),
                soft: Some(5.0)
            }
        );
        let r = Request::decode(delivery(&golden("task_eta_expires.json"), "celery")).unwrap();
        assert_eq!(
            time::format_iso(r.eta.unwrap()),
            "2030-01-02T03:04:05+00:00"
        );
        assert!(r.is_expired(Utc::now()));
        let r = Request::decode(delivery(&golden("task_chain.json"), "celery")).unwrap();
        assert_eq!(r.embed.chain.as_ref().unwrap().len(), 2);
        let r =
            Request::decode(delivery(&golden("task_kwargs_queue_shadow.json"), "other")).unwrap();
        assert_eq!(r.kwargs["x"], json!("ünï"));
        assert_eq!(r.display_name(), "shadowname");
        assert_eq!(r.headers["custom"], json!("h"));
    }

    #[test]
    fn rejects_foreign_and_broken_messages() {
        let pickle =
            golden("task_plain.json").replace("application/json", "application/x-python-serialize");
        assert!(matches!(
            Request::decode(delivery(&pickle, "celery")),
            Err(ProtocolError::ContentType(_))
        ));
        let not_json = r#"{"body": "bm90IGpzb24=", "content-type": "application/json", "headers": {"task": "x", "id": "1"}, "properties": {"body_encoding": "base64"}}"#;
        assert!(matches!(
            Request::decode(delivery(not_json, "celery")),
            Err(ProtocolError::Json(_))
        ));
        let no_task = r#"{"body": "W1tdLCB7fSwge31d", "content-type": "application/json", "headers": {}, "properties": {"body_encoding": "base64"}}"#;
        assert!(matches!(
            Request::decode(delivery(no_task, "celery")),
            Err(ProtocolError::NotATask)
        ));
        let no_id = r#"{"body": "W1tdLCB7fSwge31d", "content-type": "application/json", "headers": {"task": "x"}, "properties": {"body_encoding": "base64"}}"#;
        assert!(matches!(
            Request::decode(delivery(no_id, "celery")),
            Err(ProtocolError::Invalid(_))
        ));
        let bad_eta = r#"{"body": "W1tdLCB7fSwge31d", "content-type": "application/json", "headers": {"task": "x", "id": "1", "eta": "soon"}, "properties": {"body_encoding": "base64"}}"#;
        assert!(Request::decode(delivery(bad_eta, "celery")).is_err());
    }

    #[test]
    fn retry_message_matches_celery_shape() {
        let r = Request::decode(delivery(&golden("task_plain.json"), "celery")).unwrap();
        let eta = time::parse_iso("2030-01-01T00:00:00+00:00").unwrap();
        let env = r.retry_envelope(eta, "gen1@host");
        let expected = Envelope::parse(golden("task_retry_message.json").as_bytes()).unwrap();
        let h = env.headers().unwrap();
        let keys: Vec<_> = h.keys().collect();
        let expected_keys: Vec<_> = expected.headers().unwrap().keys().collect();
        assert_eq!(keys, expected_keys);
        assert_eq!(h["retries"], json!(1));
        assert_eq!(h["parent_id"], json!(r.id));
        assert_eq!(h["eta"], json!("2030-01-01T00:00:00+00:00"));
        let p = env.properties().unwrap();
        let pkeys: Vec<_> = p.keys().collect();
        let expected_pkeys: Vec<_> = expected.properties().unwrap().keys().collect();
        assert_eq!(pkeys, expected_pkeys);
        assert_ne!(env.delivery_tag(), r.delivery.envelope.delivery_tag());
        let body: Value = serde_json::from_slice(&env.body_bytes().unwrap()).unwrap();
        assert_eq!(body[0], json!([2, 3]));
    }

    #[test]
    fn typed_values_are_flattened() {
        let v = json!({"when": {"__type__": "datetime", "__value__": "2030-01-01T00:00:00"},
                       "id": {"__type__": "uuid", "__value__": {"hex": "abc"}}});
        assert_eq!(
            decode_typed(v),
            json!({"when": "2030-01-01T00:00:00", "id": "abc"})
        );
    }
}
