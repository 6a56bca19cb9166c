//! The command line. `astroworker worker` mirrors `celery worker`, `inspect`/`control` mirror
//! `celery inspect`/`celery control`; the other subcommands run the same FITS jobs locally,
//! with a progress bar and no Redis.

pub mod control;
pub mod local;
pub mod worker;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;
pub use worker::WorkerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "astroworker",
    version,
    about = "A Celery worker in Rust for FITS calibration and stacking (Redis broker, CPU and CUDA)",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// Logging level: DEBUG, INFO, WARNING, ERROR, CRITICAL.
    #[arg(
        short = 'l',
        long = "loglevel",
        global = true,
        env = "CELERY_WORKER_LOGLEVEL",
        default_value = "INFO"
    )]
    pub loglevel: String,

    /// Log format: human-readable lines or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a worker: consume Celery tasks from Redis and run them.
    Worker(Box<WorkerArgs>),
    /// Ask workers (astroworker or Celery) about their state: ping, stats, active, …
    Inspect(control::InspectArgs),
    /// Send control commands to workers: revoke, shutdown, add_consumer, cancel_consumer.
    Control(control::ControlArgs),
    /// Print what a FITS image is: shape, BITPIX, Bayer pattern, header, statistics (JSON).
    Info(local::InfoArgs),
    /// Combine bias, dark or flat frames into a master frame.
    Master(local::MasterArgs),
    /// Calibrate light frames with master bias, dark and flat frames.
    Calibrate(local::CalibrateArgs),
    /// Debayer a CFA mosaic into an RGB cube.
    Debayer(local::DebayerArgs),
    /// Calibrate, normalise and stack frames with rejection; optionally write a preview.
    Stack(Box<local::StackArgs>),
    /// Find stars, match every frame to a reference, optionally write registered frames.
    Register(local::RegisterArgs),
    /// Write a stretched PNG, JPEG or TIFF preview of a FITS image.
    Preview(local::PreviewArgs),
    /// Generate synthetic Seestar-like frames with known truth.
    Fixtures(local::FixturesArgs),
    /// Time the stacking pipeline phase by phase.
    Bench(local::BenchArgs),
}
