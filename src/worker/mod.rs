//! The worker: a fetch loop, a dispatcher with `-c N` slots, an ETA timer and a maintenance loop,
//! sharing one [`WorkerState`] and stopping on one [`Shutdown`] signal.
//!
//! ```text
//!  BRPOP ──► record unacked ──► decode ──┬─► reserved ──► dispatcher ──► executor (blocking thread)
//!  (prefetch permits)                    └─► timer (ETA) ──┘
//! ```
//!
//! Flow control is kombu's: a message is fetched only while fewer than `prefetch_multiplier ×
//! concurrency` messages are unacked (ETA messages do not count, as in Celery).

mod canvas;
mod executor;
mod pool;
pub mod rate;
pub mod revoked;
pub mod shutdown;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use serde_json::{Value, json};

use crate::backend::{BackendError, ExceptionInfo, ResultBackend, State, TaskMeta};
use crate::broker::envelope::Envelope;
use crate::broker::{self, Broker, BrokerError, Delivery, Requeue};
use crate::config::{UnknownTasks, WorkerConfig};
use crate::connection::Backoff;
use crate::control::clock::LamportClock;
use crate::events::{Events, HEARTBEAT_FREQ, WorkerCounts};
use crate::protocol::Request;
use crate::tasks::{CancelReason, Registry};
pub use shutdown::{Phase, Shutdown, StopReason, Trigger};
use state::{Reserved, WorkerState};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Everything the worker's loops share.
pub(crate) struct Shared {
    pub config: WorkerConfig,
    pub broker: Broker,
    pub backend: Option<Arc<ResultBackend>>,
    pub registry: Registry,
    pub state: WorkerState,
    pub shutdown: Shutdown,
    /// `gen<pid>@<host>`, Celery's origin for messages this process publishes.
    pub origin: String,
    /// The Lamport clock stamped on pidbox replies and events.
    pub clock: Arc<LamportClock>,
    pub events: Events,
    pub rate_limits: rate::RateLimits,
    pub(crate) pool: pool::Pool,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) gpus: crate::gpu::GpuTelemetry,
    pub started: Instant,
    /// The queues consumed now (`-Q`, then `add_consumer`/`cancel_consumer`).
    queues: Mutex<Vec<QueueSpec>>,
    /// Bumped on every change of `queues`, so the fetch loop notices.
    queues_version: AtomicU64,
}

/// A consumed queue and how it is bound (kombu's direct binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub exchange: String,
    pub exchange_type: String,
    pub routing_key: String,
}

impl QueueSpec {
    /// Celery's default for a queue named on the command line: a direct exchange and a routing
    /// key both named like the queue.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            exchange: name.to_string(),
            exchange_type: "direct".into(),
            routing_key: name.to_string(),
        }
    }
}

pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    pub fn new(config: WorkerConfig, registry: Registry) -> Result<Self, WorkerError> {
        let broker = Broker::new(&config.broker)?;
        let backend = match &config.backend {
            Some(url) => Some(Arc::new(ResultBackend::new(url, config.result_expires)?)),
            None => None,
        };
        let queues = config.queues.iter().map(|q| QueueSpec::named(q)).collect();
        let origin = format!(
            "gen{}@{}",
            std::process::id(),
            crate::config::local_hostname()
        );
        let pool = pool::Pool::new(config.concurrency, config.prefetch_multiplier);
        let clock = Arc::new(LamportClock::default());
        let rate_limits = rate::RateLimits::default();
        for (task, rate) in &config.rate_limits {
            if !registry.names().any(|n| n == task) {
                tracing::warn!("--task-rate-limit for {task}, which is not a registered task");
            }
            // Validated when the configuration was read.
            let _ = rate_limits.set(task, rate);
        }
        let events = Events::new(&config.hostname, clock.clone(), config.task_events);
        let gpus = if config.gpu_telemetry {
            crate::gpu::GpuTelemetry::init()
        } else {
            crate::gpu::GpuTelemetry::off()
        };
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                broker,
                backend,
                registry,
                state: WorkerState::new(),
                shutdown: Shutdown::default(),
                origin,
                clock,
                events,
                rate_limits,
                pool,
                metrics: crate::metrics::Metrics::new(),
                gpus,
                started: Instant::now(),
                queues: Mutex::new(queues),
                queues_version: AtomicU64::new(0),
            }),
        })
    }

    /// A handle to stop the worker from outside (tests, remote control).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shared.shutdown.clone()
    }

    /// Runs until a shutdown is requested and completed; installs signal handlers when
    /// `handle_signals` is set.
    pub async fn run(self, handle_signals: bool) -> Result<StopReason, WorkerError> {
        let shared = self.shared;
        if handle_signals {
            let watcher = shutdown::SignalWatcher::install().map_err(WorkerError::Signals)?;
            tokio::spawn(watcher.run(shared.shutdown.clone()));
        }
        shared.connect().await;
        if !shared.shutdown.is_running() {
            return Ok(shared.shutdown.stop_reason().expect("stopped"));
        }
        for q in shared.queues() {
            shared
                .broker
                .declare_binding(&q.exchange, &q.routing_key, &q.name)
                .await?;
        }
        let restored = shared
            .broker
            .restore_visible(shared.config.visibility_timeout)
            .await?;
        if restored > 0 {
            tracing::info!(
                "Restored {restored} unacknowledged message(s) older than the visibility timeout"
            );
        }
        shared.log_banner();
        let (events_stop, events_stopped) = tokio::sync::oneshot::channel::<()>();
        let publisher = {
            let shared = shared.clone();
            let url = shared.broker.url().clone();
            tokio::spawn(async move {
                let stop = async {
                    let _ = events_stopped.await;
                };
                shared.events.publish_loop(url, stop).await;
            })
        };
        shared
            .events
            .worker("worker-online", HEARTBEAT_FREQ, shared.event_counts());
        let heart = tokio::spawn(beat(shared.clone()));
        let http = shared
            .config
            .http
            .map(|addr| tokio::spawn(crate::http::serve(shared.clone(), addr)));

        let consumer = tokio::spawn(consume(shared.clone()));
        let dispatcher = tokio::spawn(dispatch(shared.clone()));
        let timer = tokio::spawn(run_timer(shared.clone()));
        let maintenance = tokio::spawn(maintain(shared.clone()));
        let mailbox = tokio::spawn(crate::control::node::run(shared.clone()));
        tracing::info!("{} ready.", shared.config.hostname);

        shared.shutdown.reached(Phase::Warm).await;
        // Like Celery, `worker-offline` goes out before in-flight tasks finish.
        heart.abort();
        shared
            .events
            .worker("worker-offline", HEARTBEAT_FREQ, shared.event_counts());
        // The mailbox removes its binding first, as Celery does at shutdown.
        let _ = mailbox.await;
        let _ = consumer.await;
        let _ = dispatcher.await;
        let _ = timer.await;
        // Give back what was received but not started, so other workers can run it now.
        shared.give_back_waiting().await;

        // Warm: wait for running tasks (all slots free). Cold (or a cold request meanwhile):
        // cancel them and give back the unacked ones.
        let all = u32::try_from(shared.pool.size()).unwrap_or(u32::MAX);
        tokio::select! {
            _ = shared.pool.slots.acquire_many(all) => {}
            _ = shared.shutdown.reached(Phase::Cold) => {
                let unacked = shared.state.cancel_active(CancelReason::Shutdown);
                for tag in unacked {
                    shared.requeue(&tag, Requeue::Head).await;
                }
            }
        }
        maintenance.abort();
        if let Some(h) = http {
            h.abort();
        }
        let _ = events_stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(3), publisher).await;
        let reason = shared
            .shutdown
            .stop_reason()
            .expect("shutdown was requested");
        tracing::info!("{} stopped ({reason:?})", shared.config.hostname);
        Ok(reason)
    }
}

impl Shared {
    pub(crate) fn queues(&self) -> Vec<QueueSpec> {
        lock(&self.queues).clone()
    }

