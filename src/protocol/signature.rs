//! Celery signatures (`{"task", "args", "kwargs", "options", "subtask_type", "immutable"}`) as
//! they travel in a message's embed (callbacks, errbacks, chain, chord), and the task messages
//! a worker publishes from them — chain steps, link callbacks, errbacks, chord bodies — built
//! the way `Task.apply_async` builds them (golden `task_chain_step2_by_worker`,
//! `task_link_callback_by_worker`, `task_chord_callback_by_worker`).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{pyrepr, time};
use crate::broker::envelope::Envelope;
use crate::config::DEFAULT_QUEUE;

/// One signature.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub options: Map<String, Value>,
    pub subtask_type: Option<String>,
    pub immutable: bool,
}

impl Signature {
    /// Reads a signature; `None` for anything that is not one.
    pub fn from_json(v: &Value) -> Option<Self> {
        let o = v.as_object()?;
        Some(Self {
            task: o.get("task")?.as_str()?.to_string(),
            args: o
                .get("args")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            kwargs: o
                .get("kwargs")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            options: o
                .get("options")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            subtask_type: o
                .get("subtask_type")
                .and_then(Value::as_str)
                .map(String::from),
            immutable: o.get("immutable").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        })
    }

    /// The id the producer preassigned (`options.task_id`).
    pub fn task_id(&self) -> Option<&str> {
        self.options.get("task_id").and_then(Value::as_str)
    }

    /// A signature inside this one's kwargs (`header`, `body` of a `celery.chord`).
    pub fn nested(&self, key: &str) -> Option<Signature> {
        self.kwargs.get(key).and_then(Signature::from_json)
    }

    /// The signatures of a `celery.group` or `celery.chain` (`kwargs.tasks`).
    pub fn tasks(&self) -> Vec<Signature> {
        self.kwargs
            .get("tasks")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Signature::from_json).collect())
            .unwrap_or_default()
    }

    /// `link_error` signatures in the options (a single one or a list).
    pub fn link_errors(&self) -> Vec<Value> {
        list_option(&self.options, "link_error")
    }
}

/// An option that Celery accepts as one signature or a list of them.
fn list_option(options: &Map<String, Value>, key: &str) -> Vec<Value> {
    match options.get(key) {
        Some(Value::Array(a)) => a.clone(),
        Some(v @ Value::Object(_)) => vec![v.clone()],
        _ => Vec::new(),
    }
}

/// Who publishes: the running task (its id becomes `parent_id`) and this worker process.
#[derive(Debug, Clone)]
pub struct Sender<'a> {
    pub parent_id: &'a str,
    pub root_id: &'a str,
    /// `gen<pid>@<host>`.
    pub origin: &'a str,
}

/// What [`task_message`] produced: the envelope, where to publish it, and the task id.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub envelope: Envelope,
    pub exchange: String,
    pub routing_key: String,
    pub id: String,
}

/// Extra placement of a published signature.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Arguments put before the signature's own (the parent's result), unless it is immutable.
    pub partial_args: Vec<Value>,
    /// `embed.chain` of the new message (the rest of a chain, reversed).
    pub chain: Option<Vec<Value>>,
    /// Group id and index (group members and chord header tasks).
    pub group: Option<(String, i64)>,
    /// Chord body for a chord header task.
    pub chord: Option<Value>,
}

