//! The Redis broker, spoken exactly as kombu's Redis transport speaks it.
//!
//! - Queues are Redis lists; a priority p (0–9) goes to the bucket list `queue SEP step` where
//!   step is the largest of 0, 3, 6, 9 not above p (step 0 is the bare name). Lower steps are
//!   fetched first.
//! - Every fetched message is recorded in the `unacked` hash and `unacked_index` sorted set
//!   before it is processed, so that any kombu consumer (Python or astroworker) can restore it
//!   after the visibility timeout if this worker dies. Ack = remove both entries.
//! - Restore (visibility timeout, shutdown) RPUSHes the envelope back to the head of its queue
//!   with `redelivered` marks; reject-with-requeue LPUSHes it to the tail.

pub mod envelope;
pub mod url;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands as _;
use serde_json::Value;

use crate::connection::RedisConn;
use envelope::Envelope;
use url::RedisUrl;

/// kombu's separator between a queue name and its priority step, and inside binding members.
pub const SEP: &str = "\x06\x16";
/// kombu's default `priority_steps`.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
/// The default `BRPOP` timeout kombu uses (seconds).
pub const FETCH_TIMEOUT_S: f64 = 1.0;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Url(#[from] url::UrlError),
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("malformed message envelope: {0}")]
    Envelope(String),
}

/// The list a message of priority `priority` for `queue` lives in.
pub fn queue_key(queue: &str, priority: u8) -> String {
    let step = PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|s| *s <= priority.min(9))
        .unwrap_or(0);
    if step == 0 {
        queue.to_string()
    } else {
        format!("{queue}{SEP}{step}")
    }
}

/// The queue a list belongs to (the list name without its priority suffix).
pub fn queue_of_key(key: &str) -> &str {
    key.split_once(SEP).map_or(key, |(q, _)| q)
}

/// BRPOP keys for `queues`: every queue at step 0, then every queue at step 3, and so on.
pub fn fetch_keys(queues: &[String]) -> Vec<String> {
    PRIORITY_STEPS
        .iter()
        .flat_map(|step| queues.iter().map(move |q| queue_key(q, *step)))
        .collect()
}

/// The names of kombu's bookkeeping keys (transport options `unacked_key`, …).
#[derive(Debug, Clone)]
pub struct KombuKeys {
    pub unacked: String,
    pub unacked_index: String,
    pub unacked_mutex: String,
}

impl Default for KombuKeys {
    fn default() -> Self {
        Self {
            unacked: "unacked".into(),
            unacked_index: "unacked_index".into(),
            unacked_mutex: "unacked_mutex".into(),
        }
    }
}

/// A message popped from a queue and recorded as unacked.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The list it was popped from (queue name plus priority suffix).
    pub list: String,
    pub envelope: Envelope,
    /// kombu's delivery tag; the key of the `unacked` entry. Present for every recorded delivery.
    pub tag: String,
}

impl Delivery {
    pub fn queue(&self) -> &str {
        queue_of_key(&self.list)
    }
}

/// How a message goes back to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// RPUSH: next to be consumed (kombu's restore: visibility timeout, shutdown).
    Head,
    /// LPUSH: behind everything already queued (kombu's reject with requeue).
    Tail,
}

const RESTORE_SCRIPT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] == 'head' then redis.call('RPUSH', KEYS[3], ARGV[2]) else redis.call('LPUSH', KEYS[3], ARGV[2]) end
return 1
";

const RELEASE_MUTEX_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub struct Broker {
    /// Commands other than the blocking fetch.
    conn: RedisConn,
    /// A dedicated connection with no response timeout for BRPOP.
    fetch: RedisConn,
    keys: KombuKeys,
    restore_script: redis::Script,
    release_script: redis::Script,
}