    /// Starts consuming from a queue (no-op when already consumed); returns whether it was added.
    pub(crate) fn add_queue(&self, spec: QueueSpec) -> bool {
        let mut queues = lock(&self.queues);
        if queues.iter().any(|q| q.name == spec.name) {
            return false;
        }
        queues.push(spec);
        self.queues_version.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Stops consuming from a queue; returns whether it was consumed.
    pub(crate) fn remove_queue(&self, name: &str) -> bool {
        let mut queues = lock(&self.queues);
        let before = queues.len();
        queues.retain(|q| q.name != name);
        let removed = queues.len() != before;
        if removed {
            self.queues_version.fetch_add(1, Ordering::SeqCst);
        }
        removed
    }

    /// The compute devices, for `/health`.
    pub(crate) fn compute_devices(&self) -> Vec<String> {
        self.config.devices.clone()
    }

    /// The counters worker events carry.
    pub(crate) fn event_counts(&self) -> WorkerCounts {
        WorkerCounts {
            active: self.state.active_count(),
            processed: self.state.processed(),
        }
    }

    /// Waits until the broker answers, backing off, or until shutdown.
    async fn connect(&self) {
        let mut backoff = Backoff::default();
        let mut attempts = 0u32;
        while self.shutdown.is_running() {
            match self.broker.ping().await {
                Ok(()) => {
                    tracing::info!("Connected to {}", self.broker.url());
                    return;
                }
                Err(e) => {
                    attempts += 1;
                    let delay = backoff.next_delay();
                    if attempts == 1 || attempts.is_power_of_two() {
                        tracing::error!(
                            "Cannot connect to {}: {e}. Trying again in {:.1}s",
                            self.broker.url(),
                            delay.as_secs_f64()
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.reached(Phase::Warm) => {}
                    }
                }
            }
        }
    }

    fn log_banner(&self) {
        let c = &self.config;
        let queues: Vec<String> = self.queues().into_iter().map(|q| q.name).collect();
        let backend = c
            .backend
            .as_ref()
            .map_or_else(|| "disabled".to_string(), ToString::to_string);
        let tasks: Vec<&str> = self.registry.names().collect();
        tracing::info!(
            "astroworker {} {}: transport {}, results {}, concurrency {}, prefetch {}, queues [{}], acks {}, tasks [{}]",
            env!("CARGO_PKG_VERSION"),
            c.hostname,
            c.broker,
            backend,
            c.concurrency,
            c.prefetch_count(),
            queues.join(", "),
            if c.acks_late { "late" } else { "early" },
            tasks.join(", ")
        );
    }

    pub(crate) async fn ack(&self, tag: &str) {
        if let Err(e) = self.broker.ack(tag).await {
            tracing::error!(%tag, "could not ack message: {e}");
        }
    }

    async fn requeue(&self, tag: &str, how: Requeue) {
        match self.broker.requeue(tag, how).await {
            Ok(_) => {}
            Err(e) => tracing::error!(%tag, "could not requeue message: {e}"),
        }
    }

    /// Stores a state for `req` (with its group and parent), logging failures.
    pub(crate) async fn store(
        &self,
        req: &Request,
        state: State,
        result: Value,
        traceback: Option<String>,
        children: Vec<Value>,
    ) {
        let Some(backend) = &self.backend else { return };
        let meta = TaskMeta {
            task_id: &req.id,
            state,
            result,
            traceback,
            children,
            group_id: req.group.as_deref(),
            parent_id: req.parent_id.as_deref(),
        };
        if let Err(e) = backend.store(&meta).await {
            tracing::error!(task_id = %req.id, "could not store {} result: {e}", meta.state.as_str());
        }
    }

    /// An expired request: REVOKED("expired") and acked, as Celery does.
    pub(crate) async fn discard_expired(&self, req: &Request) {
        let name = req.display_name();
        tracing::info!("Discarding revoked task: {name}[{}] (expired)", req.id);
        self.revoked(req, "expired", None).await;
        self.ack(&req.delivery.tag).await;
    }

    /// A request whose id was revoked by remote control: REVOKED("revoked") and acked.
    pub(crate) async fn discard_revoked(&self, req: &Request) {
        let name = req.display_name();
        tracing::info!("Discarding revoked task: {name}[{}]", req.id);
        self.revoked(req, "revoked", None).await;
        self.ack(&req.delivery.tag).await;
    }

    /// Celery's `_announce_revoked`: the `task-revoked` event, REVOKED with
    /// `TaskRevokedError(reason)` unless results are ignored, and the chord part. `signum`:
    /// the signal a `terminate` named.
    pub(crate) async fn revoked(&self, req: &Request, reason: &str, signum: Option<i32>) {
        self.metrics
            .finished(&req.task, crate::metrics::Outcome::Revoked, None);
        self.events.task(
            "task-revoked",
            &req.id,
            [
                ("terminated", json!(signum.is_some())),
                ("signum", json!(signum)),
                ("expired", json!(reason == "expired")),
            ],
        );
        let ignored = req.ignore_result
            || self
                .registry
                .get(&req.task)
                .is_some_and(|d| d.options.ignore_result);
        let exc = ExceptionInfo::new("TaskRevokedError", "celery.exceptions", reason);
        if !ignored {
            self.store(req, State::Revoked, exc.to_json(), None, Vec::new())
                .await;
        }
        self.on_ready(req, State::Revoked, &exc.to_json()).await;
    }

    /// A FAILURE: stored (unless results are ignored), the canvas told, `task-failed` sent.
    pub(crate) async fn fail(
        &self,
        req: &Request,
        exc: &ExceptionInfo,
        traceback: Option<String>,
        store: bool,
    ) {
        if store {
            self.store(
                req,
                State::Failure,
                exc.to_json(),
                traceback.clone(),
                Vec::new(),
            )
            .await;
        }
        self.on_failure(req, exc, traceback.as_deref(), true).await;
        self.metrics
            .finished(&req.task, crate::metrics::Outcome::Failed, None);
        self.events.task(
            "task-failed",
            &req.id,
            [
                ("exception", json!(exc.repr())),
                ("traceback", json!(traceback)),
            ],
        );
    }

    /// A task name this worker does not have: Celery's reject + FAILURE NotRegistered, or a
    /// requeue for another worker with `--unknown-tasks requeue`.
    pub(crate) async fn reject_unknown(&self, req: &Request) {
        let name = &req.task;
        match self.config.unknown_tasks {
            UnknownTasks::Reject => {
                tracing::error!(
                    "Received unregistered task of type '{name}'. The message has been ignored and discarded."
                );
                let exc = ExceptionInfo::new("NotRegistered", "celery.exceptions", name.clone());
                self.store(req, State::Failure, exc.to_json(), None, Vec::new())
                    .await;
                // Celery's fake request for an unknown task carries no errbacks.
                self.on_failure(req, &exc, None, false).await;
                self.events
                    .task("task-failed", &req.id, [("exception", json!(exc.repr()))]);
                self.ack(&req.delivery.tag).await;
            }
            UnknownTasks::Requeue => {
                tracing::debug!("Requeueing task of unregistered type '{name}' for another worker");
                self.events
                    .task("task-rejected", &req.id, [("requeue", json!(true))]);
                self.requeue(&req.delivery.tag, Requeue::Tail).await;
            }
        }
    }

    /// Gives every received-but-not-started request back to its queue (head, redelivered).
    /// Revoked ones are discarded instead (Celery would give them back, and the next worker
    /// would run them unless it learned of the revocation).
    async fn give_back_waiting(&self) {
        let (revoked, waiting): (Vec<_>, Vec<_>) = self
            .state
            .drain_waiting()
            .into_iter()
            .partition(|r| self.state.is_revoked(&r.request.id));
        for r in revoked {
            self.discard_revoked(&r.request).await;
        }
        if waiting.is_empty() {
            return;
        }
        tracing::info!("Restoring {} unacknowledged message(s)", waiting.len());
        for r in waiting {
            self.requeue(&r.request.delivery.tag, Requeue::Head).await;
        }
    }

    /// Handles one popped message: record it unacked, decode, and reserve or schedule it.
    async fn receive(
        &self,
        list: String,
        raw: Vec<u8>,
        prefetch: tokio::sync::OwnedSemaphorePermit,
    ) -> ReceiveOutcome {
        let queue = broker::queue_of_key(&list).to_string();
        let mut envelope = match Envelope::parse(&raw) {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(%queue, "Discarding message that is not a kombu envelope: {e}");
                return ReceiveOutcome::Discarded;
            }
        };
        let tag = match envelope.delivery_tag() {
            Some(t) => t.to_string(),
            None => {
                let t = uuid::Uuid::new_v4().to_string();
                envelope
                    .properties_mut()
                    .insert("delivery_tag".into(), json!(t));
                t
            }
        };
        let delivery = Delivery {
            list,
            envelope,
            tag: tag.clone(),
        };
        if let Err(e) = self.broker.record_unacked(&delivery).await {
            tracing::error!(%queue, %tag, "could not record message as unacked ({e}); it will still be processed");
        }
        let req = match Request::decode(delivery) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::error!(%queue, %tag, "Discarding invalid message: {e}");
                self.ack(&tag).await;
                return ReceiveOutcome::Discarded;
            }
        };
        if self.registry.get(&req.task).is_none() {
            self.reject_unknown(&req).await;
            return ReceiveOutcome::Unknown;
        }
        let now = Utc::now();
        if req.is_expired(now) {
            self.discard_expired(&req).await;
            return ReceiveOutcome::Discarded;
        }
        if self.state.is_revoked(&req.id) {
            self.discard_revoked(&req).await;
            return ReceiveOutcome::Discarded;
        }
        let name = req.display_name();
        tracing::info!("Task {name}[{}] received", req.id);
        self.metrics.received(&req.task);
        self.events.task(
            "task-received",
            &req.id,
            [
                ("name", json!(name)),
                ("args", json!(req.argsrepr)),
                ("kwargs", json!(req.kwargsrepr)),
                ("root_id", json!(req.root_id)),
                ("parent_id", json!(req.parent_id)),
                ("retries", json!(req.retries)),
                ("eta", json!(req.eta.map(crate::protocol::time::format_iso))),
                (
                    "expires",
                    json!(req.expires.map(crate::protocol::time::format_iso)),
                ),
            ],
        );
        let reserved = Reserved {
            request: req.clone(),
            received: SystemTime::now(),
            prefetch: Some(prefetch),
            rate_checked: false,
        };
        match req.eta {
            Some(eta) if eta > now => {
                // ETA tasks wait outside the prefetch window, as in Celery.
                self.state.schedule(
                    eta,
                    Reserved {
                        prefetch: None,
                        ..reserved
                    },
                );
            }
            _ => self.enqueue(reserved),
        }
        ReceiveOutcome::Accepted
    }

    /// Makes a request ready to run, unless its task type's rate limit says to hold it first.
    fn enqueue(&self, mut r: Reserved) {
        if !r.rate_checked {
            r.rate_checked = true;
            let hold = self
                .rate_limits
                .admit(&r.request.task, std::time::Instant::now());
            if !hold.is_zero() {
                let due =
                    Utc::now() + chrono::Duration::from_std(hold).unwrap_or(chrono::Duration::MAX);
                self.state.schedule(due, r);
                return;
            }
        }
        self.state.push_reserved(r);
    }
}

