//! A Redis connection that survives server restarts.
//!
//! [`RedisConn`] keeps one multiplexed connection and replaces it when it breaks. Callers go
//! through [`RedisConn::retrying`], which re-runs an operation after transient failures
//! (connection refused, reset, timeout) with capped exponential backoff, so that a Redis restart
//! delays work instead of losing it. Every operation passed to it must be idempotent.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tokio::sync::Mutex;

use crate::broker::url::RedisUrl;

/// How long [`RedisConn::retrying`] keeps trying before it gives up and returns the error.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(600);

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct RedisConn {
    url: RedisUrl,
    client: redis::Client,
    config: AsyncConnectionConfig,
    current: Mutex<Option<MultiplexedConnection>>,
    retry_for: Duration,
}

impl RedisConn {
    /// A connection whose commands time out after `response_timeout` (`None`: never, which is
    /// what a connection issuing blocking commands such as BRPOP needs).
    pub fn new(url: &RedisUrl, response_timeout: Option<Duration>) -> Result<Self, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(response_timeout);
        Ok(Self {
            url: url.clone(),
            client: url.client()?,
            config,
            current: Mutex::new(None),
            retry_for: DEFAULT_RETRY_FOR,
        })
    }

    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The current connection, opening one when there is none.
    pub async fn get(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.current.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the current connection so that the next call opens a new one.
    pub async fn reset(&self) {
        *self.current.lock().await = None;
    }

    /// Runs `op` on a connection, retrying transient failures for up to the configured time.
    pub async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RedisError>
    where
        F: FnMut(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let started = Instant::now();
        let mut backoff = MIN_BACKOFF;
        let mut attempt = 0u32;
        loop {
            let result = match self.get().await {
                Ok(conn) => op(conn).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(target: "astroworker::broker", "{what}: Redis at {} is back", self.url);
                    }
                    return Ok(v);
                }
                Err(e) if is_transient(&e) && started.elapsed() < self.retry_for => {
                    attempt += 1;
                    self.reset().await;
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(
                            target: "astroworker::broker",
                            "{what}: cannot reach Redis at {} ({e}); retrying in {:.1}s",
                            self.url,
                            backoff.as_secs_f64()
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Errors after which the same command may succeed on a fresh connection.
pub fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN")
        )
}

/// The backoff schedule used by loops that retry forever (the fetch loop).
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN_BACKOFF }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        d
    }

    pub fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), MIN_BACKOFF);
    }
}
