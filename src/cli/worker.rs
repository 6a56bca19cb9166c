//! `astroworker worker`: the flags of `celery worker`, resolved into a [`WorkerConfig`].

use clap::Args as ClapArgs;

use crate::config::{self, ConfigError, UnknownTasks, WorkerConfig};

/// Options of `astroworker worker`, named like `celery worker`'s.
#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "Worker Options")]
pub struct WorkerArgs {
    /// Accepted for command-line compatibility with `celery -A app worker`; astroworker has its
    /// tasks built in, so the value is only logged.
    #[arg(short = 'A', long = "app", env = "CELERY_APP")]
    pub app: Option<String>,

    /// Broker URL (redis://, rediss://, unix://, redis+socket://). Falls back to BROKER_URL,
    /// CELERY_BROKER, REDIS_URL, then redis://localhost:6379/0.
    #[arg(short = 'b', long, env = "CELERY_BROKER_URL", hide_env_values = true)]
    pub broker: Option<String>,

    /// Result backend URL; falls back to REDIS_URL, then the broker URL. `disabled` stores no
    /// results.
    #[arg(long, env = "CELERY_RESULT_BACKEND", hide_env_values = true)]
    pub result_backend: Option<String>,

    /// Comma-separated queues to consume (default: celery). Repeatable.
    #[arg(short = 'Q', long = "queues", env = "CELERY_WORKER_QUEUES")]
    pub queues: Vec<String>,

    /// Queues not to consume, even if listed in -Q.
    #[arg(short = 'X', long = "exclude-queues")]
    pub exclude_queues: Vec<String>,

    /// Number of tasks run at once (default: number of CPUs).
    #[arg(short = 'c', long, env = "CELERY_WORKER_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Node name; %h = host name, %n = its first label, %d = its domain (default: celery@%h).
    #[arg(short = 'n', long, env = "CELERY_WORKER_HOSTNAME")]
    pub hostname: Option<String>,

    /// Send task events (task-received, -started, -succeeded, …) for Flower and `celery events`.
    /// Worker events (online, heartbeat, offline) are always sent, as in Celery.
    #[arg(short = 'E', long = "task-events", env = "CELERY_WORKER_TASK_EVENTS")]
    pub task_events: bool,

    /// Messages reserved per concurrency slot (0 = no limit).
    #[arg(long, env = "CELERY_WORKER_PREFETCH_MULTIPLIER", default_value_t = 4)]
    pub prefetch_multiplier: usize,

    /// Acknowledge messages after the task finishes instead of before it starts: a worker
    /// killed mid-task leaves the message to be redelivered.
    #[arg(long)]
    pub acks_late: bool,

    /// Store the STARTED state when a task begins (Celery's task_track_started).
    #[arg(long)]
    pub track_started: bool,

    /// Default hard time limit in seconds: the task fails with TimeLimitExceeded.
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,

    /// Default soft time limit in seconds: SoftTimeLimitExceeded is raised in the task.
    #[arg(long, value_name = "SECONDS")]
    pub soft_time_limit: Option<f64>,

    /// Seconds before an unacked message of a dead worker is redelivered (kombu's
    /// visibility_timeout; use the same value on every worker of a fleet).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600.0)]
    pub visibility_timeout: f64,

    /// Seconds results are kept (Celery's result_expires; 0 = for ever).
    #[arg(long, value_name = "SECONDS", default_value_t = 86400.0)]
    pub result_expires: f64,

    /// What to do with task names this worker does not know: reject them like Celery
    /// (FAILURE NotRegistered) or requeue them for another worker on the same queue.
    #[arg(long, value_enum, default_value_t = UnknownTasks::Reject)]
    pub unknown_tasks: UnknownTasks,

    /// Register the astroworker.diag.* tasks (echo, sleep, fail, retry, progress, add, tsum).
    #[arg(long)]
    pub diagnostic_tasks: bool,

    /// Register Astronomus's FITS tasks (auto_process, stack_and_stretch, process_file,
    /// cancel_job, cleanup_old_jobs); job progress goes to `processing_jobs` when
    /// DATABASE_URL is set.
    #[arg(long, env = "ASTROWORKER_ASTRONOMUS")]
    pub astronomus: bool,

    /// GPUs tasks may use: `all`, `none` or a list of indices (`0,1`). This build has no CUDA
    /// backend yet, so tasks run on the CPU (rayon) whatever is asked; the flag is accepted so
    /// that deployment command lines stay as they will be.
    #[arg(
        long,
        value_name = "all|none|0,1",
        env = "ASTROWORKER_GPUS",
        default_value = "all"
    )]
    pub gpus: String,

    /// Serve /health and /metrics (Prometheus) on this address, e.g. 0.0.0.0:9808.
    #[arg(long, value_name = "ADDR", env = "ASTROWORKER_HTTP")]
    pub http: Option<std::net::SocketAddr>,

    /// Directory FITS tasks may read and write (repeatable; also ASTROWORKER_DATA_ROOTS,
    /// colon-separated). Paths resolving elsewhere are refused. Without any, paths are
    /// unconfined.
    #[arg(long = "data-root", value_name = "DIR")]
    pub data_roots: Vec<std::path::PathBuf>,

    /// Accepted for compatibility (`-O fair` is what astroworker always does).
    #[arg(short = 'O', hide = true)]
    pub optimization: Option<String>,

    /// Accepted for compatibility; astroworker runs tasks on threads.
    #[arg(short = 'P', long = "pool", hide = true)]
    pub pool: Option<String>,

    /// Send no worker-heartbeat events (monitors then show the worker offline).
    #[arg(long)]
    pub without_heartbeat: bool,

    /// Seconds between worker-heartbeat events.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::events::HEARTBEAT_FREQ)]
    pub heartbeat_interval: f64,

    /// A task type's rate limit, as Celery writes it: `NAME=10/m` (also `/s`, `/h`, or a bare
    /// number per second). Repeatable; `control rate_limit` changes it at run time.
    #[arg(long = "task-rate-limit", value_name = "NAME=RATE")]
    pub task_rate_limits: Vec<String>,
    /// Accepted for compatibility.
    #[arg(long, hide = true)]
    pub without_gossip: bool,
    /// Accepted for compatibility.
    #[arg(long, hide = true)]
    pub without_mingle: bool,
    /// Accepted for compatibility.
    #[arg(long, hide = true)]
    pub max_tasks_per_child: Option<u64>,
}

