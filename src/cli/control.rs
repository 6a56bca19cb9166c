//! `astroworker inspect …` and `astroworker control …`: Celery's remote-control client without
//! Python, for scripts and container health checks
//! (`astroworker inspect ping -d worker@$HOSTNAME`).
//!
//! Replies are printed as one JSON object `{node: reply}`. Exit status 0 when a reply came from
//! every `-d` destination (without `-d`: from at least one worker); `control shutdown` expects
//! no reply and succeeds when a worker's mailbox received it.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::config;
use crate::control::ControlError;
use crate::control::client::{ControlClient, Replies};

/// Who to ask and how long to wait.
#[derive(Debug, Args)]
pub struct Target {
    /// Broker URL (falls back like `worker -b`).
    #[arg(
        short = 'b',
        long,
        global = true,
        env = "CELERY_BROKER_URL",
        hide_env_values = true
    )]
    pub broker: Option<String>,
    /// Node name(s) to ask (comma-separated, repeatable); default: every worker.
    #[arg(
        short = 'd',
        long = "destination",
        global = true,
        value_delimiter = ','
    )]
    pub destination: Vec<String>,
    /// Seconds to wait for replies.
    #[arg(short = 't', long, global = true, default_value_t = 1.0)]
    pub timeout: f64,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub command: InspectCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Ping workers.
    Ping,
    /// Worker statistics.
    Stats,
    /// Tasks running now.
    Active,
    /// Tasks received and waiting for a free slot.
    Reserved,
    /// Tasks waiting for their ETA.
    Scheduled,
    /// Registered task names.
    Registered,
    /// Queues consumed.
    #[command(name = "active_queues", alias = "active-queues")]
    ActiveQueues,
    /// Revoked task ids.
    Revoked,
    /// State of tasks by id.
    #[command(name = "query_task", alias = "query-task")]
    QueryTask {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    #[command(subcommand)]
    pub command: ControlCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Revoke tasks by id; with --terminate, also stop them if running.
    Revoke {
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long)]
        terminate: bool,
        #[arg(long, default_value = "SIGTERM")]
        signal: String,
    },
    /// Warm shutdown of the worker(s).
    Shutdown,
    /// Start consuming from a queue.
    #[command(name = "add_consumer", alias = "add-consumer")]
    AddConsumer { queue: String },
    /// Stop consuming from a queue.
    #[command(name = "cancel_consumer", alias = "cancel-consumer")]
    CancelConsumer { queue: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlCliError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Url(#[from] crate::broker::url::UrlError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("--timeout must be a positive number of seconds")]
    Timeout,
}

impl InspectArgs {
    fn request(&self) -> (&'static str, Map<String, Value>) {
        let args = |v: Value| v.as_object().cloned().unwrap_or_default();
        match &self.command {
            InspectCommand::Ping => ("ping", Map::new()),
            InspectCommand::Stats => ("stats", Map::new()),
            InspectCommand::Active => ("active", args(json!({"safe": null}))),
            InspectCommand::Reserved => ("reserved", Map::new()),
            InspectCommand::Scheduled => ("scheduled", Map::new()),
            InspectCommand::Registered => ("registered", args(json!({"taskinfoitems": []}))),
            InspectCommand::ActiveQueues => ("active_queues", Map::new()),
            InspectCommand::Revoked => ("revoked", Map::new()),
            InspectCommand::QueryTask { ids } => ("query_task", args(json!({"ids": ids}))),
        }
    }
}

impl ControlArgs {
    fn request(&self) -> (&'static str, Map<String, Value>) {
        let args = |v: Value| v.as_object().cloned().unwrap_or_default();
        match &self.command {
            ControlCommand::Revoke {
                ids,
                terminate,
                signal,
            } => (
                "revoke",
                args(json!({"task_id": ids, "terminate": terminate, "signal": signal})),
            ),
            ControlCommand::Shutdown => ("shutdown", Map::new()),
            ControlCommand::AddConsumer { queue } => (
                "add_consumer",
                args(
                    json!({"queue": queue, "exchange": null, "exchange_type": "direct", "routing_key": null}),
                ),
            ),
            ControlCommand::CancelConsumer { queue } => {
                ("cancel_consumer", args(json!({"queue": queue})))
            }
        }
    }
}

/// Runs `astroworker inspect …`; returns the exit status.
pub async fn inspect(a: &InspectArgs) -> Result<u8, ControlCliError> {
    let (method, arguments) = a.request();
    send(&a.target, method, arguments, true).await
}

/// Runs `astroworker control …`; returns the exit status.
pub async fn control(a: &ControlArgs) -> Result<u8, ControlCliError> {
    let (method, arguments) = a.request();
    // Celery's worker stops before answering `shutdown`: wait for no reply.
    let want_reply = method != "shutdown";
    send(&a.target, method, arguments, want_reply).await
}

async fn send(
    target: &Target,
    method: &str,
    arguments: Map<String, Value>,
    want_reply: bool,
) -> Result<u8, ControlCliError> {
    if !(target.timeout.is_finite() && target.timeout > 0.0) {
        return Err(ControlCliError::Timeout);
    }
    let url = config::resolve_broker(target.broker.as_deref())?;
    let destination = (!target.destination.is_empty()).then(|| target.destination.clone());
    let client = ControlClient::new(&url)?;
    let Replies { receivers, replies } = client
        .broadcast(
            method,
            arguments,
            destination.clone(),
            Duration::from_secs_f64(target.timeout),
            want_reply,
        )
        .await?;
    if !want_reply {
        // PUBLISH counts the mailboxes listening; a -d that names no worker is not detectable
        // here, as in Celery.
        if receivers == 0 {
            eprintln!("Error: no worker is listening on {url}");
            return Ok(1);
        }
        println!(
            "{}",
            json!({"ok": format!("{method} sent to {receivers} mailbox(es)")})
        );
        return Ok(0);
    }
    let mut out = Map::new();
    for (node, reply) in replies {
        out.insert(node, reply);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(out.clone())).expect("JSON serializes")
    );
    let success = match &destination {
        Some(dest) => dest.iter().all(|d| out.contains_key(d)),
        None => !out.is_empty(),
    };
    if !success {
        match &destination {
            Some(dest) => {
                let missing: Vec<&str> = dest
                    .iter()
                    .filter(|d| !out.contains_key(*d))
                    .map(String::as_str)
                    .collect();
                eprintln!("Error: no reply from {}", missing.join(", "));
            }
            None => eprintln!("Error: No nodes replied within time constraint"),
        }
    }
    Ok(u8::from(!success))
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use clap::Parser;

    #[test]
    fn parses_celery_style_inspect_and_control() {
        let cli = Cli::try_parse_from([
            "astroworker",
            "inspect",
            "ping",
            "-d",
            "a@h,b@h",
            "-b",
            "redis://h/1",
            "-t",
            "2",
        ])
        .unwrap();
        let Command::Inspect(a) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(a.target.destination, ["a@h", "b@h"]);
        assert_eq!(a.target.timeout, 2.0);
        assert_eq!(a.request().0, "ping");

        let cli = Cli::try_parse_from([
            "astroworker",
            "control",
            "revoke",
            "id1",
            "id2",
            "--terminate",
        ])
        .unwrap();
        let Command::Control(c) = cli.command else {
            panic!("parsed as another command")
        };
        let (method, args) = c.request();
        assert_eq!(method, "revoke");
        assert_eq!(args["task_id"], serde_json::json!(["id1", "id2"]));
        assert_eq!(args["terminate"], serde_json::json!(true));
        assert!(Cli::try_parse_from(["astroworker", "inspect", "query_task"]).is_err());
    }
}
