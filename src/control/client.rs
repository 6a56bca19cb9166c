//! The caller's side of remote control, as `celery inspect`/`celery control` speak it: bind a
//! reply list, PUBLISH the request, collect replies until the timeout or until every
//! destination answered, then remove the reply binding and lists.

use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use serde_json::{Map, Value};

use super::ControlError;
use super::message::{self, ControlReply, ControlRequest, ReplyTo};
use crate::broker::url::RedisUrl;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one broadcast brought back.
#[derive(Debug, Default)]
pub struct Replies {
    /// How many subscribers the request reached (Redis' PUBLISH count: live mailboxes).
    pub receivers: u64,
    /// `(node, reply)` in arrival order.
    pub replies: Vec<(String, Value)>,
}

pub struct ControlClient {
    url: RedisUrl,
    client: redis::Client,
}

impl ControlClient {
    pub fn new(url: &RedisUrl) -> Result<Self, ControlError> {
        Ok(Self {
            url: url.clone(),
            client: url.client()?,
        })
    }

    /// Sends `method` to `destination` (every worker when `None`). With `want_reply`, waits up
    /// to `timeout` for replies (or until each destination answered).
    pub async fn broadcast(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        destination: Option<Vec<String>>,
        timeout: Duration,
        want_reply: bool,
    ) -> Result<Replies, ControlError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let oid = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        let limit = destination.as_ref().map(Vec::len).filter(|n| *n > 0);
        let request = ControlRequest {
            method: method.to_string(),
            arguments,
            destination,
            pattern: None,
            matcher: None,
            ticket: want_reply.then(|| ticket.clone()),
            reply_to: want_reply.then(|| ReplyTo {
                exchange: message::REPLY_EXCHANGE.into(),
                routing_key: oid.clone(),
            }),
            clock: 1,
        };
        let expires = crate::broker::epoch_seconds() + timeout.as_secs_f64();
        if want_reply {
            conn.sadd::<_, _, ()>(
                message::reply_binding_key(),
                message::reply_binding_member(&oid),
            )
            .await?;
        }
        let receivers: u64 = conn
            .publish(
                message::channel(self.url.db),
                request.to_envelope(expires).to_json(),
            )
            .await?;
        let mut out = Replies {
            receivers,
            replies: Vec::new(),
        };
        if !want_reply {
            return Ok(out);
        }
        let collected = self
            .collect(&oid, &ticket, limit, timeout, &mut out.replies)
            .await;
        // Clean up even when collecting failed, as kombu does.
        let queue = message::reply_queue(&oid);
        let lists: Vec<String> = crate::broker::PRIORITY_STEPS
            .iter()
            .map(|s| crate::broker::queue_key(&queue, *s))
            .collect();
        let cleaned = redis::pipe()
            .srem(
                message::reply_binding_key(),
                message::reply_binding_member(&oid),
            )
            .ignore()
            .del(lists)
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        collected?;
        cleaned?;
        Ok(out)
    }

    async fn collect(
        &self,
        oid: &str,
        ticket: &str,
        limit: Option<usize>,
        timeout: Duration,
        replies: &mut Vec<(String, Value)>,
    ) -> Result<(), ControlError> {
        // A dedicated connection without a response timeout: BRPOP blocks it.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let queue = message::reply_queue(oid);
        let deadline = Instant::now() + timeout;
        while limit.is_none_or(|n| replies.len() < n) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // BRPOP's timeout has millisecond resolution; 0 would block for ever.
            let wait = left.as_secs_f64().max(0.001);
            let popped: Option<(String, Vec<u8>)> = conn.brpop(&queue, wait).await?;
            let Some((_, raw)) = popped else { break };
            match ControlReply::decode(&raw) {
                Ok(reply) if reply.ticket.as_deref().is_none_or(|t| t == ticket) => {
                    replies.extend(reply.body);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("ignoring a malformed reply: {e}"),
            }
        }
        Ok(())
    }
}
