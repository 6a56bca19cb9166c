//! The task API: a registry of named tasks, the context a running task sees, and the outcomes a
//! task can end with.
//!
//! A task is a plain function `fn(&TaskContext, Args) -> TaskResult` that runs on a blocking
//! thread. It binds its arguments like a Python call ([`Args::bind`]), reports state through the
//! context ([`TaskContext::update_state`]), and calls [`TaskContext::checkpoint`] between units
//! of work: that is where a soft time limit is raised, and where a hard time limit or a
//! `revoke --terminate` stops it.

pub mod builtin;
pub mod fits;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::backend::{ExceptionInfo, ResultBackend, State, TaskMeta};

pub type TaskResult = Result<Value, TaskError>;
pub type Handler = dyn Fn(&TaskContext, Args) -> TaskResult + Send + Sync;

/// How a task run ends when it does not return a value.
#[derive(Debug, Clone)]
pub enum TaskError {
    /// The task raised an exception: stored as FAILURE.
    Exception {
        exc: ExceptionInfo,
        traceback: Option<String>,
    },
    /// The task asks to be retried (Celery's `self.retry(...)`).
    Retry(RetryRequest),
    /// The soft time limit passed (raised once, at a checkpoint, like Celery's
    /// `SoftTimeLimitExceeded`).
    SoftTimeLimitExceeded,
    /// The run was stopped from outside (hard time limit, terminate, cold shutdown); the
    /// executor has already recorded the outcome.
    Cancelled,
}

impl TaskError {
    pub fn exception(exc: ExceptionInfo) -> Self {
        Self::Exception {
            exc,
            traceback: None,
        }
    }

    /// Python's `TypeError`, used for bad arguments.
    pub fn type_error(message: impl Into<String>) -> Self {
        Self::exception(ExceptionInfo::builtin("TypeError", message))
    }

    /// Python's `ValueError`.
    pub fn value_error(message: impl Into<String>) -> Self {
        Self::exception(ExceptionInfo::builtin("ValueError", message))
    }
}

/// `self.retry(countdown=…, max_retries=…, exc=…)`.
#[derive(Debug, Clone, Default)]
pub struct RetryRequest {
    /// Seconds until the retry runs; `None`: the task's `default_retry_delay`.
    pub countdown: Option<f64>,
    /// Overrides the task's `max_retries` (`Some(None)`: retry for ever).
    pub max_retries: Option<Option<u32>>,
    /// The exception stored with the RETRY state, and raised when retries are exhausted.
    pub exc: Option<ExceptionInfo>,
}

/// Per-task settings, mirroring Celery's task options.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// `None`: the worker's `--acks-late` setting.
    pub acks_late: Option<bool>,
    pub time_limit: Option<f64>,
    pub soft_time_limit: Option<f64>,
    /// Celery's default is 3; `None` retries for ever.
    pub max_retries: Option<u32>,
    pub default_retry_delay: f64,
    pub ignore_result: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            acks_late: None,
            time_limit: None,
            soft_time_limit: None,
            max_retries: Some(3),
            default_retry_delay: 180.0,
            ignore_result: false,
        }
    }
}

pub struct TaskDef {
    pub name: String,
    pub options: TaskOptions,
    handler: Box<Handler>,
}

impl TaskDef {
    pub fn new(
        name: impl Into<String>,
        handler: impl Fn(&TaskContext, Args) -> TaskResult + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            options: TaskOptions::default(),
            handler: Box::new(handler),
        }
    }

    pub fn with_options(mut self, options: TaskOptions) -> Self {
        self.options = options;
        self
    }

    pub fn run(&self, ctx: &TaskContext, args: Args) -> TaskResult {
        (self.handler)(ctx, args)
    }
}

/// The tasks this worker runs, by registered name.
#[derive(Default)]
pub struct Registry {
    tasks: BTreeMap<String, Arc<TaskDef>>,
}

impl Registry {
    pub fn register(&mut self, def: TaskDef) {
        self.tasks.insert(def.name.clone(), Arc::new(def));
    }