enum ReceiveOutcome {
    Accepted,
    Discarded,
    Unknown,
}

/// The fetch loop: one BRPOP at a time while a prefetch slot is free; reconnects with backoff.
async fn consume(shared: Arc<Shared>) {
    let prefetch = shared.pool.prefetch.clone();
    let mut version = shared.queues_version.load(Ordering::SeqCst);
    let mut queues: Vec<String> = shared.queues().into_iter().map(|q| q.name).collect();
    let mut keys = broker::fetch_keys(&queues);
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    let mut unknown_streak = 0u32;
    while shared.shutdown.is_running() {
        let current = shared.queues_version.load(Ordering::SeqCst);
        if current != version {
            version = current;
            // Keep the round-robin order of the queues still consumed; new ones go last.
            let now: Vec<String> = shared.queues().into_iter().map(|q| q.name).collect();
            queues.retain(|q| now.contains(q));
            queues.extend(
                now.into_iter()
                    .filter(|q| !queues.contains(q))
                    .collect::<Vec<_>>(),
            );
            keys = broker::fetch_keys(&queues);
            tracing::info!("Consuming from [{}]", queues.join(", "));
        }
        if queues.is_empty() {
            // Every queue was cancelled: wait for an add_consumer.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = shared.shutdown.reached(Phase::Warm) => break,
            }
        }
        let permit = tokio::select! {
            p = prefetch.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shared.shutdown.reached(Phase::Warm) => break,
        };
        // Never abandon a BRPOP in flight, even on cold shutdown: Redis would still hand it the
        // next message (a restored one, say), and nobody would read the reply. It returns
        // within FETCH_TIMEOUT_S; what it brings is given back with everything else.
        match shared.broker.fetch(&keys, broker::FETCH_TIMEOUT_S).await {
            Ok(Some((list, raw))) => {
                if failures > 0 {
                    tracing::info!("Connection to broker {} restored", shared.broker.url());
                    failures = 0;
                    backoff.reset();
                }
                // kombu's round robin: the queue just served goes to the end.
                let queue = broker::queue_of_key(&list).to_string();
                if let Some(pos) = queues.iter().position(|q| *q == queue) {
                    let q = queues.remove(pos);
                    queues.push(q);
                    keys = broker::fetch_keys(&queues);
                }
                match shared.receive(list, raw, permit).await {
                    ReceiveOutcome::Unknown => {
                        unknown_streak += 1;
                        if shared.config.unknown_tasks == UnknownTasks::Requeue
                            && unknown_streak >= queues.len() as u32 * 4
                        {
                            // Only foreign tasks in our queues: give other workers a chance.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    _ => unknown_streak = 0,
                }
            }
            Ok(None) => {
                if failures > 0 {
                    tracing::info!("Connection to broker {} restored", shared.broker.url());
                    failures = 0;
                    backoff.reset();
                }
            }
            Err(e) => {
                drop(permit);
                failures += 1;
                let delay = backoff.next_delay();
                if failures == 1 || failures.is_power_of_two() {
                    tracing::error!(
                        "Connection to broker lost: {e}. Trying to re-establish the connection in {:.1}s",
                        delay.as_secs_f64()
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.shutdown.reached(Phase::Warm) => break,
                }
            }
        }
    }
}

/// Starts reserved requests as concurrency slots free up.
async fn dispatch(shared: Arc<Shared>) {
    loop {
        let slot = tokio::select! {
            s = shared.pool.slots.clone().acquire_owned() => s.expect("semaphore never closed"),
            _ = shared.shutdown.reached(Phase::Warm) => return,
        };
        let reserved = loop {
            let notified = shared.state.work_ready.notified();
            if let Some(r) = shared.state.pop_reserved() {
                break r;
            }
            tokio::select! {
                _ = notified => {}
                _ = shared.shutdown.reached(Phase::Warm) => return,
            }
        };
        if !shared.shutdown.is_running() {
            // Lost the race with shutdown: it goes back with the other waiting requests.
            shared.state.push_reserved(reserved);
            return;
        }
        tokio::spawn(executor::execute(shared.clone(), reserved, slot));
    }
}

/// Moves held requests (ETA, rate limit) to the reserved queue when they are due.
async fn run_timer(shared: Arc<Shared>) {
    loop {
        let changed = shared.state.timer_changed.notified();
        for due in shared.state.take_due(Utc::now()) {
            shared.enqueue(due);
        }
        let wait = shared
            .state
            .next_due()
            .map_or(Duration::from_secs(3600), |eta| {
                (eta - Utc::now()).to_std().unwrap_or(Duration::ZERO)
            });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
            _ = shared.shutdown.reached(Phase::Warm) => return,
        }
    }
}

/// `worker-heartbeat` every `--heartbeat-interval` seconds (none with `--without-heartbeat`).
async fn beat(shared: Arc<Shared>) {
    let Some(freq) = shared.config.heartbeat_interval else {
        return;
    };
    let mut tick = tokio::time::interval(crate::config::seconds(freq));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        shared
            .events
            .worker("worker-heartbeat", freq, shared.event_counts());
    }
}

/// Periodic broker housekeeping: restore other consumers' stale unacked messages, and keep the
/// ones this worker holds from looking stale.
async fn maintain(shared: Arc<Shared>) {
    let vt = shared.config.visibility_timeout;
    let touch_every = (vt / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    let restore_every = (vt / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut touch = tokio::time::interval(touch_every);
    let mut restore = tokio::time::interval(restore_every);
    touch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    restore.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    restore.tick().await;
    loop {
        tokio::select! {
            _ = touch.tick() => {
                if let Err(e) = shared.broker.touch_unacked(&shared.state.unacked_tags()).await {
                    tracing::warn!("could not refresh unacked messages: {e}");
                }
            }
            _ = restore.tick() => {
                match shared.broker.restore_visible(vt).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("Restored {n} unacknowledged message(s) older than the visibility timeout"),
                    Err(e) => tracing::warn!("could not restore unacked messages: {e}"),
                }
            }
        }
    }
}

/// Locks a mutex, ignoring poisoning (the data behind these locks stays consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
