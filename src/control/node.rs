//! The worker's mailbox: subscribes to `/{db}.celery.pidbox` on a dedicated connection,
//! keeps the worker's binding in `_kombu.binding.celery.pidbox`, runs the requests meant for
//! this node and pushes replies where the caller waits for them.
//!
//! The subscription reconnects with backoff, like the fetch loop; a malformed message is
//! logged and dropped. The binding is removed at shutdown (warm or cold), as Celery does.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::AsyncCommands as _;

use super::commands::{self, Outcome};
use super::message::{self, ControlRequest, ReplyTo};
use crate::connection::Backoff;
use crate::worker::{Phase, Shared};

/// How long opening the subscription may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pushing one reply may take (callers wait about a second for replies).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the mailbox until the worker starts shutting down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let channel = message::channel(shared.broker.url().db);
    let client = match shared.broker.url().client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: "astroworker::control", "remote control disabled: {e}");
            return;
        }
    };
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    while shared.shutdown.is_running() {
        let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                failures += 1;
                if !wait_to_retry(&shared, &mut backoff, failures, &e.to_string()).await {
                    break;
                }
                continue;
            }
            Err(_) => {
                failures += 1;
                if !wait_to_retry(&shared, &mut backoff, failures, "timed out").await {
                    break;
                }
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(target: "astroworker::control", "Remote control connection restored");
            failures = 0;
            backoff.reset();
        }
        // (Re)declared on every connection: a restarted Redis may have lost it.
        declare_binding(&shared).await;
        tracing::debug!(target: "astroworker::control", %channel, "listening for remote control commands");
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => handle_message(&shared, msg.get_payload_bytes()).await,
                    None => {
                        failures += 1;
                        break;
                    }
                },
                _ = shared.shutdown.reached(Phase::Warm) => break,
            }
        }
        if shared.shutdown.is_running()
            && !wait_to_retry(&shared, &mut backoff, failures, "connection lost").await
        {
            break;
        }
    }
    remove_binding(&shared).await;
}

/// Logs a lost or failed subscription and sleeps before the next try; false on shutdown.
async fn wait_to_retry(shared: &Shared, backoff: &mut Backoff, failures: u32, why: &str) -> bool {
    let delay = backoff.next_delay();
    if failures == 1 || failures.is_power_of_two() {
        tracing::error!(
            target: "astroworker::control",
            "Remote control subscription to {} failed ({why}); trying again in {:.1}s",
            shared.broker.url(),
            delay.as_secs_f64()
        );
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shared.shutdown.reached(Phase::Warm) => false,
    }
}

/// Handles one published message, as kombu's `Node.handle_message` does.
async fn handle_message(shared: &Arc<Shared>, raw: &[u8]) {
    // Celery forwards the clock for every message, then adjusts it with the sender's.
    shared.clock.forward();
    let req = match ControlRequest::decode(raw) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(target: "astroworker::control", "Discarding malformed remote control message: {e}");
            return;
        }
    };
    shared.clock.adjust(req.clock);
    if !req.is_for(&shared.config.hostname) {
        return;
    }
    tracing::debug!(
        target: "astroworker::control",
        method = %req.method,
        ticket = req.ticket.as_deref().unwrap_or("-"),
        "pidbox received"
    );
    match commands::dispatch(shared, &req).await {
        Outcome::Reply(value) => {
            if let Some(reply_to) = &req.reply_to {
                reply(shared, &req, reply_to, value).await;
            }
        }
        Outcome::NoReply => {}
    }
}

/// Pushes a reply to every list bound to `reply_to` (none when the caller has gone).
async fn reply(
    shared: &Shared,
    req: &ControlRequest,
    reply_to: &ReplyTo,
    value: serde_json::Value,
) {
    let clock = shared.clock.forward();
    let envelope = message::reply_envelope(
        &shared.config.hostname,
        value,
        req.ticket.as_deref(),
        clock,
        reply_to,
    );
    let pushed = tokio::time::timeout(REPLY_TIMEOUT, async {
        let mut conn = shared.broker.conn().get().await?;
        let members: Vec<String> = conn
            .smembers(format!("_kombu.binding.{}", reply_to.exchange))
            .await?;
        let payload = envelope.to_json();
        let mut pushed = 0usize;
        for member in members {
            let mut parts = member.split(crate::broker::SEP);
            let (Some(rk), Some(_pattern), Some(queue)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if rk == reply_to.routing_key {
                let () = conn.lpush(queue, &payload).await?;
                pushed += 1;
            }
        }
        Ok::<_, redis::RedisError>(pushed)
    })
    .await;
    match pushed {
        Ok(Ok(0)) => tracing::debug!(
            target: "astroworker::control",
            method = %req.method,
            "no reply queue bound any more; reply dropped"
        ),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(target: "astroworker::control", method = %req.method, "could not send reply: {e}");
        }
        Err(_) => {
            tracing::warn!(target: "astroworker::control", method = %req.method, "could not send reply: timed out");
        }
    }
}

async fn declare_binding(shared: &Shared) {
    let node = &shared.config.hostname;
    let added = tokio::time::timeout(REPLY_TIMEOUT, async {
        let mut conn = shared.broker.conn().get().await?;
        conn.sadd::<_, _, i64>(
            message::node_binding_key(),
            message::node_binding_member(node),
        )
        .await
    })
    .await;
    match added {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(target: "astroworker::control", "could not declare the pidbox binding: {e}");
        }
        Err(_) => {
            tracing::warn!(target: "astroworker::control", "could not declare the pidbox binding: timed out");
        }
    }
}

/// Removes the binding and deletes the (unused) pidbox lists, as kombu does at shutdown.
async fn remove_binding(shared: &Shared) {
    let node = &shared.config.hostname;
    let queue = message::node_queue(node);
    let removed = tokio::time::timeout(REPLY_TIMEOUT, async {
        let mut conn = shared.broker.conn().get().await?;
        let keys: Vec<String> = crate::broker::PRIORITY_STEPS
            .iter()
            .map(|step| crate::broker::queue_key(&queue, *step))
            .collect();
        redis::pipe()
            .srem(
                message::node_binding_key(),
                message::node_binding_member(node),
            )
            .ignore()
            .del(keys)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    })
    .await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(target: "astroworker::control", "could not remove the pidbox binding: {e}");
        }
        Err(_) => {
            tracing::warn!(target: "astroworker::control", "could not remove the pidbox binding: timed out");
        }
    }
}
