//! The remote-control commands, answering as Celery 5.5's `celery/worker/control.py` does.
//!
//! Handlers take the request's `arguments` like Python keyword arguments (unknown ones are
//! ignored, as Celery's `**kwargs` do); a missing or mistyped argument and an unknown command
//! get Celery's error reply, `{"error": "<repr of the exception>"}`.

use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::message::ControlRequest;
use super::stats;
use crate::protocol::{Request, pyrepr, time};
use crate::worker::state::TimeLimitOverride;
use crate::worker::{Phase, QueueSpec, Shared, Trigger};

/// What the mailbox does after a command ran.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send this value as the node's reply (when the caller wants one).
    Reply(Value),
    /// Send nothing (`shutdown`, like Celery, stops before replying).
    NoReply,
}

/// Why a command could not run: rendered as the Python exception Celery would report.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// kombu looks handlers up in a dict: an unknown name is a `KeyError`.
    #[error("KeyError({})", pyrepr::repr(&Value::String(.0.clone())))]
    UnknownCommand(String),
    #[error("TypeError({})", pyrepr::repr(&Value::String(.0.clone())))]
    BadArguments(String),
    #[error("ValueError({})", pyrepr::repr(&Value::String(.0.clone())))]
    Value(String),
}

/// Runs one request meant for this node.
pub(crate) async fn dispatch(shared: &Arc<Shared>, req: &ControlRequest) -> Outcome {
    match run(shared, &req.method, &req.arguments).await {
        Ok(outcome) => outcome,
        Err(e) => {
            match &e {
                CommandError::UnknownCommand(name) => {
                    tracing::error!(target: "astroworker::control", "No such control command: {name}");
                }
                CommandError::BadArguments(_) | CommandError::Value(_) => {
                    tracing::error!(target: "astroworker::control", "pidbox command error: {e}");
                }
            }
            Outcome::Reply(json!({"error": e.to_string()}))
        }
    }
}

fn ok(text: impl Into<String>) -> Result<Outcome, CommandError> {
    Ok(Outcome::Reply(json!({"ok": text.into()})))
}

fn nok(text: impl Into<String>) -> Result<Outcome, CommandError> {
    Ok(Outcome::Reply(json!({"error": text.into()})))
}

fn reply(value: Value) -> Result<Outcome, CommandError> {
    Ok(Outcome::Reply(value))
}

