//! astroworker: a Celery worker in Rust that speaks the Celery protocol over Redis and runs FITS
//! calibration and stacking kernels on the CPU (rayon) or NVIDIA GPUs (CUDA).
//!
//! Layers, bottom up:
//! - [`broker`]: kombu's Redis transport (queues, priorities, unacked bookkeeping, restore).
//! - [`protocol`]: Celery task messages (v1 and v2) → [`protocol::Request`].
//! - [`backend`]: Celery's Redis result backend.
//! - [`tasks`]: the task API and registry; built-in and `fits.*` tasks.
//! - [`fits`]: FITS I/O; [`science`]: the CPU kernels; [`compute`]: CPU/GPU devices;
//!   [`pipeline`]: the FITS jobs shared by tasks and CLI; [`paths`]: data-root confinement;
//!   [`fixtures`]: synthetic data with known truth.
//! - [`worker`]: fetch loop, prefetch and concurrency control, ETA timer, execution, shutdown.
//! - [`control`]: Celery remote control (pidbox): the worker's mailbox and the caller's side;
//!   [`events`]: Celery events (`celeryev`) for Flower and `celery events`.
//! - [`config`], [`cli`], [`telemetry`]: flags, environment and logging; [`http`] and
//!   [`metrics`]: `/health` and Prometheus `/metrics`.
//! - [`astronomus`]: the tasks of the Astronomus telescope app, with its job table.

pub mod astronomus;
pub mod backend;
pub mod broker;
pub mod cli;
pub mod compute;
pub mod config;
pub mod connection;
pub mod control;
pub mod events;
pub mod fits;
pub mod fixtures;
pub mod gpu;
pub mod http;
pub mod metrics;
pub mod paths;
pub mod pipeline;
pub mod protocol;
pub mod science;
pub mod tasks;
pub mod telemetry;
pub mod worker;
