//! The execution slots (`-c N`) and the prefetch window (`N × prefetch multiplier`), resizable
//! at run time by `pool_grow`/`pool_shrink` as Celery's pool and QoS are.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

pub(crate) struct Pool {
    /// One permit per task that may run at once.
    pub slots: Arc<Semaphore>,
    /// One permit per message that may be held unacked (not ETA ones); unlimited with a
    /// prefetch multiplier of 0.
    pub prefetch: Arc<Semaphore>,
    size: AtomicUsize,
    multiplier: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PoolError {
    #[error("Can't shrink pool. All processes busy!")]
    TooSmall,
}

impl Pool {
    pub fn new(concurrency: usize, multiplier: usize) -> Self {
        let prefetch = match concurrency.saturating_mul(multiplier) {
            0 => Semaphore::MAX_PERMITS,
            n => n,
        };
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            prefetch: Arc::new(Semaphore::new(prefetch)),
            size: AtomicUsize::new(concurrency),
            multiplier,
        }
    }

    pub fn size(&self) -> usize {
        self.size.load(Ordering::SeqCst)
    }

    /// The prefetch window now (0 = unlimited).
    pub fn prefetch_count(&self) -> usize {
        self.size().saturating_mul(self.multiplier)
    }

    pub fn grow(&self, n: usize) {
        self.size.fetch_add(n, Ordering::SeqCst);
        self.slots.add_permits(n);
        if self.multiplier > 0 {
            self.prefetch.add_permits(n * self.multiplier);
        }
    }

    /// Removes `n` slots (at least one stays); slots busy now disappear when their task ends.
    pub fn shrink(&self, n: usize) -> Result<(), PoolError> {
        self.size
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (n < s).then_some(s - n)
            })
            .map_err(|_| PoolError::TooSmall)?;
        retire(self.slots.clone(), n);
        if self.multiplier > 0 {
            retire(self.prefetch.clone(), n * self.multiplier);
        }
        Ok(())
    }
}

/// Takes `n` permits out of circulation as they become free.
fn retire(sem: Arc<Semaphore>, n: usize) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    tokio::spawn(async move {
        if let Ok(p) = sem.acquire_many_owned(n).await {
            p.forget();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_and_shrinks_slots_and_window() {
        let pool = Pool::new(2, 4);
        assert_eq!(pool.prefetch_count(), 8);
        pool.grow(3);
        assert_eq!(pool.size(), 5);
        assert_eq!(pool.slots.available_permits(), 5);
        assert_eq!(pool.prefetch.available_permits(), 20);
        let busy = pool.slots.clone().acquire_owned().await.unwrap();
        pool.shrink(4).unwrap();
        assert_eq!(pool.size(), 1);
        tokio::task::yield_now().await;
        // Four free slots went at once; the busy one stays until its task ends.
        assert_eq!(pool.slots.available_permits(), 0);
        drop(busy);
        assert_eq!(pool.slots.available_permits(), 1);
        assert_eq!(pool.shrink(1), Err(PoolError::TooSmall));
        assert_eq!(pool.size(), 1);
        let unlimited = Pool::new(2, 0);
        assert_eq!(unlimited.prefetch_count(), 0);
        unlimited.grow(1);
        assert_eq!(
            unlimited.prefetch.available_permits(),
            Semaphore::MAX_PERMITS
        );
    }
}