impl WorkerArgs {
    pub fn to_config(&self) -> Result<WorkerConfig, ConfigError> {
        let broker = config::resolve_broker(self.broker.as_deref())?;
        let backend = config::resolve_backend(self.result_backend.as_deref(), &broker)?;
        let concurrency = match self.concurrency {
            Some(0) => {
                return Err(ConfigError::Invalid(
                    "--concurrency must be at least 1".into(),
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(ConfigError::Invalid(format!(
                    "{name} must be a number >= 0"
                )))
            }
        };
        let visibility = positive("--visibility-timeout", self.visibility_timeout)?;
        if visibility < 1.0 {
            return Err(ConfigError::Invalid(
                "--visibility-timeout must be at least 1 second".into(),
            ));
        }
        let expires = positive("--result-expires", self.result_expires)?;
        for (name, v) in [
            ("--time-limit", self.time_limit),
            ("--soft-time-limit", self.soft_time_limit),
        ] {
            if let Some(v) = v {
                positive(name, v)?;
            }
        }
        let heartbeat = positive("--heartbeat-interval", self.heartbeat_interval)?;
        let mut rate_limits = Vec::new();
        for spec in &self.task_rate_limits {
            let Some((name, rate)) = spec.split_once('=') else {
                return Err(ConfigError::Invalid(format!(
                    "--task-rate-limit {spec:?}: expected NAME=RATE (e.g. fits.stack=10/m)"
                )));
            };
            crate::worker::rate::parse_rate(rate)
                .map_err(|e| ConfigError::Invalid(format!("--task-rate-limit {spec:?}: {e}")))?;
            rate_limits.push((name.trim().to_string(), rate.trim().to_string()));
        }
        Ok(WorkerConfig {
            broker,
            backend,
            queues: config::resolve_queues(&self.queues, &self.exclude_queues)?,
            concurrency,
            hostname: config::node_name(self.hostname.as_deref(), &config::local_hostname()),
            prefetch_multiplier: self.prefetch_multiplier,
            acks_late: self.acks_late,
            track_started: self.track_started,
            time_limit: self.time_limit,
            soft_time_limit: self.soft_time_limit,
            visibility_timeout: config::seconds(visibility),
            result_expires: (expires > 0.0).then(|| config::seconds(expires)),
            unknown_tasks: self.unknown_tasks,
            task_events: self.task_events,
            heartbeat_interval: (!self.without_heartbeat && heartbeat > 0.0).then_some(heartbeat),
            rate_limits,
            http: self.http,
            devices: Vec::new(),
            gpu_telemetry: self.gpus.trim() != "none",
            diagnostic_tasks: self.diagnostic_tasks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use clap::Parser;

    #[test]
    fn parses_celery_style_flags() {
        let cli = Cli::try_parse_from([
            "astroworker",
            "worker",
            "-A",
            "app.tasks.celery_app",
            "-Q",
            "fits,celery",
            "-c",
            "4",
            "-n",
            "gpu@%h",
            "-l",
            "debug",
            "-E",
            "--acks-late",
            "--prefetch-multiplier",
            "1",
            "--time-limit",
            "3600",
            "--soft-time-limit",
            "3300",
            "-b",
            "redis://h:1/2",
        ])
        .unwrap();
        let Command::Worker(w) = cli.command else {
            panic!("parsed as another command")
        };
        let c = w.to_config().unwrap();
        assert_eq!(c.queues, ["fits", "celery"]);
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.prefetch_count(), 4);
        assert!(c.acks_late && c.task_events);
        assert_eq!(c.time_limit, Some(3600.0));
        assert_eq!(c.broker.db, 2);
        assert!(c.hostname.starts_with("gpu@"));
        assert_eq!(cli.loglevel, "debug");
    }

    #[test]
    fn rejects_bad_values() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["astroworker", "worker", "-b", "redis://h/0"];
            args.extend_from_slice(extra);
            let Command::Worker(w) = Cli::try_parse_from(args).unwrap().command else {
                panic!("parsed as another command")
            };
            w.to_config()
        };
        assert!(parse(&["-c", "0"]).is_err());
        assert!(parse(&["--visibility-timeout", "0"]).is_err());
        assert!(parse(&["--time-limit=-1"]).is_err());
        assert!(
            parse(&["--result-expires", "0"])
                .unwrap()
                .result_expires
                .is_none()
        );
    }
}
