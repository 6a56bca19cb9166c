//! The FITS tasks of Astronomus (the telescope app of our first user), under their exact
//! registered names, arguments, return values and output files (astronomus-compat.md §2), with
//! the science fixed where the Python code is wrong (§6; see the README's compatibility table):
//!
//! - `auto_process(file_path, formats, job_id)`: auto-stretched previews of one file;
//! - `stack_and_stretch(folder_path, pattern, sigma, formats, job_id)`: a sigma-clipped stack
//!   of a folder of subs, debayered with the frames' own Bayer pattern, and its previews;
//! - `process_file(file_id, pipeline_id, job_id)`: a stored pipeline on one file;
//! - `cancel_job(job_id)` and `cleanup_old_jobs(days=7)`.
//!
//! Progress goes to the `processing_jobs` row when `DATABASE_URL` is set ([`jobs_db`]). The
//! planning and telescope tasks of that app stay on its Python worker.

pub mod jobs_db;
pub mod stretch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array3, Axis};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::ExceptionInfo;
use crate::fits::{CardValue, FitsReader, OutputType, write_image};
use crate::pipeline::frames::bayer_pattern;
use crate::pipeline::register::{self, Framing, RegisterParams};
use crate::pipeline::stack::{self, DebayerChoice, StackParams, Weights};
use crate::pipeline::{PipelineError, jobs};
use crate::science::align::Model;
use crate::science::cfa::{self, DebayerMethod};
use crate::science::normalize::Normalization;
use crate::science::preview::write_preview;
use crate::science::stack::Method;
use crate::science::warp::Interpolation;
use crate::tasks::fits::{FitsEnv, TaskProgress, path_error, pipeline_error};
use crate::tasks::{Args, Registry, TaskContext, TaskDef, TaskError};
use jobs_db::{DbError, JobRow, JobsDb, Set};

/// Where `process_file` writes and `cleanup_old_jobs` cleans (Astronomus hard-codes
/// `/app/data/processing`; `PROCESSING_DIR` overrides it, as its API does).
pub fn processing_dir() -> PathBuf {
    std::env::var_os("PROCESSING_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/app/data/processing"), PathBuf::from)
}

/// What the Astronomus tasks share.
pub struct AstronomusEnv {
    pub fits: Arc<FitsEnv>,
    pub db: Option<JobsDb>,
}

type AstroTaskFn = fn(&AstronomusEnv, &TaskContext, Args) -> Result<Value, TaskError>;

pub fn register(registry: &mut Registry, env: Arc<AstronomusEnv>) {
    let tasks: [(&str, AstroTaskFn); 5] = [
        ("auto_process", auto_process),
        ("stack_and_stretch", stack_and_stretch),
        ("process_file", process_file),
        ("cancel_job", cancel_job),
        ("cleanup_old_jobs", cleanup_old_jobs),
    ];
    for (name, run) in tasks {
        let env = env.clone();
        registry.register(TaskDef::new(name, move |ctx: &TaskContext, args: Args| {
            run(&env, ctx, args)
        }));
    }
}

/// The formats Astronomus writes, in request order: exactly jpg, png and tiff (lower-cased);
/// others are skipped with a warning, as there.
fn formats(requested: &[String]) -> Vec<&'static str> {
    requested
        .iter()
        .filter_map(|f| match f.to_ascii_lowercase().as_str() {
            "jpg" => Some("jpg"),
            "png" => Some("png"),
            "tiff" => Some("tiff"),
            other => {
                tracing::warn!("Unsupported format {other:?} skipped");
                None
            }
        })
        .collect()
}

/// `<dir>/<stem>_astroplanner.<fmt>` (the stem drops the last suffix only).
fn preview_path(input: &Path, fmt: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}_astroplanner.{fmt}"))
}

/// Auto-stretches `image` and writes one preview per format; returns the files and the params.
fn write_previews(
    image: &Array3<f64>,
    base: &Path,
    fmts: &[&str],
) -> Result<(Vec<String>, stretch::AutoParams), TaskError> {
    let params = stretch::detect(image.view());
    let mut outputs = Vec::new();
    for fmt in fmts {
        let levels = if *fmt == "tiff" { 65535.0 } else { 255.0 };
        let display = stretch::apply_auto(image.view(), params, levels);
        let path = preview_path(base, fmt);
        write_preview(&path, display.view())
            .map_err(|e| TaskError::exception(ExceptionInfo::builtin("OSError", e.to_string())))?;
        outputs.push(path.display().to_string());
    }
    Ok((outputs, params))
}