async fn run(
    shared: &Arc<Shared>,
    method: &str,
    args: &Map<String, Value>,
) -> Result<Outcome, CommandError> {
    let node = &shared.config.hostname;
    match method {
        "ping" => ok("pong"),
        "clock" => reply(json!({"clock": shared.clock.value()})),
        "stats" => reply(stats::stats(shared)),
        "active" | "dump_active" => {
            let safe = truthy(args.get("safe"));
            let pid = std::process::id();
            reply(Value::Array(
                shared
                    .state
                    .active_requests()
                    .iter()
                    .map(|a| {
                        let start = a
                            .started
                            .duration_since(UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64());
                        request_info(&a.request, node, Some(start), a.acked, Some(pid), safe)
                    })
                    .collect(),
            ))
        }
        "reserved" | "dump_reserved" => reply(Value::Array(
            shared
                .state
                .reserved_requests()
                .iter()
                .map(|r| request_info(r, node, None, false, None, false))
                .collect(),
        )),
        "scheduled" | "dump_schedule" => reply(Value::Array(
            shared
                .state
                .scheduled_requests()
                .iter()
                .map(|r| {
                    json!({
                        // Celery's timer entries for ETA tasks have priority 6.
                        "eta": r.eta.map(time::format_iso),
                        "priority": 6,
                        "request": request_info(r, node, None, false, None, false),
                    })
                })
                .collect(),
        )),
        "query_task" => {
            let ids = id_list(args, "ids", "query_task")?;
            let mut out = Map::new();
            let pid = std::process::id();
            for a in shared.state.active_requests() {
                if ids.contains(&a.request.id) {
                    let start = a
                        .started
                        .duration_since(UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    let info =
                        request_info(&a.request, node, Some(start), a.acked, Some(pid), false);
                    out.insert(a.request.id.clone(), json!(["active", info]));
                }
            }
            for r in shared.state.reserved_requests() {
                if ids.contains(&r.id) && !out.contains_key(&r.id) {
                    let info = request_info(&r, node, None, false, None, false);
                    out.insert(r.id.clone(), json!(["reserved", info]));
                }
            }
            reply(Value::Object(out))
        }
        "registered" | "dump_tasks" => reply(registered(shared, args)),
        "active_queues" => reply(Value::Array(
            shared.queues().iter().map(queue_dict).collect(),
        )),
        "revoked" | "dump_revoked" => reply(Value::Array(
            shared
                .state
                .revoked()
                .into_iter()
                .map(|(id, _)| Value::String(id))
                .collect(),
        )),
        "revoke" => revoke(shared, args, truthy(args.get("terminate"))).await,
        "terminate" => revoke(shared, args, true).await,
        "conf" | "dump_conf" => reply(stats::conf(shared)),
        "time_limit" => time_limit(shared, args),
        "rate_limit" => rate_limit(shared, args),
        "pool_grow" | "pool_shrink" => {
            let n = match args.get("n") {
                None | Some(Value::Null) => 1,
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .ok_or_else(|| {
                        CommandError::BadArguments(format!("{method}(): n must be an integer"))
                    })? as usize,
            };
            if method == "pool_grow" {
                shared.pool.grow(n);
                tracing::info!(
                    "Pool grown by {n} to {} (remote control)",
                    shared.pool.size()
                );
                ok("pool will grow")
            } else {
                shared
                    .pool
                    .shrink(n)
                    .map_err(|e| CommandError::Value(e.to_string()))?;
                tracing::info!(
                    "Pool shrunk by {n} to {} (remote control)",
                    shared.pool.size()
                );
                ok("pool will shrink")
            }
        }
        "add_consumer" => add_consumer(shared, args).await,
        "cancel_consumer" => {
            let queue = required_str(args, "queue", "cancel_consumer")?;
            if shared.remove_queue(&queue) {
                tracing::info!("Stopped consuming from queue {queue} (remote control)");
            }
            ok(format!("no longer consuming from {queue}"))
        }
        "enable_events" | "disable_events" => {
            let enable = method == "enable_events";
            let word = if enable { "enabled" } else { "disabled" };
            if shared.events.set_task_events(enable) {
                tracing::info!("Events of group {{task}} {word} by remote.");
                ok(format!("task events {word}"))
            } else {
                ok(format!("task events already {word}"))
            }
        }
        "heartbeat" => {
            tracing::debug!(target: "astroworker::control", "Heartbeat requested by remote.");
            shared
                .events
                .worker("worker-heartbeat", 5.0, shared.event_counts());
            reply(Value::Null)
        }
        "hello" => reply(hello(shared, args)?),
        "shutdown" => {
            let msg = args
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("Got shutdown from remote");
            tracing::warn!("{msg}");
            shared.shutdown.request(Phase::Warm, Trigger::Remote);
            Ok(Outcome::NoReply)
        }
        other => Err(CommandError::UnknownCommand(other.to_string())),
    }
}

/// Celery's `Request.info()`.
fn request_info(
    req: &Request,
    node: &str,
    time_start: Option<f64>,
    acknowledged: bool,
    worker_pid: Option<u32>,
    safe: bool,
) -> Value {
    let env = &req.delivery.envelope;
    let (args, kwargs) = if safe {
        (json!(req.argsrepr), json!(req.kwargsrepr))
    } else {
        (json!(req.args), Value::Object(req.kwargs.clone()))
    };
    json!({
        "id": req.id,
        "name": req.display_name(),
        "args": args,
        "kwargs": kwargs,
        "type": req.task,
        "hostname": node,
        "time_start": time_start,
        "acknowledged": acknowledged,
        "delivery_info": {
            "exchange": env.exchange(),
            "routing_key": env.routing_key().unwrap_or_else(|| req.delivery.queue()),
            "priority": env.priority(),
            "redelivered": env.redelivered(),
        },
        "worker_pid": worker_pid,
    })
}

/// kombu's `Queue.as_dict(recurse=True)` for a direct queue.
fn queue_dict(q: &QueueSpec) -> Value {
    json!({
        "name": q.name,
        "exchange": {
            "name": q.exchange,
            "type": q.exchange_type,
            "arguments": null,
            "durable": true,
            "passive": false,
            "auto_delete": false,
            "delivery_mode": null,
            "no_declare": false,
        },
        "routing_key": q.routing_key,
        "queue_arguments": null,
        "binding_arguments": null,
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null,
    })
}

/// `registered`: sorted task names (`celery.*` only with `builtins`), each followed by the
/// requested task attributes that are set: `"name [time_limit=1]"`.
fn registered(shared: &Shared, args: &Map<String, Value>) -> Value {
    let items: Vec<String> = match args.get("taskinfoitems") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        _ => ["exchange", "routing_key", "rate_limit"]
            .map(String::from)
            .to_vec(),
    };
    let builtins = truthy(args.get("builtins"));
    let names = shared
        .registry
        .defs()
        .filter(|d| builtins || !d.name.starts_with("celery."))
        .map(|def| {
            let limits = shared.state.time_limits(&def.name);
            let number = |o: Option<f64>| o.map(python_float);
            let fields: Vec<String> = items
                .iter()
                .filter_map(|item| {
                    let value = match item.as_str() {
                        "name" => Some(def.name.clone()),
                        "time_limit" => match &limits {
                            Some(l) => l.hard.as_ref().map(ToString::to_string),
                            None => number(def.options.time_limit),
                        },
                        "soft_time_limit" => match &limits {
                            Some(l) => l.soft.as_ref().map(ToString::to_string),
                            None => number(def.options.soft_time_limit),
                        },
                        "max_retries" => def.options.max_retries.map(|m| m.to_string()),
                        "default_retry_delay" => {
                            Some(python_float(def.options.default_retry_delay))
                        }
                        "ignore_result" => Some(python_bool(def.options.ignore_result)),
                        "acks_late" => Some(python_bool(
                            def.options.acks_late.unwrap_or(shared.config.acks_late),
                        )),
                        "rate_limit" => shared.rate_limits.get(&def.name),
                        _ => None,
                    }?;
                    Some(format!("{item}={value}"))
                })
                .collect();
            if fields.is_empty() {
                def.name.clone()
            } else {
                format!("{} [{}]", def.name, fields.join(" "))
            }
        });
    Value::Array(names.map(Value::String).collect())
}