    pub fn get(&self, name: &str) -> Option<Arc<TaskDef>> {
        self.tasks.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    pub fn defs(&self) -> impl Iterator<Item = &Arc<TaskDef>> {
        self.tasks.values()
    }
}

/// Positional and keyword arguments of one call.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
}

impl Args {
    pub fn new(args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        Self { args, kwargs }
    }

    /// Binds the arguments to `params` as a Python call would (positional first, then keywords)
    /// and deserializes the result into `T`. Errors are Python's `TypeError` wording.
    pub fn bind<T: DeserializeOwned>(self, task: &str, params: &[&str]) -> Result<T, TaskError> {
        if self.args.len() > params.len() {
            return Err(TaskError::type_error(format!(
                "{task}() takes {} positional argument{} but {} were given",
                params.len(),
                if params.len() == 1 { "" } else { "s" },
                self.args.len()
            )));
        }
        let mut bound = Map::new();
        for (name, value) in params.iter().zip(self.args) {
            bound.insert((*name).to_string(), value);
        }
        for (name, value) in self.kwargs {
            if !params.contains(&name.as_str()) {
                return Err(TaskError::type_error(format!(
                    "{task}() got an unexpected keyword argument '{name}'"
                )));
            }
            if bound.contains_key(&name) {
                return Err(TaskError::type_error(format!(
                    "{task}() got multiple values for argument '{name}'"
                )));
            }
            bound.insert(name, value);
        }
        serde_json::from_value(Value::Object(bound))
            .map_err(|e| TaskError::type_error(format!("{task}(): {e}")))
    }
}

/// Why a running task was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    TimeLimit = 1,
    Terminated = 2,
    Shutdown = 3,
}

/// Shared between a running task and whoever may stop it.
#[derive(Debug, Default)]
pub struct CancelFlag(AtomicU8);

impl CancelFlag {
    pub fn cancel(&self, reason: CancelReason) {
        let _ = self
            .0
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn reason(&self) -> Option<CancelReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(CancelReason::TimeLimit),
            2 => Some(CancelReason::Terminated),
            3 => Some(CancelReason::Shutdown),
            _ => None,
        }
    }
}

/// Who and what a running task is.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub id: String,
    pub task: String,
    pub retries: u32,
    pub hostname: String,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group: Option<String>,
}

/// Where `update_state` writes: the result backend, reached from a blocking thread through the
/// worker's runtime.
#[derive(Clone)]
pub struct StateSink {
    pub backend: Arc<ResultBackend>,
    pub runtime: tokio::runtime::Handle,
}

/// What a running task knows about its request and can do with it.
pub struct TaskContext {
    pub request: RequestInfo,
    cancel: Arc<CancelFlag>,
    soft_deadline: Option<Instant>,
    soft_raised: AtomicBool,
    sink: Option<StateSink>,
}

impl TaskContext {
    pub fn new(
        request: RequestInfo,
        cancel: Arc<CancelFlag>,
        soft_limit: Option<Duration>,
        sink: Option<StateSink>,
    ) -> Self {
        Self {
            request,
            cancel,
            soft_deadline: soft_limit.map(|d| Instant::now() + d),
            soft_raised: AtomicBool::new(false),
            sink,
        }
    }

    /// A context for running a task outside the worker (the CLI): no backend, no limits.
    pub fn local(task: &str) -> Self {
        let request = RequestInfo {
            id: uuid::Uuid::new_v4().to_string(),
            task: task.to_string(),
            hostname: "local".into(),
            ..RequestInfo::default()
        };
        Self::new(request, Arc::default(), None, None)
    }

    /// Returns an error when the task must stop: the soft time limit has just passed (once),
    /// or the run was cancelled. Call between units of work.
    pub fn checkpoint(&self) -> Result<(), TaskError> {
        if self.cancel.reason().is_some() {
            return Err(TaskError::Cancelled);
        }
        if let Some(deadline) = self.soft_deadline
            && Instant::now() >= deadline
            && !self.soft_raised.swap(true, Ordering::SeqCst)
        {
            return Err(TaskError::SoftTimeLimitExceeded);
        }
        Ok(())
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.reason().is_some()
    }