/// Reads the image to stretch as `(3, H, W)`: a CFA frame is debayered with its own pattern
/// (Astronomus bug 6: it copied the mosaic into grey RGB), a mono frame is copied into three
/// channels, a colour cube is kept.
fn read_rgb(path: &Path) -> Result<Array3<f64>, TaskError> {
    let mut reader = FitsReader::open(path).map_err(|e| pipeline_error(e.into()))?;
    let pattern = bayer_pattern(reader.info());
    let data = reader.read_all().map_err(|e| pipeline_error(e.into()))?;
    let rgb = match (data.dim().0, pattern) {
        (1, Some(p)) => cfa::debayer(data.index_axis(Axis(0), 0), p, DebayerMethod::Rcd),
        (1, None) => {
            let plane = data.index_axis(Axis(0), 0);
            ndarray::stack(Axis(0), &[plane, plane, plane]).expect("same shapes")
        }
        _ => data,
    };
    Ok(rgb.mapv(f64::from))
}

/// Runs a task body against its job row: `failed` + error message on any error (then the
/// error goes to Celery as FAILURE), as the Python tasks do.
fn tracked(
    env: &AstronomusEnv,
    job_id: i64,
    body: impl FnOnce(&JobRow) -> Result<Value, TaskError>,
) -> Result<Value, TaskError> {
    let job = JobRow::open(env.db.clone(), job_id).map_err(db_error)?;
    let result = body(&job);
    if let Err(e) = &result {
        job.fail(&error_text(e));
    }
    result
}

fn error_text(e: &TaskError) -> String {
    match e {
        TaskError::Exception { exc, .. } => exc.message(),
        other => format!("{other:?}"),
    }
}

fn db_error(e: DbError) -> TaskError {
    match e {
        DbError::JobNotFound(_) | DbError::Missing(_) => TaskError::value_error(e.to_string()),
        other => TaskError::exception(ExceptionInfo::new(
            "OperationalError",
            "astroworker.errors",
            other.to_string(),
        )),
    }
}

/// The result of a task that found its row `cancelled` (Astronomus bug 10: it would have
/// overwritten the row with `complete`).
fn cancelled(job: &JobRow) -> Value {
    tracing::info!(job_id = job.job_id, "job was cancelled; stopping");
    json!({"status": "cancelled", "job_id": job.job_id})
}

fn auto_process(env: &AstronomusEnv, _ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        file_path: String,
        formats: Vec<String>,
        job_id: i64,
    }
    let p: P = a.bind("auto_process", &["file_path", "formats", "job_id"])?;
    tracked(env, p.job_id, |job| {
        job.set(&[
            Set::Status("running"),
            Set::StartedNow,
            Set::Step("Loading FITS file"),
            Set::Progress(10.0),
        ]);
        let path = env
            .fits
            .roots
            .input(Path::new(&p.file_path))
            .map_err(path_error)?;
        let image = read_rgb(&path)?;
        if job.cancelled() {
            return Ok(cancelled(job));
        }
        job.step("Detecting stretch parameters", 30.0);
        job.step("Saving outputs", 80.0);
        let (outputs, params) = write_previews(&image, &path, &formats(&p.formats))?;
        let (_, h, w) = image.dim();
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let log = [
            format!("Processed {name}"),
            format!("Input shape: ({h}, {w}, 3)"),
            format!("Stretch factor: {}", params.stretch_factor),
            format!("Black point: {:.2}", params.black_point),
            format!("White point: {:.2}", params.white_point),
            format!("Output files: {}", outputs.len()),
        ]
        .join("\n");
        if job.cancelled() {
            return Ok(cancelled(job));
        }
        job.complete(&outputs, log);
        Ok(json!({"status": "complete", "output_files": outputs, "params": params.to_json()}))
    })
}