/// `revoke` (and `terminate`): flag the ids; with `terminate`, stop the running ones and store
/// them as REVOKED("terminated") right away, as Celery does.
async fn revoke(
    shared: &Arc<Shared>,
    args: &Map<String, Value>,
    terminate: bool,
) -> Result<Outcome, CommandError> {
    let ids = id_list(args, "task_id", "revoke")?;
    shared.state.revoke(ids.iter().map(String::as_str));
    if !terminate {
        tracing::info!("Tasks flagged as revoked: {}", ids.join(", "));
        let set = if ids.is_empty() {
            "set()".to_string()
        } else {
            let items: Vec<String> = ids
                .iter()
                .map(|id| pyrepr::repr(&Value::String(id.clone())))
                .collect();
            format!("{{{}}}", items.join(", "))
        };
        return ok(format!("tasks {set} flagged as revoked"));
    }
    let signal = args
        .get("signal")
        .and_then(Value::as_str)
        .unwrap_or("SIGTERM");
    let signum = signal_number(signal);
    let running = shared.state.terminate(&ids);
    let mut terminated: Vec<String> = Vec::new();
    for req in &running {
        tracing::info!("Terminating {} ({signal})", req.id);
        shared.revoked(req, "terminated", Some(signum)).await;
        terminated.push(req.id.clone());
    }
    // Celery also counts requests it holds but has not started (they never will).
    for r in shared.state.reserved_requests() {
        if ids.contains(&r.id) && !terminated.contains(&r.id) {
            terminated.push(r.id.clone());
        }
    }
    if terminated.is_empty() {
        ok("terminate: tasks unknown")
    } else {
        ok(format!("terminate: {}", terminated.join(", ")))
    }
}

