//! The FITS jobs — info, master, calibrate, debayer, stack, preview — as plain functions over
//! files, shared by the Celery tasks (`tasks::fits`) and the local CLI. They report progress
//! and check for cancellation through [`Progress`], and fail with [`PipelineError`].

pub mod frames;
pub mod info;
pub mod jobs;
pub mod register;
pub mod stack;

use std::path::PathBuf;

use crate::fits::FitsError;
use crate::paths::PathError;
use crate::science::preview::PreviewError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Fits(#[from] FitsError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Preview(#[from] PreviewError),
    #[error(transparent)]
    Compute(#[from] crate::compute::ComputeError),
    /// A parameter value the job does not accept.
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {width}×{height}×{channels} does not match the first frame's {expected}")]
    ShapeMismatch {
        path: PathBuf,
        width: usize,
        height: usize,
        channels: usize,
        expected: String,
    },
    #[error("{path}: cannot create directory ({reason})")]
    Directory { path: PathBuf, reason: String },
    /// The soft time limit passed (the task layer turns this into `SoftTimeLimitExceeded`).
    #[error("soft time limit exceeded")]
    SoftTimeLimit,
    /// Stopped from outside (hard time limit, revoke, shutdown).
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, PipelineError>;

/// Where a job reports what it is doing, and learns whether it must stop.
pub trait Progress: Sync {
    /// `current` of `total` units done, in the named step.
    fn report(&self, current: u64, total: u64, step: &str);
    /// Errors when the job must stop now.
    fn checkpoint(&self) -> Result<()>;
}

/// Progress that goes nowhere (tests, library use).
pub struct NoProgress;

impl Progress for NoProgress {
    fn report(&self, _: u64, _: u64, _: &str) {}
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
}

/// Creates the parent directory of an output path.
pub fn ensure_parent(path: &std::path::Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| PipelineError::Directory {
            path: parent.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}
