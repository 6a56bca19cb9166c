//! Runs one request: ack (early or late), STARTED, the task on a blocking thread under its time
//! limits, then the outcome — SUCCESS, FAILURE, RETRY (with the retry message published first),
//! or REVOKED for requests that expired or were revoked while waiting. A request terminated by
//! `revoke --terminate` has its REVOKED state stored by the control command; whatever the task
//! ends with afterwards is not stored.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::Shared;
use super::state::{Active, Reserved};
use crate::backend::{ExceptionInfo, State};
use crate::metrics::Outcome;
use crate::protocol::{Request, pyrepr};
use crate::tasks::{
    Args, CancelFlag, CancelReason, RequestInfo, RetryRequest, StateSink, TaskContext, TaskDef,
    TaskError,
};

/// How a run ended, as seen from outside the task.
enum RunOutcome {
    Returned(Value),
    Raised(TaskError),
    HardTimeLimit(f64),
    Panicked(String),
}

pub(crate) async fn execute(shared: Arc<Shared>, reserved: Reserved, slot: OwnedSemaphorePermit) {
    let Reserved {
        request: req,
        mut prefetch,
        ..
    } = reserved;
    let tag = req.delivery.tag.clone();
    if req.is_expired(Utc::now()) {
        shared.discard_expired(&req).await;
        return;
    }
    if shared.state.is_revoked(&req.id) {
        shared.discard_revoked(&req).await;
        return;
    }
    let Some(def) = shared.registry.get(&req.task) else {
        // Unknown names are filtered at receipt; a request only gets here if the registry
        // changed in between, which it does not. Treat it like receipt would.
        shared.reject_unknown(&req).await;
        return;
    };
    let acks_late = def.options.acks_late.unwrap_or(shared.config.acks_late);
    let cancel = Arc::new(CancelFlag::default());
    shared.state.start(
        &tag,
        Active {
            request: req.clone(),
            started: SystemTime::now(),
            cancel: cancel.clone(),
            acked: false,
        },
    );
    if !acks_late {
        shared.ack(&tag).await;
        shared.state.mark_acked(&tag);
        prefetch.take();
    }
    let store_results = !(req.ignore_result || def.options.ignore_result);
    shared.events.task("task-started", &req.id, []);
    if shared.config.track_started && store_results {
        let meta = json!({"pid": std::process::id(), "hostname": shared.config.hostname});
        shared
            .store(&req, State::Started, meta, None, Vec::new())
            .await;
    }

    let (hard, soft) = time_limits(&req, &def, &shared);
    let started = Instant::now();
    let outcome = run_task(&shared, &req, def.clone(), cancel.clone(), hard, soft).await;
    let runtime = started.elapsed().as_secs_f64();
    let name = req.display_name();
    let id = &req.id;

    let mut finished = true;
    if cancel.reason() == Some(CancelReason::Terminated) {
        tracing::info!("Task {name}[{id}] terminated (revoked)");
        if acks_late {
            shared.ack(&tag).await;
        }
        shared.state.finish(&tag);
        return;
    }
    match outcome {
        RunOutcome::Returned(value) => {
            tracing::info!(
                "Task {name}[{id}] succeeded in {runtime:.6}s: {}",
                short_repr(&value)
            );
            let children = shared.on_success(&req, &value).await;
            if store_results {
                shared
                    .store(&req, State::Success, value.clone(), None, children)
                    .await;
            }
            shared.on_ready(&req, State::Success, &value).await;
            shared
                .metrics
                .finished(&req.task, Outcome::Succeeded, Some(runtime));
            shared.events.task(
                "task-succeeded",
                &req.id,
                [
                    ("result", json!(short_repr(&value))),
                    ("runtime", json!(runtime)),
                ],
            );
        }
        RunOutcome::Raised(TaskError::Retry(retry)) => {
            shared.retry(&req, &def, retry, store_results).await;
        }
        RunOutcome::Raised(TaskError::Exception { exc, traceback }) => {
            tracing::error!("Task {name}[{id}] raised unexpected: {}", exc.repr());
            let tb = traceback.unwrap_or_else(|| default_traceback(&req, &exc));
            shared.fail(&req, &exc, Some(tb), store_results).await;
        }
        RunOutcome::Raised(TaskError::SoftTimeLimitExceeded) => {
            let exc = ExceptionInfo {
                exc_type: "SoftTimeLimitExceeded".into(),
                exc_module: "billiard.exceptions".into(),
                exc_message: vec![json!(format!(
                    "SoftTimeLimitExceeded({})",
                    soft.map_or(0.0, |d| d.as_secs_f64())
                ))],
            };
            tracing::error!("Task {name}[{id}] raised unexpected: {}", exc.repr());
            let tb = default_traceback(&req, &exc);
            shared.fail(&req, &exc, Some(tb), store_results).await;
        }
        // Cold shutdown: leave an acks-late message unacked so the shutdown restores it.
        // Other cancellations (hard time limit, terminate) were recorded by the canceller.
        RunOutcome::Raised(TaskError::Cancelled) => {
            if cancel.reason() == Some(CancelReason::Shutdown) {
                tracing::warn!("Task {name}[{id}] cancelled by cold shutdown");
                shared.events.task("task-cancelled", id, []);
                finished = false;
            }
        }
        RunOutcome::HardTimeLimit(limit) => {
            tracing::error!("Hard time limit ({limit}s) exceeded for {name}[{id}]");
            let exc = ExceptionInfo {
                exc_type: "TimeLimitExceeded".into(),
                exc_module: "billiard.exceptions".into(),
                exc_message: vec![json_number(limit)],
            };
            shared.fail(&req, &exc, None, store_results).await;
        }
        RunOutcome::Panicked(message) => {
            let exc = ExceptionInfo::builtin("RuntimeError", format!("task panicked: {message}"));
            tracing::error!("Task {name}[{id}] raised unexpected: {}", exc.repr());
            let tb = default_traceback(&req, &exc);
            shared.fail(&req, &exc, Some(tb), store_results).await;
        }
    }
    if acks_late && finished {
        shared.ack(&tag).await;
    }
    shared.state.finish(&tag);
    drop(prefetch);
    drop(slot);
}