/// `rate_limit`: Celery's replies and log lines; an invalid rate leaves the old one.
fn rate_limit(shared: &Shared, args: &Map<String, Value>) -> Result<Outcome, CommandError> {
    let task = args.get("task_name").and_then(Value::as_str).unwrap_or("");
    let rate = match args.get("rate_limit") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if let Err(e) = crate::worker::rate::parse_rate(&rate) {
        return nok(format!("Invalid rate limit string: {e}"));
    }
    if shared.registry.get(task).is_none() {
        tracing::error!("Rate limit attempt for unknown task {task}");
        return nok("unknown task");
    }
    match shared.rate_limits.set(task, &rate) {
        Ok(false) => {
            tracing::info!("Rate limits disabled for tasks of type {task}");
            ok("rate limit disabled successfully")
        }
        Ok(true) => {
            tracing::info!("New rate limit for tasks of type {task}: {rate}.");
            ok("new rate limit set successfully")
        }
        Err(e) => nok(format!("Invalid rate limit string: {e}")),
    }
}

/// The number of a signal named as Celery accepts it (`SIGTERM`, `TERM`, `9`); SIGTERM if unknown.
fn signal_number(name: &str) -> i32 {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    match bare {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        other => other.parse().unwrap_or(15),
    }
}

fn time_limit(shared: &Shared, args: &Map<String, Value>) -> Result<Outcome, CommandError> {
    let task = args.get("task_name").and_then(Value::as_str).unwrap_or("");
    if shared.registry.get(task).is_none() {
        tracing::error!("Change time limit attempt for unknown task {task}");
        return nok("unknown task");
    }
    let number = |key: &str| -> Result<Option<serde_json::Number>, CommandError> {
        match args.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n.clone())),
            Some(Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Some)
                .ok_or_else(|| {
                    CommandError::BadArguments(format!("time_limit(): {key} must be a number"))
                }),
            Some(_) => Err(CommandError::BadArguments(format!(
                "time_limit(): {key} must be a number"
            ))),
        }
    };
    let limits = TimeLimitOverride {
        hard: number("hard")?,
        soft: number("soft")?,
    };
    let show =
        |n: &Option<serde_json::Number>| n.as_ref().map_or("None".into(), ToString::to_string);
    tracing::info!(
        "New time limits for tasks of type {task}: soft={} hard={}",
        show(&limits.soft),
        show(&limits.hard)
    );
    shared.state.set_time_limits(task, limits);
    ok("time limits set successfully")
}

async fn add_consumer(
    shared: &Arc<Shared>,
    args: &Map<String, Value>,
) -> Result<Outcome, CommandError> {
    let queue = required_str(args, "queue", "add_consumer")?;
    let text = |key: &str| {
        args.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let spec = QueueSpec {
        exchange: text("exchange").unwrap_or_else(|| queue.clone()),
        exchange_type: text("exchange_type").unwrap_or_else(|| "direct".into()),
        routing_key: text("routing_key").unwrap_or_else(|| queue.clone()),
        name: queue.clone(),
    };
    if let Err(e) = shared
        .broker
        .declare_binding(&spec.exchange, &spec.routing_key, &spec.name)
        .await
    {
        tracing::error!("could not declare queue {queue}: {e}");
    }
    if shared.add_queue(spec) {
        tracing::info!("Started consuming from queue {queue} (remote control)");
    }
    ok(format!("add consumer {queue}"))
}

/// Mingle's `hello` from another node: merge its revoked ids, answer with ours and the clock.
fn hello(shared: &Shared, args: &Map<String, Value>) -> Result<Value, CommandError> {
    let from = required_str(args, "from_node", "hello")?;
    if from == shared.config.hostname {
        return Ok(Value::Null);
    }
    tracing::info!("sync with {from}");
    if let Some(Value::Object(theirs)) = args.get("revoked") {
        shared.state.revoke(theirs.keys().map(String::as_str));
    }
    let now = Instant::now();
    let since_boot = stats::seconds_since_boot();
    let revoked: Map<String, Value> = shared
        .state
        .revoked()
        .into_iter()
        .map(|(id, at)| {
            // Celery sends `time.monotonic()` insertion times.
            let ts = since_boot - now.saturating_duration_since(at).as_secs_f64();
            let entry = json!([ts, id]);
            (id, entry)
        })
        .collect();
    Ok(json!({"revoked": revoked, "clock": shared.clock.forward()}))
}

/// Python truthiness of an optional argument.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

fn required_str(
    args: &Map<String, Value>,
    key: &str,
    command: &str,
) -> Result<String, CommandError> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err(CommandError::BadArguments(format!(
            "{command}() missing 1 required positional argument: '{key}'"
        ))),
        Some(other) => Err(CommandError::BadArguments(format!(
            "{command}(): {key} must be a string, not {other}"
        ))),
    }
}

