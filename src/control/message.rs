//! The pidbox wire format: requests published on `/{db}.celery.pidbox`, replies pushed to the
//! caller's reply list (PROTOCOL.md §18, golden `pidbox_*`).
//!
//! Request body: `{"method", "arguments", "destination", "pattern", "matcher", "ticket",
//! "reply_to": {"exchange", "routing_key"}}`, headers `{"clock", "expires"}`; a cast has no
//! `ticket`/`reply_to`. Reply body `{"<node>": <reply>}`, headers `{"ticket", "clock"}`.

use serde_json::{Map, Value, json};

use crate::broker::SEP;
use crate::broker::envelope::Envelope;

/// The fanout exchange requests are published to.
pub const EXCHANGE: &str = "celery.pidbox";
/// The direct exchange replies are routed through.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// The PUB/SUB channel requests arrive on (kombu's fanout prefix `/{db}.`).
pub fn channel(db: i64) -> String {
    format!("/{db}.{EXCHANGE}")
}

/// `<node>.celery.pidbox`: the worker's (never used) pidbox list; only its binding matters.
pub fn node_queue(node: &str) -> String {
    format!("{node}.{EXCHANGE}")
}

/// The set holding the pidbox bindings of every live worker.
pub fn node_binding_key() -> String {
    format!("_kombu.binding.{EXCHANGE}")
}

/// A worker's member in [`node_binding_key`]: empty routing key and pattern.
pub fn node_binding_member(node: &str) -> String {
    format!("{SEP}{SEP}{}", node_queue(node))
}

/// `<oid>.reply.celery.pidbox`: the list a caller collects replies from.
pub fn reply_queue(oid: &str) -> String {
    format!("{oid}.{REPLY_EXCHANGE}")
}

/// The set holding the reply bindings of every waiting caller.
pub fn reply_binding_key() -> String {
    format!("_kombu.binding.{REPLY_EXCHANGE}")
}

pub fn reply_binding_member(oid: &str) -> String {
    format!("{oid}{SEP}{SEP}{}", reply_queue(oid))
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("not a kombu envelope: {0}")]
    Envelope(#[from] crate::broker::BrokerError),
    #[error("unsupported content type {0:?} (pidbox messages are JSON)")]
    ContentType(String),
    #[error("invalid JSON body: {0}")]
    Json(String),
    #[error("field {0:?}: {1}")]
    Field(&'static str, String),
}

/// Where a reply goes: kombu's `reply_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub exchange: String,
    pub routing_key: String,
}

/// One remote-control request.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    pub method: String,
    pub arguments: Map<String, Value>,
    /// `None` (or empty): every worker.
    pub destination: Option<Vec<String>>,
    pub pattern: Option<String>,
    pub matcher: Option<String>,
    pub ticket: Option<String>,
    /// `None`: a cast, nobody waits for a reply.
    pub reply_to: Option<ReplyTo>,
    /// The sender's Lamport clock (`headers.clock`, 0 when missing).
    pub clock: u64,
}