fn stack_and_stretch(env: &AstronomusEnv, ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        folder_path: String,
        #[serde(default = "light_pattern")]
        pattern: String,
        #[serde(default = "default_sigma")]
        sigma: f32,
        #[serde(default = "jpg_only")]
        formats: Vec<String>,
        job_id: i64,
    }
    let p: P = a.bind(
        "stack_and_stretch",
        &["folder_path", "pattern", "sigma", "formats", "job_id"],
    )?;
    tracked(env, p.job_id, |job| {
        job.set(&[
            Set::Status("running"),
            Set::StartedNow,
            Set::Step("Loading sub-frames"),
            Set::Progress(10.0),
        ]);
        let folder = env
            .fits
            .roots
            .input(Path::new(&p.folder_path))
            .map_err(path_error)?;
        let inputs = readable_frames(&folder, &p.pattern)?;
        let n = inputs.len();
        let folder_name = folder
            .file_name()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let object = folder_name
            .strip_suffix("_sub")
            .unwrap_or(&folder_name)
            .to_string();
        let out_dir = folder.parent().unwrap_or(&folder).join(&object);
        let stacked = env
            .fits
            .roots
            .output(&out_dir.join(format!("Stacked_{n}_{object}.fit")))
            .map_err(path_error)?;
        if job.cancelled() {
            return Ok(cancelled(job));
        }
        job.step("Stacking sub-frames", 20.0);
        let method = Method::SigmaClip {
            low: p.sigma,
            high: p.sigma,
            iterations: 10,
        };
        if !(p.sigma.is_finite() && p.sigma > 0.0) {
            return Err(TaskError::value_error("sigma must be a positive number"));
        }
        let params = StackParams {
            inputs,
            output: stacked.clone(),
            method,
            normalize: Normalization::None,
            weights: Weights::None,
            masters: jobs::MasterFiles::default(),
            // Bilinear, the app's own debayer (with the file's pattern, not RGGB): each sub is
            // debayered before it is resampled, and RCD would cost 70 ms more per sub.
            debayer: DebayerChoice::Method(DebayerMethod::Bilinear),
            dtype: OutputType::UInt16,
            preview: None,
            memory_budget: stack::DEFAULT_MEMORY_BUDGET,
        };
        let compute = env
            .fits
            .devices
            .select("auto")
            .map_err(|e| TaskError::value_error(e.to_string()))?;
        // Registered on the stars before stacking (Astronomus bug 3): Seestar subs drift and
        // dither. Frames that cannot be matched are left out and named in the log.
        let registration = RegisterParams {
            inputs: params.inputs.clone(),
            output_dir: None,
            reference: None,
            model: Model::Similarity,
            interpolation: Interpolation::Lanczos3,
            reject_worst: 0.0,
            framing: Framing::Reference,
        };
        let report = register::registered_stack(
            &params,
            &registration,
            compute.as_ref(),
            &TaskProgress::new(ctx),
        )
        .map_err(pipeline_error)?;
        let dropped: Vec<String> = report["registration"]["dropped"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let rejected_fraction = report["rejected_fraction"].as_f64().unwrap_or(0.0);
        mark_stacked(&stacked, n).map_err(pipeline_error)?;
        if job.cancelled() {
            return Ok(cancelled(job));
        }
        job.step("Auto-stretching", 60.0);
        let image = read_rgb(&stacked)?;
        let (outputs, sp) = write_previews(&image, &stacked, &formats(&p.formats))?;
        let (_, h, w) = image.dim();
        let log = [
            format!("Stacked {n} frames from {folder_name}"),
            format!("Input shape: ({h}, {w})"),
            format!("Stacked shape: (3, {h}, {w})"),
            format!(
                "Registered: {} of {n} frames on their stars{}",
                n - dropped.len(),
                if dropped.is_empty() {
                    String::new()
                } else {
                    format!(" (dropped: {})", dropped.join(", "))
                }
            ),
            format!(
                "Rejected samples: {:.4}% (sigma clip, median centre, {} sigma)",
                rejected_fraction * 100.0,
                p.sigma
            ),
            format!("Stretch factor: {}", sp.stretch_factor),
            format!("Black point: {:.2}", sp.black_point),
            format!("White point: {:.2}", sp.white_point),
            format!("Stacked file: {}", stacked.display()),
            format!("Previews: {}", outputs.join(", ")),
        ]
        .join("\n");
        if job.cancelled() {
            return Ok(cancelled(job));
        }
        job.complete(&outputs, log);
        Ok(json!({
            "status": "complete",
            "stacked_file": stacked.display().to_string(),
            "output_files": outputs,
            "num_frames": n,
            "params": sp.to_json(),
        }))
    })
}

fn light_pattern() -> String {
    "Light_*.fit".into()
}
fn default_sigma() -> f32 {
    2.5
}
fn jpg_only() -> Vec<String> {
    vec!["jpg".into()]
}

