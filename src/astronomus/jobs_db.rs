//! Job progress in Astronomus's PostgreSQL table `processing_jobs` (astronomus-compat.md §2.1,
//! §4), written the way its Python tasks write it: one committed UPDATE per step, naive UTC
//! timestamps, the row found by id only.
//!
//! The database is a side channel: when it is down, an update is logged and skipped and the
//! task still finishes (its result still reaches the result backend). Only a row that the
//! database says does not exist fails the task, as in Astronomus (`ValueError("Job N not
//! found")`). Tasks run on blocking threads; each call here blocks on the worker's runtime.

use std::time::Duration;

use chrono::{NaiveDateTime, Utc};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;

/// How long one connection attempt may take before the update is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database connection timed out")]
    Timeout,
    #[error("Job {0} not found")]
    JobNotFound(i64),
    #[error("{0}")]
    Missing(String),
}

/// One column update of a `processing_jobs` row.
#[derive(Debug, Clone)]
pub enum Set {
    Status(&'static str),
    Progress(f64),
    Step(&'static str),
    StartedNow,
    CompletedNow,
    OutputFiles(Vec<String>),
    Log(String),
    Error(String),
    GpuUsed(bool),
}

/// The database behind `DATABASE_URL`.
#[derive(Debug, Clone)]
pub struct JobsDb {
    url: String,
}

impl JobsDb {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    /// `DATABASE_URL` when set and not empty.
    pub fn from_env() -> Option<Self> {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .map(Self::new)
    }

    /// Runs `f` on a fresh connection, blocking the calling (blocking-pool) thread.
    fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let handle = Handle::current();
        handle.block_on(async {
            let connect = tokio_postgres::connect(&self.url, tokio_postgres::NoTls);
            let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| DbError::Timeout)??;
            let driver = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(target: "astroworker::astronomus", "database connection ended: {e}");
                }
            });
            let out = f(&client).await;
            drop(client);
            let _ = driver.await;
            out
        })
    }

    /// Whether the row exists (`Err` when the database cannot be asked).
    pub fn job_exists(&self, job_id: i64) -> Result<bool, DbError> {
        self.with_client(async |c| {
            let rows = c
                .query(
                    "SELECT 1 FROM processing_jobs WHERE id = $1",
                    &[&(job_id as i32)],
                )
                .await?;
            Ok(!rows.is_empty())
        })
    }

    /// The row's status (`None` when it has none or does not exist).
    pub fn job_status(&self, job_id: i64) -> Result<Option<String>, DbError> {
        self.with_client(async |c| {
            let row = c
                .query_opt(
                    "SELECT status FROM processing_jobs WHERE id = $1",
                    &[&(job_id as i32)],
                )
                .await?;
            Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
        })
    }

    /// `UPDATE processing_jobs SET … WHERE id = job_id`; returns the number of rows changed.
    pub fn update(&self, job_id: i64, sets: &[Set]) -> Result<u64, DbError> {
        let now: NaiveDateTime = Utc::now().naive_utc();
        let mut columns: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        for set in sets {
            let (column, value): (&str, Box<dyn ToSql + Sync + Send>) = match set {
                Set::Status(s) => ("status", Box::new(s.to_string())),
                Set::Progress(p) => ("progress_percent", Box::new(*p)),
                Set::Step(s) => ("current_step", Box::new(s.to_string())),
                Set::StartedNow => ("started_at", Box::new(now)),
                Set::CompletedNow => ("completed_at", Box::new(now)),
                Set::OutputFiles(f) => ("output_files", Box::new(serde_json::json!(f))),
                Set::Log(l) => ("processing_log", Box::new(l.clone())),
                Set::Error(e) => ("error_message", Box::new(e.clone())),
                Set::GpuUsed(g) => ("gpu_used", Box::new(*g)),
            };
            params.push(value);
            columns.push(format!("{column} = ${}", params.len()));
        }
        params.push(Box::new(job_id as i32));
        let sql = format!(
            "UPDATE processing_jobs SET {} WHERE id = ${}",
            columns.join(", "),
            params.len()
        );
        self.with_client(async |c| {
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            Ok(c.execute(sql.as_str(), &refs).await?)
        })
    }

    /// `processing_files.file_path` of a file.
    pub fn file_path(&self, file_id: i64) -> Result<String, DbError> {
        self.with_client(async |c| {
            let row = c
                .query_opt(
                    "SELECT file_path FROM processing_files WHERE id = $1",
                    &[&(file_id as i32)],
                )
                .await?
                .ok_or_else(|| DbError::Missing(format!("File {file_id} not found")))?;
            Ok(row.get(0))
        })
    }

    /// `(name, pipeline_steps)` of a pipeline.
    pub fn pipeline(&self, pipeline_id: i64) -> Result<(String, Value), DbError> {
        self.with_client(async |c| {
            let row = c
                .query_opt(
                    "SELECT name, pipeline_steps FROM processing_pipelines WHERE id = $1",
                    &[&(pipeline_id as i32)],
                )
                .await?
                .ok_or_else(|| DbError::Missing(format!("Pipeline {pipeline_id} not found")))?;
            Ok((row.get(0), row.get(1)))
        })
    }
}

/// A task's view of its job row: updates that never fail the task (they are logged), except
/// for the existence check at the start.
pub struct JobRow {
    db: Option<JobsDb>,
    pub job_id: i64,
}

impl JobRow {
    /// Checks the row exists (when a database is configured and reachable).
    pub fn open(db: Option<JobsDb>, job_id: i64) -> Result<Self, DbError> {
        if let Some(d) = &db {
            match d.job_exists(job_id) {
                Ok(true) => {}
                Ok(false) => return Err(DbError::JobNotFound(job_id)),
                Err(e) => {
                    tracing::warn!(target: "astroworker::astronomus", job_id, "cannot check job row ({e}); going on without it")
                }
            }
        }
        Ok(Self { db, job_id })
    }

    pub fn set(&self, sets: &[Set]) {
        let Some(db) = &self.db else { return };
        if let Err(e) = db.update(self.job_id, sets) {
            tracing::warn!(target: "astroworker::astronomus", job_id = self.job_id, "job progress not recorded: {e}");
        }
    }

    /// A step: `current_step` and `progress_percent`.
    pub fn step(&self, step: &'static str, percent: f64) {
        self.set(&[Set::Step(step), Set::Progress(percent)]);
    }

    /// Whether someone set the row to `cancelled` (`cancel_job`): the task then stops instead
    /// of overwriting it (Astronomus bug 10).
    pub fn cancelled(&self) -> bool {
        let Some(db) = &self.db else { return false };
        matches!(db.job_status(self.job_id), Ok(Some(s)) if s == "cancelled")
    }

    pub fn complete(&self, outputs: &[String], log: String) {
        self.set(&[
            Set::Status("complete"),
            Set::CompletedNow,
            Set::Progress(100.0),
            Set::Step("Complete"),
            Set::OutputFiles(outputs.to_vec()),
            Set::Log(log),
        ]);
    }

    pub fn fail(&self, error: &str) {
        self.set(&[
            Set::Status("failed"),
            Set::CompletedNow,
            Set::Error(error.to_string()),
        ]);
    }
}
