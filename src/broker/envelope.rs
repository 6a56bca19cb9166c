//! The kombu message envelope: what sits in a Redis list, in the `unacked` hash and in PUBLISHed
//! messages (`{"body", "content-encoding", "content-type", "headers", "properties"}`).
//!
//! The envelope is kept as the JSON object it arrived as, so that restoring a message writes back
//! exactly what the producer sent plus kombu's `redelivered` marks, whatever extra keys it had.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use super::BrokerError;

/// A kombu message envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope(Map<String, Value>);

impl Envelope {
    /// Parses an envelope from the raw bytes of a list item.
    pub fn parse(raw: &[u8]) -> Result<Self, BrokerError> {
        match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(BrokerError::Envelope("not a JSON object".into())),
            Err(e) => Err(BrokerError::Envelope(format!("invalid JSON: {e}"))),
        }
    }

    pub fn from_value(value: Value) -> Result<Self, BrokerError> {
        match value {
            Value::Object(map) => Ok(Self(map)),
            _ => Err(BrokerError::Envelope("not a JSON object".into())),
        }
    }

    /// Builds a new envelope around a JSON body, base64-encoded as kombu does.
    pub fn new(body: &Value, headers: Map<String, Value>, properties: Map<String, Value>) -> Self {
        let text = serde_json::to_string(body).expect("JSON values always serialize");
        let mut map = Map::new();
        map.insert("body".into(), Value::String(BASE64.encode(text)));
        map.insert("content-encoding".into(), json!("utf-8"));
        map.insert("content-type".into(), json!("application/json"));
        map.insert("headers".into(), Value::Object(headers));
        map.insert("properties".into(), Value::Object(properties));
        Self(map)
    }

    /// A message kombu publishes on its own (pidbox requests and replies, events): priority 0,
    /// the given delivery mode and `delivery_info`, a fresh delivery tag, in kombu's order.
    pub fn with_delivery(
        body: &Value,
        headers: Map<String, Value>,
        delivery_mode: u8,
        delivery_info: Value,
    ) -> Self {
        let mut props = Map::new();
        props.insert("delivery_mode".into(), json!(delivery_mode));
        props.insert("delivery_info".into(), delivery_info);
        props.insert("priority".into(), json!(0));
        props.insert("body_encoding".into(), json!("base64"));
        props.insert(
            "delivery_tag".into(),
            json!(uuid::Uuid::new_v4().to_string()),
        );
        Self::new(body, headers, props)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("JSON values always serialize")
    }

    pub fn as_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.0.get("content-type").and_then(Value::as_str)
    }

    pub fn headers(&self) -> Option<&Map<String, Value>> {
        self.0.get("headers").and_then(Value::as_object)
    }

    pub fn headers_mut(&mut self) -> &mut Map<String, Value> {
        object_entry(&mut self.0, "headers")
    }

    pub fn properties(&self) -> Option<&Map<String, Value>> {
        self.0.get("properties").and_then(Value::as_object)
    }

    pub fn properties_mut(&mut self) -> &mut Map<String, Value> {
        object_entry(&mut self.0, "properties")
    }

    fn property_str(&self, key: &str) -> Option<&str> {
        self.properties()?.get(key)?.as_str()
    }

    pub fn delivery_tag(&self) -> Option<&str> {
        self.property_str("delivery_tag")
    }

    /// `properties.priority`, clamped to kombu's 0..=9.
    pub fn priority(&self) -> u8 {
        self.properties()
            .and_then(|p| p.get("priority"))
            .and_then(Value::as_i64)
            .map_or(0, |p| p.clamp(0, 9) as u8)
    }

    fn delivery_info(&self) -> Option<&Map<String, Value>> {
        self.properties()?.get("delivery_info")?.as_object()
    }

    pub fn exchange(&self) -> &str {
        self.delivery_info()
            .and_then(|d| d.get("exchange"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn routing_key(&self) -> Option<&str> {
        self.delivery_info()?.get("routing_key")?.as_str()
    }

    pub fn redelivered(&self) -> bool {
        let flag = |m: Option<&Map<String, Value>>| {
            m.and_then(|m| m.get("redelivered"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        flag(self.headers()) || flag(self.delivery_info())
    }

    /// Marks the envelope as kombu does when it restores or requeues a message.
    pub fn mark_redelivered(&mut self) {
        self.headers_mut()
            .insert("redelivered".into(), Value::Bool(true));
        object_entry(self.properties_mut(), "delivery_info")
            .insert("redelivered".into(), Value::Bool(true));
    }

    /// Sets a fresh delivery tag and the routing this message is published with.
    pub fn set_delivery(&mut self, tag: &str, exchange: &str, routing_key: &str) {
        let props = self.properties_mut();
        props.insert("delivery_tag".into(), json!(tag));
        props.insert(
            "delivery_info".into(),
            json!({"exchange": exchange, "routing_key": routing_key}),
        );
    }

    /// Decodes the body bytes: base64 when `properties.body_encoding == "base64"`, else raw text.
    pub fn body_bytes(&self) -> Result<Vec<u8>, BrokerError> {
        let body = match self.0.get("body") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(BrokerError::Envelope("body is not a string".into())),
            None => return Err(BrokerError::Envelope("missing body".into())),
        };
        if self.property_str("body_encoding") == Some("base64") {
            BASE64
                .decode(body.as_bytes())
                .map_err(|e| BrokerError::Envelope(format!("invalid base64 body: {e}")))
        } else {
            Ok(body.as_bytes().to_vec())
        }
    }

    /// Replaces the body with a new JSON value (base64 encoded).
    pub fn set_body(&mut self, body: &Value) {
        let text = serde_json::to_string(body).expect("JSON values always serialize");
        self.0
            .insert("body".into(), Value::String(BASE64.encode(text)));
        self.properties_mut()
            .insert("body_encoding".into(), json!("base64"));
    }
}

/// The object under `key`, created (or replaced if it is not an object) on demand.
fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("just made an object")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = r#"{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "proj.add"}, "properties": {"correlation_id": "e5", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 5, "body_encoding": "base64", "delivery_tag": "4bbb"}}"#;

    #[test]
    fn reads_kombu_fields() {
        let env = Envelope::parse(PLAIN.as_bytes()).unwrap();
        assert_eq!(env.content_type(), Some("application/json"));
        assert_eq!(env.delivery_tag(), Some("4bbb"));
        assert_eq!(env.priority(), 5);
        assert_eq!(env.exchange(), "");
        assert_eq!(env.routing_key(), Some("celery"));
        assert!(!env.redelivered());
        let body: Value = serde_json::from_slice(&env.body_bytes().unwrap()).unwrap();
        assert_eq!(body[0], json!([2, 3]));
    }

    #[test]
    fn redelivered_marks_both_places_and_keeps_order() {
        let mut env = Envelope::parse(PLAIN.as_bytes()).unwrap();
        env.mark_redelivered();
        assert!(env.redelivered());
        let v = env.as_value();
        assert_eq!(v["headers"]["redelivered"], json!(true));
        assert_eq!(v["properties"]["delivery_info"]["redelivered"], json!(true));
        let keys: Vec<_> = env.0.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "body",
                "content-encoding",
                "content-type",
                "headers",
                "properties"
            ]
        );
    }

    #[test]
    fn raw_body_without_base64() {
        let env = Envelope::parse(br#"{"body": "[[], {}, {}]", "properties": {}, "headers": {}}"#)
            .unwrap();
        assert_eq!(env.body_bytes().unwrap(), b"[[], {}, {}]");
        assert!(Envelope::parse(b"[1]").is_err());
        assert!(Envelope::parse(b"{nope").is_err());
        let bad = Envelope::parse(
            br#"{"body": "!!!", "properties": {"body_encoding": "base64"}, "headers": {}}"#,
        )
        .unwrap();
        assert!(bad.body_bytes().is_err());
    }
}