impl ControlRequest {
    /// Decodes a PUBLISHed envelope.
    pub fn decode(raw: &[u8]) -> Result<Self, MessageError> {
        let env = Envelope::parse(raw)?;
        match env.content_type() {
            Some("application/json") | None => {}
            Some(other) => return Err(MessageError::ContentType(other.to_string())),
        }
        let body: Value = serde_json::from_slice(&env.body_bytes()?)
            .map_err(|e| MessageError::Json(e.to_string()))?;
        let Value::Object(mut body) = body else {
            return Err(MessageError::Json("the body is not an object".into()));
        };
        let clock = env
            .headers()
            .and_then(|h| h.get("clock"))
            .and_then(|c| c.as_u64().or_else(|| c.as_f64().map(|f| f.max(0.0) as u64)))
            .unwrap_or(0);
        let method = match body.remove("method") {
            Some(Value::String(m)) => m,
            other => return Err(field("method", "a string", other.as_ref())),
        };
        let arguments = match body.remove("arguments") {
            Some(Value::Object(a)) => a,
            None | Some(Value::Null) => Map::new(),
            Some(other) => return Err(field("arguments", "an object", Some(&other))),
        };
        let destination = match body.remove("destination") {
            None | Some(Value::Null) => None,
            Some(Value::String(one)) => Some(vec![one]),
            Some(Value::Array(list)) => Some(
                list.into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        other => Err(field("destination", "a list of strings", Some(&other))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(other) => return Err(field("destination", "a list", Some(&other))),
        };
        let pattern = optional_string(&mut body, "pattern")?;
        let matcher = optional_string(&mut body, "matcher")?;
        let ticket = optional_string(&mut body, "ticket")?;
        let reply_to = match body.remove("reply_to") {
            None | Some(Value::Null) => None,
            Some(Value::Object(r)) => {
                let get = |k: &'static str| match r.get(k) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    other => Err(field(k, "a string in reply_to", other)),
                };
                Some(ReplyTo {
                    exchange: get("exchange")?,
                    routing_key: get("routing_key")?,
                })
            }
            Some(other) => return Err(field("reply_to", "an object", Some(&other))),
        };
        Ok(Self {
            method,
            arguments,
            destination,
            pattern,
            matcher,
            ticket,
            reply_to,
            clock,
        })
    }

    /// kombu's `Node.handle_message` selection: a non-empty destination must name `node`;
    /// otherwise `pattern` + `matcher` must match it; otherwise everyone runs it.
    /// `matcher` `glob` is supported; `pcre` is not (logged, no match).
    pub fn is_for(&self, node: &str) -> bool {
        if let Some(dest) = self.destination.as_ref().filter(|d| !d.is_empty()) {
            return dest.iter().any(|d| d == node);
        }
        match (self.pattern.as_deref(), self.matcher.as_deref()) {
            (Some(pattern), Some("glob")) => {
                glob::Pattern::new(pattern).is_ok_and(|p| p.matches(node))
            }
            (Some(_), Some(other)) => {
                tracing::warn!(
                    target: "astroworker::control",
                    "pidbox matcher {other:?} is not supported (only glob); request ignored"
                );
                false
            }
            _ => true,
        }
    }

    /// The envelope a caller publishes (headers `clock` and `expires`).
    pub fn to_envelope(&self, expires: f64) -> Envelope {
        let mut body = Map::new();
        body.insert("method".into(), json!(self.method));
        body.insert("arguments".into(), Value::Object(self.arguments.clone()));
        body.insert("destination".into(), json!(self.destination));
        body.insert("pattern".into(), json!(self.pattern));
        body.insert("matcher".into(), json!(self.matcher));
        if let (Some(ticket), Some(reply_to)) = (&self.ticket, &self.reply_to) {
            body.insert("ticket".into(), json!(ticket));
            body.insert(
                "reply_to".into(),
                json!({"exchange": reply_to.exchange, "routing_key": reply_to.routing_key}),
            );
        }
        let mut headers = Map::new();
        headers.insert("clock".into(), json!(self.clock));
        headers.insert("expires".into(), json!(expires));
        Envelope::with_delivery(
            &Value::Object(body),
            headers,
            2,
            json!({"exchange": EXCHANGE, "routing_key": ""}),
        )
    }
}

/// The reply envelope a worker pushes: body `{node: reply}`, headers `{ticket, clock}`.
pub fn reply_envelope(
    node: &str,
    reply: Value,
    ticket: Option<&str>,
    clock: u64,
    reply_to: &ReplyTo,
) -> Envelope {
    let mut body = Map::new();
    body.insert(node.to_string(), reply);
    let mut headers = Map::new();
    headers.insert("ticket".into(), json!(ticket));
    headers.insert("clock".into(), json!(clock));
    Envelope::with_delivery(
        &Value::Object(body),
        headers,
        1,
        json!({"exchange": reply_to.exchange, "routing_key": reply_to.routing_key}),
    )
}

/// One decoded reply, as a caller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlReply {
    pub ticket: Option<String>,
    pub clock: u64,
    /// `{node: reply}` (one entry from a worker).
    pub body: Map<String, Value>,
}