/// `folder/pattern`, non-recursive, sorted by name; files that do not open as FITS images are
/// skipped with a warning (as Astronomus does).
fn readable_frames(folder: &Path, pattern: &str) -> Result<Vec<PathBuf>, TaskError> {
    // The folder is taken literally (Seestar folder names have spaces and may hold brackets).
    let escaped_folder = glob::Pattern::escape(&folder.display().to_string());
    let full = format!("{escaped_folder}/{pattern}");
    let mut files: Vec<PathBuf> = glob::glob(&full)
        .map_err(|e| TaskError::value_error(format!("bad pattern {pattern:?}: {e}")))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let readable: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| match FitsReader::open(f) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("Skipping {}: {e}", f.display());
                false
            }
        })
        .collect();
    if readable.is_empty() {
        return Err(TaskError::exception(ExceptionInfo::builtin(
            "FileNotFoundError",
            format!("No FITS files matching {pattern:?} in {}", folder.display()),
        )));
    }
    Ok(readable)
}

/// Adds Astronomus's `STACKED = N` card and its comment to the written stack (rewritten in
/// place: a 3×1080×1920 uint16 file, a few milliseconds).
fn mark_stacked(path: &Path, n: usize) -> Result<(), PipelineError> {
    let mut reader = FitsReader::open(path)?;
    let mut header = reader.info().header.clone();
    let data = reader.read_all()?;
    drop(reader);
    header.set(
        "STACKED",
        CardValue::Int(n as i64),
        Some("Number of stacked sub-frames"),
    );
    header.push_comment(&format!("Stacked from {n} sub-frames"));
    write_image(path, data.view(), OutputType::UInt16, &header)?;
    Ok(())
}

fn process_file(env: &AstronomusEnv, _ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        file_id: i64,
        pipeline_id: i64,
        job_id: i64,
    }
    let p: P = a.bind("process_file", &["file_id", "pipeline_id", "job_id"])?;
    let Some(db) = env.db.clone() else {
        return Err(TaskError::exception(ExceptionInfo::builtin(
            "RuntimeError",
            "process_file reads its file and pipeline from the database: set DATABASE_URL",
        )));
    };
    tracked(env, p.job_id, |job| {
        job.set(&[Set::Status("starting"), Set::StartedNow]);
        let file_path = db.file_path(p.file_id).map_err(db_error)?;
        let (pipeline_name, steps) = db.pipeline(p.pipeline_id).map_err(db_error)?;
        job.set(&[
            Set::Status("running"),
            Set::GpuUsed(false),
            Set::Progress(10.0),
            Set::Step("Processing FITS file"),
        ]);
        let input = env
            .fits
            .roots
            .input(Path::new(&file_path))
            .map_err(path_error)?;
        let mut reader = FitsReader::open(&input).map_err(|e| pipeline_error(e.into()))?;
        let mut data = reader
            .read_all()
            .map_err(|e| pipeline_error(e.into()))?
            .mapv(f64::from);
        let mut log = vec![format!("Processing {}", input.display())];
        let mut export = None;
        for step in steps.as_array().map(Vec::as_slice).unwrap_or_default() {
            let name = step.get("step").and_then(Value::as_str).unwrap_or("");
            let params = step.get("params").cloned().unwrap_or(json!({}));
            match name {
                "histogram_stretch" => {
                    let algorithm = params
                        .get("algorithm")
                        .and_then(Value::as_str)
                        .unwrap_or("auto");
                    let midtones = params
                        .get("midtones")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.5);
                    stretch::histogram_stretch(&mut data, algorithm, midtones);
                    log.push(format!(
                        "histogram_stretch: {algorithm}, midtones {midtones}"
                    ));
                }
                "export" => {
                    export = Some(params);
                    break;
                }
                other => log.push(format!("{other}: not supported, skipped")),
            }
        }
        let export =
            export.unwrap_or_else(|| json!({"format": "jpeg", "quality": 95, "bit_depth": 8}));
        let (ext, bits) = export_format(&export);
        // Raw ADU exported without a stretch are scaled to the 16-bit range instead of
        // overflowing (Astronomus bug 8).
        if data.iter().any(|v| *v > 1.0) {
            data.mapv_inplace(|v| v / 65535.0);
        }
        let levels = if bits == 16 { 65535.0 } else { 255.0 };
        let display = stretch::quantize_floor(&data, levels);
        let dir = processing_dir();
        let stem = input
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let out = dir
            .join(format!("job_{}", p.job_id))
            .join("outputs")
            .join(format!("{stem}.{ext}"));
        crate::pipeline::ensure_parent(&out).map_err(pipeline_error)?;
        write_export(&out, &display)?;
        job.step("Copying final outputs", 80.0);
        let parent = input
            .parent()
            .and_then(Path::file_name)
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let pipeline = pipeline_name.to_lowercase().replace(' ', "_");
        let stamp = chrono::Local::now().format("%Y%m%d_%H%M%S");
        let copy = dir.join(format!("{parent}_{pipeline}_{stamp}.{ext}"));
        std::fs::copy(&out, &copy).map_err(|e| {
            TaskError::exception(ExceptionInfo::builtin(
                "OSError",
                format!("{}: {e}", copy.display()),
            ))
        })?;
        log.push(format!("Exported {}", copy.display()));
        let outputs = vec![copy.display().to_string()];
        let log = log.join("\n");
        if job.cancelled() {
            return Ok(cancelled(job));
        }
        job.complete(&outputs, log.clone());
        Ok(json!({
            "status": "complete",
            "output_files": outputs,
            "processing_log": log,
            "gpu_used": false,
        }))
    })
}