impl Broker {
    pub fn new(url: &RedisUrl) -> Result<Self, BrokerError> {
        Ok(Self {
            conn: RedisConn::new(url, Some(Duration::from_secs(30)))?,
            fetch: RedisConn::new(url, None)?,
            keys: KombuKeys::default(),
            restore_script: redis::Script::new(RESTORE_SCRIPT),
            release_script: redis::Script::new(RELEASE_MUTEX_SCRIPT),
        })
    }

    pub fn url(&self) -> &RedisUrl {
        self.conn.url()
    }

    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// Checks that the broker answers (one attempt, no retry).
    pub async fn ping(&self) -> Result<(), BrokerError> {
        let mut c = self.conn.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Declares a queue the way kombu does: the binding `queue SEP "" SEP queue` in the set
    /// `_kombu.binding.<queue>` (direct exchange named like the queue, Celery's default).
    pub async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.declare_binding(queue, queue, queue).await
    }

    /// Binds `queue` to the direct exchange `exchange` with `routing_key`: the member
    /// `routing_key SEP "" SEP queue` in the set `_kombu.binding.<exchange>`.
    pub async fn declare_binding(
        &self,
        exchange: &str,
        routing_key: &str,
        queue: &str,
    ) -> Result<(), BrokerError> {
        let key = format!("_kombu.binding.{exchange}");
        let member = format!("{routing_key}{SEP}{SEP}{queue}");
        self.conn
            .retrying("declare queue", |mut c| {
                let (key, member) = (key.clone(), member.clone());
                async move { c.sadd::<_, _, ()>(key, member).await }
            })
            .await?;
        Ok(())
    }

    /// One `BRPOP` over `keys`; `None` when the timeout passed without a message.
    /// Errors are returned to the caller, whose loop decides how to back off.
    pub async fn fetch(
        &self,
        keys: &[String],
        timeout_s: f64,
    ) -> Result<Option<(String, Vec<u8>)>, BrokerError> {
        let mut c = match self.fetch.get().await {
            Ok(c) => c,
            Err(e) => {
                self.fetch.reset().await;
                return Err(e.into());
            }
        };
        let popped: Result<Option<(String, Vec<u8>)>, _> = c.brpop(keys, timeout_s).await;
        match popped {
            Ok(v) => Ok(v),
            Err(e) => {
                self.fetch.reset().await;
                Err(e.into())
            }
        }
    }

    /// Records a fetched message as unacked (kombu's `ZADD unacked_index` + `HSET unacked` in
    /// one transaction). The stored value is `[envelope, exchange, routing_key]`.
    pub async fn record_unacked(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let env = &delivery.envelope;
        let routing_key = env
            .routing_key()
            .unwrap_or_else(|| delivery.queue())
            .to_string();
        let value = Value::Array(vec![
            env.as_value(),
            Value::String(env.exchange().to_string()),
            Value::String(routing_key),
        ])
        .to_string();
        let now = epoch_seconds();
        self.conn
            .retrying("record unacked", |mut c| {
                let value = value.clone();
                let tag = delivery.tag.clone();
                let keys = self.keys.clone();
                async move {
                    redis::pipe()
                        .atomic()
                        .zadd(&keys.unacked_index, &tag, now)
                        .ignore()
                        .hset(&keys.unacked, &tag, value)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                }
            })
            .await?;
        Ok(())
    }