/// One id or a list of ids (Celery's `maybe_list`), deduplicated in order.
fn id_list(
    args: &Map<String, Value>,
    key: &str,
    command: &str,
) -> Result<Vec<String>, CommandError> {
    let mut ids: Vec<String> = Vec::new();
    match args.get(key) {
        Some(Value::String(s)) => ids.push(s.clone()),
        Some(Value::Array(a)) => {
            for v in a {
                match v {
                    Value::String(s) => ids.push(s.clone()),
                    other => {
                        return Err(CommandError::BadArguments(format!(
                            "{command}(): task ids must be strings, not {other}"
                        )));
                    }
                }
            }
        }
        Some(Value::Null) => {}
        None => {
            return Err(CommandError::BadArguments(format!(
                "{command}() missing 1 required positional argument: '{key}'"
            )));
        }
        Some(other) => {
            return Err(CommandError::BadArguments(format!(
                "{command}(): {key} must be a task id or a list of them, not {other}"
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    Ok(ids)
}

/// Python's `str(float)` for the values astroworker keeps as `f64`.
fn python_float(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

fn python_bool(b: bool) -> String {
    if b { "True" } else { "False" }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_like_python_reprs() {
        assert_eq!(
            CommandError::UnknownCommand("nosuch".into()).to_string(),
            "KeyError('nosuch')"
        );
        assert_eq!(
            CommandError::BadArguments(
                "revoke() missing 1 required positional argument: 'task_id'".into()
            )
            .to_string(),
            "TypeError(\"revoke() missing 1 required positional argument: 'task_id'\")"
        );
    }

    #[test]
    fn id_lists_accept_one_or_many() {
        let args = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            id_list(&args(json!({"ids": "a"})), "ids", "q").unwrap(),
            ["a"]
        );
        assert_eq!(
            id_list(&args(json!({"ids": ["a", "b", "a"]})), "ids", "q").unwrap(),
            ["a", "b"]
        );
        assert!(id_list(&args(json!({})), "ids", "q").is_err());
        assert!(id_list(&args(json!({"ids": [1]})), "ids", "q").is_err());
        assert!(id_list(&args(json!({"ids": 5})), "ids", "q").is_err());
    }

    #[test]
    fn truthiness_and_python_text() {
        assert!(!truthy(None));
        assert!(!truthy(Some(&json!(null))));
        assert!(truthy(Some(&json!(true))));
        assert!(!truthy(Some(&json!(0))));
        assert!(truthy(Some(&json!("yes"))));
        assert_eq!(python_float(180.0), "180.0");
        assert_eq!(python_float(0.5), "0.5");
        assert_eq!(python_bool(true), "True");
    }

    #[test]
    fn queue_dict_matches_the_golden_active_queues_reply() {
        let all: Value = serde_json::from_str(include_str!(
            "../../tests/golden/pidbox_requests_and_replies.decoded.json"
        ))
        .unwrap();
        let golden = &all["active_queues#1"]["reply_envelope"]["body"]["w1@vm"][0];
        let ours = queue_dict(&QueueSpec::named("celery"));
        assert_eq!(&ours, golden);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(golden));
    }
}
