//! kombu's `LamportClock`: the logical clock a worker stamps on pidbox replies (and events).
//!
//! A worker forwards it once per received pidbox message, adjusts it to `max(local, remote) + 1`
//! with the request's `clock` header, and forwards it again for the reply header — so a fresh
//! worker answers a request stamped 1 with clock 3, as the golden captures show.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct LamportClock(AtomicU64);

impl LamportClock {
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// `+1`; returns the new value.
    pub fn forward(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// `max(local, other) + 1`; returns the new value.
    pub fn adjust(&self, other: u64) -> u64 {
        let mut current = self.value();
        loop {
            let next = current.max(other) + 1;
            match self
                .0
                .compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_and_adjust_like_kombu() {
        let c = LamportClock::default();
        // on_message forward, adjust(1), reply forward: the golden ping reply carries 3.
        c.forward();
        c.adjust(1);
        assert_eq!(c.forward(), 3);
        assert_eq!(c.adjust(10), 11);
        assert_eq!(c.adjust(2), 12);
        assert_eq!(c.value(), 12);
    }
}