    /// Acknowledges a delivery (also what kombu does for reject without requeue).
    pub async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        self.conn
            .retrying("ack", |mut c| {
                let keys = self.keys.clone();
                async move {
                    redis::pipe()
                        .atomic()
                        .zrem(&keys.unacked_index, tag)
                        .ignore()
                        .hdel(&keys.unacked, tag)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                }
            })
            .await?;
        Ok(())
    }

    /// Pushes the unacked message `tag` back to its queue, marked redelivered, and removes its
    /// unacked entry. Returns false when there was no such entry (already acked or restored).
    pub async fn requeue(&self, tag: &str, how: Requeue) -> Result<bool, BrokerError> {
        let raw: Option<String> = self
            .conn
            .retrying("read unacked", |mut c| {
                let key = self.keys.unacked.clone();
                async move { c.hget(key, tag).await }
            })
            .await?;
        let Some(raw) = raw else { return Ok(false) };
        let (mut env, exchange, routing_key) = parse_unacked_value(&raw)?;
        env.mark_redelivered();
        let list = self
            .route(&exchange, &routing_key)
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| routing_key.clone());
        let list = queue_key(&list, env.priority());
        let payload = env.to_json();
        let side = match how {
            Requeue::Head => "head",
            Requeue::Tail => "tail",
        };
        let done: i64 = self
            .conn
            .retrying("requeue", |mut c| {
                let mut inv = self.restore_script.key(&self.keys.unacked);
                inv.key(&self.keys.unacked_index)
                    .key(&list)
                    .arg(tag)
                    .arg(&payload)
                    .arg(side);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(done == 1)
    }

    /// Restores every unacked message older than `visibility_timeout` (any consumer's), under
    /// kombu's `unacked_mutex`. Returns how many were restored; 0 if another consumer holds the
    /// mutex.
    pub async fn restore_visible(
        &self,
        visibility_timeout: Duration,
    ) -> Result<usize, BrokerError> {
        let token = uuid::Uuid::new_v4().to_string();
        let acquired: Option<String> = self
            .conn
            .retrying("lock unacked", |mut c| {
                let (key, token) = (self.keys.unacked_mutex.clone(), token.clone());
                async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(token)
                        .arg("PX")
                        .arg(300_000)
                        .arg("NX")
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        if acquired.is_none() {
            return Ok(0);
        }
        let result = self.restore_older_than(visibility_timeout).await;
        let mut c = self.conn.get().await?;
        let _: i64 = self
            .release_script
            .key(&self.keys.unacked_mutex)
            .arg(&token)
            .invoke_async(&mut c)
            .await?;
        result
    }

    async fn restore_older_than(&self, age: Duration) -> Result<usize, BrokerError> {
        let ceiling = epoch_seconds() - age.as_secs_f64();
        let tags: Vec<String> = self
            .conn
            .retrying("scan unacked", |mut c| {
                let key = self.keys.unacked_index.clone();
                async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg("-inf")
                        .arg(ceiling)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let mut restored = 0;
        for tag in tags {
            match self.requeue(&tag, Requeue::Head).await {
                Ok(true) => restored += 1,
                Ok(false) => {}
                Err(BrokerError::Envelope(why)) => {
                    tracing::error!(target: "astroworker::broker", %tag, "dropping unrestorable unacked entry: {why}");
                    self.ack(&tag).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(restored)
    }

    /// Moves the `unacked_index` score of messages this worker still holds to now, so that no
    /// consumer restores them while they wait for their ETA or run longer than the visibility
    /// timeout. A score is only updated while its entry exists (`ZADD XX`).
    pub async fn touch_unacked(&self, tags: &[String]) -> Result<(), BrokerError> {
        if tags.is_empty() {
            return Ok(());
        }
        let now = epoch_seconds();
        self.conn
            .retrying("refresh unacked", |mut c| {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(&self.keys.unacked_index).arg("XX");
                for tag in tags {
                    cmd.arg(now).arg(tag);
                }
                async move { cmd.query_async::<()>(&mut c).await }
            })
            .await?;
        Ok(())
    }

    /// The queues a message published to (`exchange`, `routing_key`) lands in: for the default
    /// exchange `""` the queue named by the routing key; otherwise the queues bound to the
    /// exchange with that routing key (kombu's direct routing through `_kombu.binding.*`).
    pub async fn route(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_string()]);
        }
        let members: Vec<String> = self
            .conn
            .retrying("read bindings", |mut c| {
                let key = format!("_kombu.binding.{exchange}");
                async move { c.smembers(key).await }
            })
            .await?;
        let mut queues: Vec<String> = members
            .iter()
            .filter_map(|m| {
                let mut parts = m.split(SEP);
                let (rk, _pattern, queue) = (parts.next()?, parts.next()?, parts.next()?);
                (rk == routing_key).then(|| queue.to_string())
            })
            .collect();
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    /// Publishes an envelope (LPUSH to every queue the routing selects, in its priority bucket).
    /// A message that routes nowhere is dropped, like kombu; that is logged.
    pub async fn publish(
        &self,
        envelope: &Envelope,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let queues = self.route(exchange, routing_key).await?;
        if queues.is_empty() {
            tracing::warn!(target: "astroworker::broker", %exchange, %routing_key, "message routed to no queue and was dropped");
        }
        let payload = envelope.to_json();
        for queue in queues {
            let list = queue_key(&queue, envelope.priority());
            self.conn
                .retrying("publish", |mut c| {
                    let (list, payload) = (list.clone(), payload.clone());
                    async move { c.lpush::<_, _, ()>(list, payload).await }
                })
                .await?;
        }
        Ok(())
    }

    /// Length of every priority bucket of `queue`, summed.
    pub async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        for step in PRIORITY_STEPS {
            pipe.llen(queue_key(queue, step));
        }
        let lens: Vec<u64> = self
            .conn
            .retrying("queue depth", |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(lens.iter().sum())
    }
}

/// Splits an `unacked` hash value `[envelope, exchange, routing_key]`.
fn parse_unacked_value(raw: &str) -> Result<(Envelope, String, String), BrokerError> {
    let bad = |why: &str| BrokerError::Envelope(format!("unacked entry: {why}"));
    let value: Value = serde_json::from_str(raw).map_err(|e| bad(&e.to_string()))?;
    let Value::Array(mut parts) = value else {
        return Err(bad("not a list"));
    };
    if parts.len() != 3 {
        return Err(bad("not [envelope, exchange, routing_key]"));
    }
    let routing_key = parts.pop().and_then(|v| v.as_str().map(String::from));
    let exchange = parts.pop().and_then(|v| v.as_str().map(String::from));
    let env = Envelope::from_value(parts.pop().expect("three parts"))?;
    match (exchange, routing_key) {
        (Some(e), Some(r)) => Ok((env, e, r)),
        _ => Err(bad("exchange or routing key is not a string")),
    }
}

pub fn epoch_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_buckets_follow_kombu() {
        let q: Vec<_> = (0..=10).map(|p| queue_key("celery", p)).collect();
        assert_eq!(q[0], "celery");
        assert_eq!(q[2], "celery");
        assert_eq!(q[3], "celery\x06\x163");
        assert_eq!(q[5], "celery\x06\x163");
        assert_eq!(q[6], "celery\x06\x166");
        assert_eq!(q[8], "celery\x06\x166");
        assert_eq!(q[9], "celery\x06\x169");
        assert_eq!(q[10], "celery\x06\x169");
        assert_eq!(queue_of_key("celery\x06\x166"), "celery");
        assert_eq!(queue_of_key("fits"), "fits");
    }

    #[test]
    fn fetch_keys_are_step_major() {
        let keys = fetch_keys(&["a".into(), "b".into()]);
        assert_eq!(
            keys,
            [
                "a",
                "b",
                "a\x06\x163",
                "b\x06\x163",
                "a\x06\x166",
                "b\x06\x166",
                "a\x06\x169",
                "b\x06\x169"
            ]
        );
    }

    #[test]
    fn unacked_value_roundtrip() {
        let golden = include_str!("../../tests/golden/unacked_hash_value.json");
        let (env, exchange, rk) = parse_unacked_value(golden).unwrap();
        assert_eq!(exchange, "");
        assert_eq!(rk, "celery");
        assert_eq!(
            env.delivery_tag(),
            Some("4bbbb12a-5a99-49f5-b7c2-ba5e08e02acc")
        );
        assert!(parse_unacked_value("[1, 2]").is_err());
        assert!(parse_unacked_value("{}").is_err());
    }
}