    /// Sleeps, waking early (with an error) when a checkpoint would fail.
    pub fn sleep(&self, duration: Duration) -> Result<(), TaskError> {
        let end = Instant::now() + duration;
        loop {
            self.checkpoint()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }

    /// Celery's `self.update_state(state=…, meta=…)`: stored and published right away.
    /// Failures to store are logged, not raised: progress is best effort.
    pub fn update_state(&self, state: &str, meta: Value) {
        let Some(sink) = &self.sink else {
            return;
        };
        let req = &self.request;
        let mut record = TaskMeta::new(&req.id, State::Custom(state.to_string()), meta);
        record.group_id = req.group.as_deref();
        record.parent_id = req.parent_id.as_deref();
        if let Err(e) = sink.runtime.block_on(sink.backend.store(&record)) {
            tracing::warn!(task_id = %req.id, "could not store {state} state: {e}");
        }
    }

    /// `PROGRESS` with `{"current", "total"}` and, when given, `"step"`.
    pub fn progress(&self, current: u64, total: u64, step: Option<&str>) {
        let mut meta = json!({"current": current, "total": total});
        if let Some(step) = step {
            meta["step"] = json!(step);
        }
        self.update_state("PROGRESS", meta);
    }

    /// Builds the error that asks for a retry.
    pub fn retry(&self, request: RetryRequest) -> TaskError {
        TaskError::Retry(request)
    }
}

/// A registry with the built-in tasks (`celery.accumulate`, and the diagnostic tasks when
/// `diagnostics` is set) and the `fits.*` tasks.
pub fn default_registry(diagnostics: bool, fits_env: Arc<fits::FitsEnv>) -> Registry {
    let mut registry = Registry::default();
    builtin::register(&mut registry, diagnostics);
    fits::register(&mut registry, fits_env);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Params {
        a: i64,
        #[serde(default)]
        b: Option<String>,
    }

    fn call(args: Value, kwargs: Value) -> Result<Params, TaskError> {
        Args::new(
            args.as_array().unwrap().clone(),
            kwargs.as_object().unwrap().clone(),
        )
        .bind("t", &["a", "b"])
    }

    fn type_error_text(e: TaskError) -> String {
        match e {
            TaskError::Exception { exc, .. } => {
                assert_eq!(exc.exc_type, "TypeError");
                exc.message()
            }
            other => panic!("expected TypeError, got {other:?}"),
        }
    }

    #[test]
    fn binds_like_python() {
        assert_eq!(
            call(json!([1]), json!({})).unwrap(),
            Params { a: 1, b: None }
        );
        assert_eq!(
            call(json!([]), json!({"a": 2, "b": "x"})).unwrap(),
            Params {
                a: 2,
                b: Some("x".into())
            }
        );
        assert_eq!(
            type_error_text(call(json!([1, "x", 3]), json!({})).unwrap_err()),
            "t() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            type_error_text(call(json!([1]), json!({"a": 1})).unwrap_err()),
            "t() got multiple values for argument 'a'"
        );
        assert_eq!(
            type_error_text(call(json!([1]), json!({"z": 1})).unwrap_err()),
            "t() got an unexpected keyword argument 'z'"
        );
        assert!(
            type_error_text(call(json!([]), json!({})).unwrap_err()).contains("missing field `a`")
        );
    }

    #[test]
    fn checkpoint_raises_soft_limit_once_and_cancel_always() {
        let flag = Arc::new(CancelFlag::default());
        let mut ctx = TaskContext::local("t");
        ctx.cancel = flag.clone();
        ctx.soft_deadline = Some(Instant::now());
        assert!(matches!(
            ctx.checkpoint(),
            Err(TaskError::SoftTimeLimitExceeded)
        ));
        assert!(ctx.checkpoint().is_ok());
        flag.cancel(CancelReason::TimeLimit);
        flag.cancel(CancelReason::Terminated);
        assert_eq!(flag.reason(), Some(CancelReason::TimeLimit));
        assert!(matches!(ctx.checkpoint(), Err(TaskError::Cancelled)));
        assert!(ctx.sleep(Duration::from_secs(10)).is_err());
    }
}
