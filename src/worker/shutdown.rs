//! The shutdown signal every worker loop watches, and why the worker stopped.

use tokio::sync::watch;

/// The worker's phase. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Stop fetching; finish running tasks; give prefetched ones back.
    Warm,
    /// Stop now: cancel running tasks, give back everything still unacked.
    Cold,
}

/// What asked the worker to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Signal(&'static str),
    /// The remote-control `shutdown` command.
    Remote,
}

/// Why [`crate::worker::Worker::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Warm(Trigger),
    Cold(Trigger),
}

impl StopReason {
    /// Celery's exit status: 0 after a warm shutdown, 1 after a cold one.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Warm(_) => 0,
            Self::Cold(_) => 1,
        }
    }
}

#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<(Phase, Option<Trigger>)>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            tx: watch::channel((Phase::Running, None)).0,
        }
    }
}

impl Shutdown {
    /// Moves to `phase` if that is further than the current phase.
    pub fn request(&self, phase: Phase, trigger: Trigger) {
        self.tx.send_if_modified(|(current, why)| {
            if phase > *current {
                *current = phase;
                *why = Some(trigger);
                true
            } else {
                false
            }
        });
    }

    pub fn phase(&self) -> Phase {
        self.tx.borrow().0
    }

    pub fn is_running(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// Resolves once the phase is at least `phase`.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|(p, _)| *p >= phase).await;
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        let (phase, trigger) = self.tx.borrow().clone();
        let trigger = trigger?;
        match phase {
            Phase::Running => None,
            Phase::Warm => Some(StopReason::Warm(trigger)),
            Phase::Cold => Some(StopReason::Cold(trigger)),
        }
    }
}

/// Maps process signals onto the shutdown phases: SIGTERM/SIGINT warm, a second one (or
/// SIGQUIT) cold. `REMAP_SIGTERM=SIGQUIT` makes SIGTERM cold, as in Celery.
pub struct SignalWatcher {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    term_is_cold: bool,
}

impl SignalWatcher {
    /// Installs the handlers (must run inside the runtime).
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            term_is_cold: std::env::var("REMAP_SIGTERM")
                .is_ok_and(|v| v.eq_ignore_ascii_case("SIGQUIT")),
        })
    }

    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            let (name, cold) = tokio::select! {
                _ = self.term.recv() => ("SIGTERM", self.term_is_cold),
                _ = self.int.recv() => ("SIGINT", false),
                _ = self.quit.recv() => ("SIGQUIT", true),
            };
            let phase = if cold || !shutdown.is_running() {
                Phase::Cold
            } else {
                Phase::Warm
            };
            if phase == Phase::Warm {
                tracing::warn!(
                    "{name} received: warm shutdown (finishing running tasks; send again for cold shutdown)"
                );
            } else {
                tracing::warn!("{name} received: cold shutdown");
            }
            shutdown.request(phase, Trigger::Signal(name));
            if phase == Phase::Cold {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward() {
        let s = Shutdown::default();
        assert!(s.stop_reason().is_none());
        s.request(Phase::Cold, Trigger::Remote);
        s.request(Phase::Warm, Trigger::Signal("SIGTERM"));
        assert_eq!(s.phase(), Phase::Cold);
        assert_eq!(s.stop_reason(), Some(StopReason::Cold(Trigger::Remote)));
        s.reached(Phase::Warm).await;
        assert_eq!(s.stop_reason().unwrap().exit_code(), 1);
    }
}