/// Builds the protocol-v2 message `sig.apply_async(partial_args, …)` would publish.
pub fn task_message(sig: &Signature, place: &Placement, sender: &Sender<'_>) -> Outgoing {
    let opts = &sig.options;
    let text = |k: &str| opts.get(k).and_then(Value::as_str).map(String::from);
    let id = text("task_id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut args = if sig.immutable {
        Vec::new()
    } else {
        place.partial_args.clone()
    };
    args.extend(sig.args.iter().cloned());
    let now = Utc::now();
    let eta = match opts.get("countdown").and_then(Value::as_f64) {
        Some(s) => Some(now + seconds(s)),
        None => opts.get("eta").and_then(when),
    };
    let expires = match opts.get("expires") {
        Some(Value::Number(n)) => n.as_f64().map(|s| now + seconds(s)),
        Some(v) => when(v),
        None => None,
    };
    let (group, group_index) = match &place.group {
        Some((g, i)) => (json!(g), json!(i)),
        None => (
            opts.get("group_id").cloned().unwrap_or(Value::Null),
            opts.get("group_index").cloned().unwrap_or(Value::Null),
        ),
    };
    let mut headers = Map::new();
    headers.insert("lang".into(), json!("py"));
    headers.insert("task".into(), json!(sig.task));
    headers.insert("id".into(), json!(id));
    headers.insert("shadow".into(), json!(text("shadow")));
    headers.insert("eta".into(), json!(eta.map(time::format_iso)));
    headers.insert("expires".into(), json!(expires.map(time::format_iso)));
    headers.insert("group".into(), group);
    headers.insert("group_index".into(), group_index);
    headers.insert("retries".into(), json!(0));
    headers.insert(
        "timelimit".into(),
        json!([
            opts.get("time_limit").cloned().unwrap_or(Value::Null),
            opts.get("soft_time_limit").cloned().unwrap_or(Value::Null)
        ]),
    );
    headers.insert("root_id".into(), json!(sender.root_id));
    headers.insert("parent_id".into(), json!(sender.parent_id));
    headers.insert("argsrepr".into(), json!(pyrepr::repr_args(&args)));
    headers.insert("kwargsrepr".into(), json!(pyrepr::repr_kwargs(&sig.kwargs)));
    headers.insert("origin".into(), json!(sender.origin));
    headers.insert(
        "ignore_result".into(),
        json!(
            opts.get("ignore_result")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        ),
    );
    headers.insert("replaced_task_nesting".into(), json!(0));
    headers.insert("stamped_headers".into(), Value::Null);
    headers.insert("stamps".into(), json!({}));

    let nonempty = |v: Vec<Value>| (!v.is_empty()).then_some(v);
    let chord = place
        .chord
        .clone()
        .or_else(|| opts.get("chord").filter(|c| !c.is_null()).cloned());
    let body = json!([
        args,
        sig.kwargs,
        {
            "callbacks": nonempty(list_option(opts, "link")),
            "errbacks": nonempty(list_option(opts, "link_error")),
            "chain": place.chain.clone().or_else(|| opts.get("chain").and_then(Value::as_array).cloned()),
            "chord": chord,
        }
    ]);

    // `queue=` routes by name through the default exchange, as Celery's router does for a
    // queue it creates on the fly; an explicit exchange/routing key goes through bindings.
    let (exchange, routing_key) = match (text("exchange"), text("routing_key"), text("queue")) {
        (Some(ex), rk, q) => {
            let rk = rk.or(q).unwrap_or_else(|| DEFAULT_QUEUE.to_string());
            (ex, rk)
        }
        (None, Some(rk), _) => (String::new(), rk),
        (None, None, Some(q)) => (String::new(), q),
        (None, None, None) => (String::new(), DEFAULT_QUEUE.to_string()),
    };
    let priority = opts.get("priority").and_then(Value::as_u64).unwrap_or(0);
    let mut props = Map::new();
    props.insert("correlation_id".into(), json!(id));
    if let Some(reply_to) = text("reply_to") {
        props.insert("reply_to".into(), json!(reply_to));
    }
    props.insert("delivery_mode".into(), json!(2));
    props.insert(
        "delivery_info".into(),
        json!({"exchange": exchange, "routing_key": routing_key}),
    );
    props.insert("priority".into(), json!(priority));
    props.insert("body_encoding".into(), json!("base64"));
    props.insert(
        "delivery_tag".into(),
        json!(uuid::Uuid::new_v4().to_string()),
    );
    Outgoing {
        envelope: Envelope::new(&body, headers, props),
        exchange,
        routing_key,
        id,
    }
}