/// Runs the task on a blocking thread. A hard time limit stops waiting for it: the thread is
/// told to stop (it does at its next checkpoint) and the run counts as failed.
async fn run_task(
    shared: &Arc<Shared>,
    req: &Arc<Request>,
    def: Arc<TaskDef>,
    cancel: Arc<CancelFlag>,
    hard: Option<std::time::Duration>,
    soft: Option<std::time::Duration>,
) -> RunOutcome {
    let info = RequestInfo {
        id: req.id.clone(),
        task: req.task.clone(),
        retries: req.retries,
        hostname: shared.config.hostname.clone(),
        root_id: req.root_id.clone(),
        parent_id: req.parent_id.clone(),
        group: req.group.clone(),
    };
    let sink = shared.backend.clone().map(|backend| StateSink {
        backend,
        runtime: tokio::runtime::Handle::current(),
    });
    let ctx = TaskContext::new(info, cancel.clone(), soft, sink);
    let args = Args::new(req.args.clone(), req.kwargs.clone());
    let handle = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(AssertUnwindSafe(|| def.run(&ctx, args)))
    });
    let joined = match hard {
        Some(limit) => match tokio::time::timeout(limit, handle).await {
            Ok(joined) => joined,
            Err(_) => {
                cancel.cancel(CancelReason::TimeLimit);
                return RunOutcome::HardTimeLimit(limit.as_secs_f64());
            }
        },
        None => handle.await,
    };
    match joined {
        Ok(Ok(Ok(value))) => RunOutcome::Returned(value),
        Ok(Ok(Err(e))) => RunOutcome::Raised(e),
        Ok(Err(panic)) => RunOutcome::Panicked(panic_message(panic.as_ref())),
        Err(join) => RunOutcome::Panicked(join.to_string()),
    }
}

