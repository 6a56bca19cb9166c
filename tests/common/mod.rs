//! Helpers shared by the Rust integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test virtualenv's Python (numpy, astropy, Pillow, Celery), created by
/// `scripts/bootstrap.sh`. Fails the test when it is missing: reference tests must run.
pub fn python() -> Command {
    let py = std::env::var_os("AW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        py.exists(),
        "{} is missing: run scripts/bootstrap.sh (or set AW_PYTHON)",
        py.display()
    );
    Command::new(py)
}

/// Runs a script from `tests/reference/` with arguments and returns its stdout; panics with
/// its stderr when it fails.
pub fn run_reference(script: &str, args: &[&str]) -> String {
    let out = python()
        .arg(root().join("tests/reference").join(script))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The real Seestar S50 subs from the steering repository, when present
/// (`../shared/data/seestar/M94`). Tests using them skip (with a printed reason) otherwise.
pub fn seestar_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AW_SEESTAR_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data/seestar/M94"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: real Seestar subs not found at {}", dir.display());
        None
    }
}

/// The sorted `.fit` files of a directory.
pub fn fits_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("fit") || e.eq_ignore_ascii_case("fits"))
        })
        .collect();
    v.sort();
    v
}

/// Stacks `inputs` into `output` with `method` and nothing else (no calibration,
/// normalisation, weights or debayer) on the CPU, and returns the stacked plane.
pub fn plain_stack(
    inputs: &[PathBuf],
    output: &Path,
    method: astroworker::science::stack::Method,
    memory_budget: usize,
) -> ndarray::Array2<f32> {
    use astroworker::pipeline::stack::{self, DebayerChoice, StackParams, Weights};
    let report = stack::stack(
        &StackParams {
            inputs: inputs.to_vec(),
            output: output.to_path_buf(),
            method,
            normalize: astroworker::science::normalize::Normalization::None,
            weights: Weights::None,
            masters: astroworker::pipeline::jobs::MasterFiles::default(),
            debayer: DebayerChoice::None,
            dtype: astroworker::fits::OutputType::Float32,
            preview: None,
            memory_budget,
        },
        &astroworker::compute::cpu::Cpu,
        &astroworker::pipeline::NoProgress,
    )
    .unwrap();
    assert_eq!(report.frames_used, inputs.len());
    astroworker::fits::FitsReader::open(output)
        .unwrap()
        .read_all()
        .unwrap()
        .index_axis_move(ndarray::Axis(0), 0)
}