impl ControlReply {
    pub fn decode(raw: &[u8]) -> Result<Self, MessageError> {
        let env = Envelope::parse(raw)?;
        let body: Value = serde_json::from_slice(&env.body_bytes()?)
            .map_err(|e| MessageError::Json(e.to_string()))?;
        let Value::Object(body) = body else {
            return Err(MessageError::Json("the body is not an object".into()));
        };
        let headers = env.headers();
        Ok(Self {
            ticket: headers
                .and_then(|h| h.get("ticket"))
                .and_then(Value::as_str)
                .map(String::from),
            clock: headers
                .and_then(|h| h.get("clock"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            body,
        })
    }
}

fn optional_string(
    body: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, MessageError> {
    match body.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(field(key, "a string", Some(&other))),
    }
}

fn field(name: &'static str, expected: &str, got: Option<&Value>) -> MessageError {
    let got = got.map_or_else(|| "missing".to_string(), |v| format!("got {v}"));
    MessageError::Field(name, format!("expected {expected}, {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = include_str!("../../tests/golden/pidbox_ping_request.json");
    const REPLY: &str = include_str!("../../tests/golden/pidbox_ping_reply.json");
    const ALL: &str = include_str!("../../tests/golden/pidbox_requests_and_replies.decoded.json");

    #[test]
    fn decodes_the_golden_ping_request() {
        let req = ControlRequest::decode(REQUEST.as_bytes()).unwrap();
        assert_eq!(req.method, "ping");
        assert!(req.arguments.is_empty());
        assert_eq!(req.destination, None);
        assert_eq!(
            req.ticket.as_deref(),
            Some("d110dc6c-199a-4b52-8271-df9eeb06d40d")
        );
        assert_eq!(
            req.reply_to,
            Some(ReplyTo {
                exchange: "reply.celery.pidbox".into(),
                routing_key: "b9bbc14f-4c85-39fb-9823-41586bc193c5".into()
            })
        );
        assert_eq!(req.clock, 1);
        assert!(req.is_for("w1@vm"));
    }

    #[test]
    fn reply_matches_the_golden_ping_reply() {
        let golden = Envelope::parse(REPLY.as_bytes()).unwrap();
        let req = ControlRequest::decode(REQUEST.as_bytes()).unwrap();
        let ours = reply_envelope(
            "w1@vm",
            json!({"ok": "pong"}),
            req.ticket.as_deref(),
            3,
            req.reply_to.as_ref().unwrap(),
        );
        let (mut a, mut b) = (ours.as_value(), golden.as_value());
        // Bodies are compared parsed (Python's separators differ from compact JSON), and the
        // delivery tag is fresh per publish; everything else is identical.
        let parsed =
            |e: &Envelope| -> Value { serde_json::from_slice(&e.body_bytes().unwrap()).unwrap() };
        a["body"] = parsed(&ours);
        b["body"] = parsed(&golden);
        a["properties"]["delivery_tag"] = json!(null);
        b["properties"]["delivery_tag"] = json!(null);
        assert_eq!(a, b);
        let keys = |v: &Value| -> Vec<String> {
            v["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(keys(&a), keys(&b));
        let decoded = ControlReply::decode(ours.to_json().as_bytes()).unwrap();
        assert_eq!(decoded.body["w1@vm"], json!({"ok": "pong"}));
        assert_eq!(decoded.clock, 3);
    }

    #[test]
    fn every_golden_request_decodes_and_roundtrips() {
        let all: Value = serde_json::from_str(ALL).unwrap();
        let mut n = 0;
        for (name, entry) in all.as_object().unwrap() {
            let Some(env) = entry.get("request_envelope").filter(|e| e.is_object()) else {
                continue;
            };
            // The decoded file shows bodies as JSON: rebuild the wire form.
            let body = &env["body"];
            let headers = env["headers"].as_object().unwrap().clone();
            let props = env["properties"].as_object().unwrap().clone();
            let mut wire = Envelope::new(body, headers, props);
            wire.set_body(body);
            let req = ControlRequest::decode(wire.to_json().as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(json!(req.method), body["method"], "{name}");
            assert_eq!(
                req.reply_to.is_some(),
                body.get("reply_to").is_some(),
                "{name}"
            );
            let again = ControlRequest::decode(
                req.to_envelope(env["headers"]["expires"].as_f64().unwrap())
                    .to_json()
                    .as_bytes(),
            )
            .unwrap();
            assert_eq!(again, req, "{name}");
            n += 1;
        }
        assert!(n > 30, "only {n} requests in the golden file");
    }

    #[test]
    fn selects_by_destination_and_glob() {
        let mut req = ControlRequest::decode(REQUEST.as_bytes()).unwrap();
        req.destination = Some(vec!["a@h".into(), "b@h".into()]);
        assert!(req.is_for("b@h"));
        assert!(!req.is_for("c@h"));
        req.destination = Some(vec![]);
        assert!(req.is_for("c@h"));
        req.pattern = Some("w*@h".into());
        req.matcher = Some("glob".into());
        assert!(req.is_for("w1@h"));
        assert!(!req.is_for("c@h"));
        req.matcher = Some("pcre".into());
        assert!(!req.is_for("w1@h"));
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            &b"not json"[..],
            br#"[1]"#,
            br#"{"body": "e30=", "properties": {"body_encoding": "base64"}, "headers": {}}"#,
            br#"{"body": "{\"method\": 3}", "properties": {}, "headers": {}}"#,
            br#"{"body": "{\"method\": \"ping\", \"arguments\": []}", "properties": {}, "headers": {}}"#,
            br#"{"body": "{\"method\": \"ping\", \"destination\": 5}", "properties": {}, "headers": {}}"#,
            br#"{"body": "{\"method\": \"ping\", \"reply_to\": {\"exchange\": 1}}", "properties": {}, "headers": {}}"#,
            br#"{"body": "[]", "properties": {}, "headers": {}}"#,
            br#"{"body": "x", "content-type": "application/x-python-serialize", "properties": {}, "headers": {}}"#,
        ] {
            assert!(
                ControlRequest::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
