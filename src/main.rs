//! The `astroworker` binary: parse the command line, set up logging, run the subcommand.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;

use astroworker::astronomus;
use astroworker::cli::{Cli, Command, WorkerArgs, control, local};
use astroworker::compute::Devices;
use astroworker::paths::DataRoots;
use astroworker::tasks::{self, fits::FitsEnv};
use astroworker::worker::Worker;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = astroworker::telemetry::init(&cli.loglevel, cli.log_format) {
        eprintln!("astroworker: {e}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let devices = Devices::cpu_only();
    let result = match cli.command {
        Command::Worker(args) => return worker(&args, devices),
        Command::Inspect(a) => return remote(control::inspect(&a)),
        Command::Control(a) => return remote(control::control(&a)),
        Command::Info(a) => local::info(&a),
        Command::Master(a) => local::master(&a),
        Command::Calibrate(a) => local::calibrate(&a),
        Command::Debayer(a) => local::debayer(&a, &devices),
        Command::Stack(a) => local::stack(&a, &devices),
        Command::Register(a) => local::register_frames(&a),
        Command::Preview(a) => local::preview(&a),
        Command::Fixtures(a) => local::fixtures(&a),
        Command::Bench(a) => local::bench(&a, &devices),
    }?;
    // A closed pipe (`| head`) is not an error worth reporting.
    let text = serde_json::to_string_pretty(&result)?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Runs an `inspect`/`control` request; its exit status is the command's.
fn remote(
    request: impl std::future::Future<Output = Result<u8, control::ControlCliError>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(ExitCode::from(runtime.block_on(request)?))
}

fn worker(args: &WorkerArgs, devices: Devices) -> anyhow::Result<ExitCode> {
    let mut config = args.to_config().context("invalid worker options")?;
    if args.gpus.trim() != "none" {
        tracing::warn!(
            "--gpus {}: this build has no CUDA backend yet; tasks run on the CPU (rayon)",
            args.gpus
        );
    }
    config.devices = devices.describe();
    if let Some(app) = &args.app {
        tracing::info!("-A {app}: accepted for compatibility; tasks are built into astroworker");
    }
    let roots = DataRoots::from_env_and(&args.data_roots).context("invalid --data-root")?;
    if roots.is_confined() {
        tracing::info!("FITS tasks confined to {:?}", roots.roots());
    } else {
        tracing::warn!("no --data-root given: FITS tasks may read and write any absolute path");
    }
    let env = Arc::new(FitsEnv { roots, devices });
    let mut registry = tasks::default_registry(config.diagnostic_tasks, env.clone());
    if args.astronomus {
        let db = astronomus::jobs_db::JobsDb::from_env();
        match &db {
            Some(_) => tracing::info!(
                "Astronomus tasks: job progress goes to processing_jobs (DATABASE_URL)"
            ),
            None => tracing::info!(
                "Astronomus tasks: no DATABASE_URL, job progress goes to the result backend only"
            ),
        }
        astronomus::register(
            &mut registry,
            Arc::new(astronomus::AstronomusEnv { fits: env, db }),
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reason = runtime.block_on(async {
        let worker = Worker::new(config, registry)?;
        worker.run(true).await
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(ExitCode::from(reason.exit_code() as u8))
}