fn seconds(s: f64) -> chrono::Duration {
    chrono::Duration::microseconds((s.max(0.0) * 1e6) as i64)
}

fn when(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(time::parse_iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> Value {
        let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn body(env: &Envelope) -> Value {
        serde_json::from_slice(&env.body_bytes().unwrap()).unwrap()
    }

    /// Step 2 of `add.s(1,2) | mul.s(3) | add.s(4)` as the Python worker published it.
    #[test]
    fn chain_step_matches_the_python_worker() {
        let step1 = golden("task_chain.decoded.json");
        let mut chain = step1["body"][2]["chain"].as_array().unwrap().clone();
        let next = Signature::from_json(&chain.pop().unwrap()).unwrap();
        let sender = Sender {
            parent_id: step1["headers"]["id"].as_str().unwrap(),
            root_id: step1["headers"]["root_id"].as_str().unwrap(),
            origin: "gen1@vm",
        };
        let out = task_message(
            &next,
            &Placement {
                partial_args: vec![json!(3)],
                chain: Some(chain.clone()),
                ..Placement::default()
            },
            &sender,
        );
        let want = golden("task_chain_step2_by_worker.decoded.json");
        let env = out.envelope.as_value();
        let headers = env["headers"].as_object().unwrap();
        let want_headers = want["headers"].as_object().unwrap();
        assert_eq!(
            headers.keys().collect::<Vec<_>>(),
            want_headers.keys().collect::<Vec<_>>()
        );
        assert_eq!(headers["task"], json!("proj.mul"));
        assert_eq!(headers["id"], json!(next.task_id().unwrap()));
        assert_eq!(headers["parent_id"], json!(sender.parent_id));
        assert_eq!(headers["root_id"], json!(sender.root_id));
        assert_eq!(headers["argsrepr"], json!("(3, 3)"));
        assert_eq!(headers["timelimit"], json!([null, null]));
        let b = body(&out.envelope);
        assert_eq!(b[0], json!([3, 3]));
        assert_eq!(b[2]["chain"], json!(chain));
        assert_eq!(b[2]["callbacks"], Value::Null);
        let props = env["properties"].as_object().unwrap();
        let want_props = want["properties"].as_object().unwrap();
        assert_eq!(
            props.keys().collect::<Vec<_>>(),
            want_props.keys().collect::<Vec<_>>()
        );
        assert_eq!(props["correlation_id"], headers["id"]);
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("", "celery")
        );
    }

    #[test]
    fn options_become_headers_and_routing() {
        let sig = Signature::from_json(&json!({
            "task": "fits.stack", "args": [1], "kwargs": {"method": "mean"},
            "options": {"queue": "fits", "priority": 5, "countdown": 10, "time_limit": 30,
                        "link": {"task": "t.cb", "args": [], "kwargs": {}, "options": {},
                                 "subtask_type": null, "immutable": true}},
            "subtask_type": null, "immutable": true
        }))
        .unwrap();
        let sender = Sender {
            parent_id: "p",
            root_id: "r",
            origin: "o",
        };
        let out = task_message(
            &sig,
            &Placement {
                partial_args: vec![json!("ignored")],
                group: Some(("g".into(), 3)),
                ..Placement::default()
            },
            &sender,
        );
        let env = out.envelope.as_value();
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("", "fits")
        );
        assert_eq!(env["headers"]["group"], json!("g"));
        assert_eq!(env["headers"]["group_index"], json!(3));
        assert_eq!(env["headers"]["timelimit"], json!([30, null]));
        assert!(env["headers"]["eta"].is_string());
        assert_eq!(env["properties"]["priority"], json!(5));
        let b = body(&out.envelope);
        assert_eq!(b[0], json!([1]), "immutable: no partial args");
        assert_eq!(b[2]["callbacks"][0]["task"], json!("t.cb"));
        assert_eq!(out.envelope.priority(), 5);
    }
}