/// The file extension and bit depth of an `export` step (jpeg→jpg, tiff→tif).
fn export_format(params: &Value) -> (&'static str, u32) {
    let format = params
        .get("format")
        .and_then(Value::as_str)
        .unwrap_or("jpeg")
        .to_ascii_lowercase();
    let bits = params.get("bit_depth").and_then(Value::as_u64).unwrap_or(8) as u32;
    match format.as_str() {
        "tiff" | "tif" => ("tif", if bits == 16 { 16 } else { 8 }),
        "png" => ("png", 8),
        _ => ("jpg", 8),
    }
}

/// Writes an export through the preview writer (JPEG/PNG 8-bit; `.tif` is always 16-bit there,
/// so an 8-bit TIFF export is written as 16-bit — the same picture, quantised to 8 bits).
fn write_export(path: &Path, image: &Array3<f32>) -> Result<(), TaskError> {
    write_preview(path, image.view())
        .map(|_| ())
        .map_err(|e| TaskError::exception(ExceptionInfo::builtin("OSError", e.to_string())))
}

fn cancel_job(env: &AstronomusEnv, _ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        job_id: i64,
    }
    let p: P = a.bind("cancel_job", &["job_id"])?;
    let Some(db) = &env.db else {
        tracing::warn!(
            "cancel_job({}) without DATABASE_URL: nothing to cancel",
            p.job_id
        );
        return Ok(json!(false));
    };
    let changed = db
        .update(p.job_id, &[Set::Status("cancelled"), Set::CompletedNow])
        .map_err(db_error)?;
    Ok(json!(changed > 0))
}

fn cleanup_old_jobs(_env: &AstronomusEnv, _ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        #[serde(default = "seven")]
        days: i64,
    }
    let p: P = match a.bind("cleanup_old_jobs", &["days"]) {
        Ok(p) => p,
        Err(e) => return Ok(json!({"success": false, "error": error_text(&e)})),
    };
    let dir = processing_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Ok(json!({"success": false, "error": format!("{}: {e}", dir.display())}));
    }
    let max_age =
        std::time::Duration::from_secs(u64::try_from(p.days.max(0)).unwrap_or(0) * 86_400);
    let now = std::time::SystemTime::now();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => return Ok(json!({"success": false, "error": format!("{}: {e}", dir.display())})),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > max_age);
        if name.starts_with("job_") && entry.path().is_dir() && old {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!("could not remove {}: {e}", entry.path().display());
            } else {
                tracing::info!("Removed old job directory {}", entry.path().display());
            }
        }
    }
    Ok(json!({"success": true, "days": p.days}))
}

fn seven() -> i64 {
    7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_astronomus() {
        assert_eq!(
            preview_path(Path::new("/fits/M 94/Light_001.fit"), "jpg"),
            Path::new("/fits/M 94/Light_001_astroplanner.jpg")
        );
        assert_eq!(
            formats(&["JPG".into(), "bmp".into(), "tiff".into()]),
            ["jpg", "tiff"]
        );
        assert_eq!(
            export_format(&json!({"format": "tiff", "bit_depth": 16})),
            ("tif", 16)
        );
        assert_eq!(export_format(&json!({"format": "jpeg"})), ("jpg", 8));
    }
}