/// `[hard, soft]`: the message header wins, then the task's own options, then the worker's flags.
fn time_limits(
    req: &Request,
    def: &TaskDef,
    shared: &Shared,
) -> (Option<std::time::Duration>, Option<std::time::Duration>) {
    let (worker_hard, worker_soft) = shared.config.default_time_limits();
    // Limits set by the `time_limit` command replace the task's own, as in Celery.
    let (task_hard, task_soft) = match shared.state.time_limits(&req.task) {
        Some(o) => (
            o.hard.and_then(|n| n.as_f64()),
            o.soft.and_then(|n| n.as_f64()),
        ),
        None => (def.options.time_limit, def.options.soft_time_limit),
    };
    let hard = req.time_limits.hard.or(task_hard).or(worker_hard);
    let soft = req.time_limits.soft.or(task_soft).or(worker_soft);
    let to_duration = |s: f64| (s > 0.0).then(|| crate::config::seconds(s));
    (hard.and_then(to_duration), soft.and_then(to_duration))
}

impl Shared {
    async fn retry(&self, req: &Arc<Request>, def: &TaskDef, retry: RetryRequest, store: bool) {
        let name = req.display_name();
        let id = &req.id;
        let max_retries = retry.max_retries.unwrap_or(def.options.max_retries);
        if max_retries.is_some_and(|max| req.retries >= max) {
            let exc = retry.exc.unwrap_or_else(|| {
                ExceptionInfo::new(
                    "MaxRetriesExceededError",
                    "celery.exceptions",
                    format!(
                        "Can't retry {}[{}] args:{} kwargs:{}",
                        req.task, req.id, req.argsrepr, req.kwargsrepr
                    ),
                )
            });
            tracing::error!("Task {name}[{id}] raised unexpected: {}", exc.repr());
            let tb = default_traceback(req, &exc);
            self.fail(req, &exc, Some(tb), store).await;
            return;
        }
        let countdown = retry
            .countdown
            .unwrap_or(def.options.default_retry_delay)
            .max(0.0);
        let eta = Utc::now() + chrono::Duration::microseconds((countdown * 1e6) as i64);
        let envelope = req.retry_envelope(eta, &self.origin);
        let (exchange, routing_key) = req.routing();
        if let Err(e) = self
            .broker
            .publish(&envelope, &exchange, &routing_key)
            .await
        {
            let exc =
                ExceptionInfo::builtin("RuntimeError", format!("could not publish retry: {e}"));
            tracing::error!("Task {name}[{id}] raised unexpected: {}", exc.repr());
            self.fail(req, &exc, None, store).await;
            return;
        }
        let reason = format!("Retry in {}s", python_float_text(countdown));
        let exc = retry
            .exc
            .unwrap_or_else(|| ExceptionInfo::new("Retry", "celery.exceptions", reason.clone()));
        tracing::info!("Task {name}[{id}] retry: {reason}: {}", exc.repr());
        let tb = format!("celery.exceptions.Retry: {reason}: {}\n", exc.repr());
        if store {
            let own = json!([[req.id, null], null]);
            self.store(
                req,
                State::Retry,
                exc.to_json(),
                Some(tb.clone()),
                vec![own],
            )
            .await;
        }
        self.metrics.finished(&req.task, Outcome::Retried, None);
        self.events.task(
            "task-retried",
            id,
            [("exception", json!(exc.repr())), ("traceback", json!(tb))],
        );
    }
}

fn default_traceback(req: &Request, exc: &ExceptionInfo) -> String {
    format!(
        "Traceback (most recent call last):\n  astroworker task {}[{}]\n{}: {}\n",
        req.task,
        req.id,
        exc.exc_type,
        exc.message()
    )
}

/// The result repr in the success log line, cut like Celery's (`saferepr`, 1024 chars).
fn short_repr(value: &Value) -> String {
    pyrepr::truncate(pyrepr::repr(value), pyrepr::MAX_REPR)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Integral limits as JSON integers (`[1]`, as Python writes `time_limit=1`), others as floats.
fn json_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn python_float_text(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}
