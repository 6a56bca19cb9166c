//! The `fits.*` Celery tasks: argument binding (names and defaults are the public contract),
//! path confinement, progress, and the mapping of pipeline errors to Python exceptions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::{Args, Registry, TaskContext, TaskDef, TaskError, TaskOptions};
use crate::backend::ExceptionInfo;
use crate::compute::Devices;
use crate::paths::{DataRoots, PathError};
use crate::pipeline::{self, PipelineError, Progress, jobs, register, stack};
use crate::science::align::Model;
use crate::science::warp::Interpolation;

/// What the FITS tasks share: where they may read and write, and the compute devices.
pub struct FitsEnv {
    pub roots: DataRoots,
    pub devices: Devices,
}

/// The body of one `fits.*` task.
type FitsTaskFn = fn(&FitsEnv, &TaskContext, Args) -> Result<Value, TaskError>;

pub fn register(registry: &mut Registry, env: Arc<FitsEnv>) {
    // FITS jobs are idempotent (outputs are replaced atomically), so they are acknowledged
    // after they finish: a worker killed mid-stack leaves the job to be redelivered.
    let options = TaskOptions {
        acks_late: Some(true),
        ..TaskOptions::default()
    };
    let tasks: [(&str, FitsTaskFn); 7] = [
        ("fits.info", info),
        ("fits.register", register_task),
        ("fits.master", master),
        ("fits.calibrate", calibrate),
        ("fits.debayer", debayer),
        ("fits.stack", stack_task),
        ("fits.preview", preview),
    ];
    for (name, run) in tasks {
        let env = env.clone();
        registry.register(
            TaskDef::new(name, move |ctx: &TaskContext, args: Args| {
                run(&env, ctx, args)
            })
            .with_options(options.clone()),
        );
    }
}

/// `inputs`: a list of paths, or one glob pattern.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    fn items(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

fn info(env: &FitsEnv, _ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        path: String,
    }
    let p: P = a.bind("fits.info", &["path"])?;
    let path = env.roots.input(Path::new(&p.path)).map_err(path_error)?;
    pipeline::info::info(&path).map_err(pipeline_error)
}

fn master(env: &FitsEnv, ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        kind: String,
        inputs: Inputs,
        output: String,
        #[serde(default = "default_median")]
        method: String,
        #[serde(default)]
        bias: Option<String>,
        #[serde(default)]
        dark: Option<String>,
    }
    let p: P = a.bind(
        "fits.master",
        &["kind", "inputs", "output", "method", "bias", "dark"],
    )?;
    let params = jobs::MasterParams {
        kind: jobs::MasterKind::parse(&p.kind).ok_or_else(|| {
            TaskError::value_error(format!("kind must be bias, dark or flat, not {:?}", p.kind))
        })?,
        inputs: env
            .roots
            .expand_inputs(&p.inputs.items())
            .map_err(path_error)?,
        output: env.roots.output(Path::new(&p.output)).map_err(path_error)?,
        method: jobs::MasterMethod::parse(&p.method).ok_or_else(|| {
            TaskError::value_error(format!(
                "method must be median or sigma_clip, not {:?}",
                p.method
            ))
        })?,
        bias: optional_input(env, p.bias.as_deref())?,
        dark: optional_input(env, p.dark.as_deref())?,
    };
    let report = jobs::master(&params, &TaskProgress::new(ctx)).map_err(pipeline_error)?;
    Ok(report)
}

fn calibrate(env: &FitsEnv, ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        inputs: Inputs,
        output_dir: String,
        #[serde(default)]
        bias: Option<String>,
        #[serde(default)]
        dark: Option<String>,
        #[serde(default)]
        flat: Option<String>,
        #[serde(default = "default_exposure")]
        dark_scaling: String,
        #[serde(default = "yes")]
        cosmetic: bool,
        #[serde(default)]
        dtype: Option<String>,
    }
    let p: P = a.bind(
        "fits.calibrate",
        &[
            "inputs",
            "output_dir",
            "bias",
            "dark",
            "flat",
            "dark_scaling",
            "cosmetic",
            "dtype",
        ],
    )?;
    let params = jobs::CalibrateParams {
        inputs: env
            .roots
            .expand_inputs(&p.inputs.items())
            .map_err(path_error)?,
        output_dir: env
            .roots
            .output(Path::new(&p.output_dir))
            .map_err(path_error)?,
        masters: masters(env, p.bias, p.dark, p.flat, &p.dark_scaling, p.cosmetic)?,
        dtype: dtype(p.dtype.as_deref().unwrap_or("float32"))?,
    };
    jobs::calibrate(&params, &TaskProgress::new(ctx)).map_err(pipeline_error)
}

fn debayer(env: &FitsEnv, ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        input: String,
        output: String,
        #[serde(default = "default_auto")]
        pattern: String,
        #[serde(default = "default_bilinear")]
        method: String,
        #[serde(default)]
        device: Option<String>,
    }
    let p: P = a.bind(
        "fits.debayer",
        &["input", "output", "pattern", "method", "device"],
    )?;
    let params = jobs::DebayerParams {
        input: env.roots.input(Path::new(&p.input)).map_err(path_error)?,
        output: env.roots.output(Path::new(&p.output)).map_err(path_error)?,
        pattern: jobs::parse_pattern(&p.pattern).map_err(pipeline_error)?,
        method: jobs::parse_debayer_method(&p.method).map_err(pipeline_error)?,
    };
    let compute = env
        .devices
        .select(p.device.as_deref().unwrap_or("auto"))
        .map_err(|e| TaskError::value_error(e.to_string()))?;
    jobs::debayer(&params, compute.as_ref(), &TaskProgress::new(ctx)).map_err(pipeline_error)
}

fn preview(env: &FitsEnv, ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        input: String,
        output: String,
        #[serde(default = "default_auto")]
        stretch: String,
    }
    let p: P = a.bind("fits.preview", &["input", "output", "stretch"])?;
    let params = jobs::PreviewParams {
        input: env.roots.input(Path::new(&p.input)).map_err(path_error)?,
        output: env.roots.output(Path::new(&p.output)).map_err(path_error)?,
        stretch: jobs::parse_stretch(&p.stretch).map_err(pipeline_error)?,
    };
    jobs::preview(&params, &TaskProgress::new(ctx)).map_err(pipeline_error)
}

fn stack_task(env: &FitsEnv, ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        inputs: Inputs,
        output: String,
        #[serde(default = "default_sigma_clip")]
        method: String,
        #[serde(default = "three")]
        sigma_low: f32,
        #[serde(default = "three")]
        sigma_high: f32,
        #[serde(default = "five")]
        iterations: u32,
        #[serde(default = "default_additive_scale")]
        normalize: String,
        #[serde(default = "default_none")]
        weights: String,
        #[serde(default)]
        bias: Option<String>,
        #[serde(default)]
        dark: Option<String>,
        #[serde(default)]
        flat: Option<String>,
        #[serde(default = "default_auto")]
        debayer: String,
        #[serde(default)]
        register: bool,
        #[serde(default = "default_float32")]
        dtype: String,
        #[serde(default)]
        preview: Option<String>,
        #[serde(default = "default_auto")]
        device: String,
        #[serde(default = "default_exposure")]
        dark_scaling: String,
        #[serde(default = "yes")]
        cosmetic: bool,
        #[serde(default = "percentile_low")]
        percentile_low: f32,
        #[serde(default = "percentile_high")]
        percentile_high: f32,
        #[serde(flatten)]
        registration: RegistrationArgs,
    }
    let p: P = a.bind(
        "fits.stack",
        &[
            "inputs",
            "output",
            "method",
            "sigma_low",
            "sigma_high",
            "iterations",
            "normalize",
            "weights",
            "bias",
            "dark",
            "flat",
            "debayer",
            "register",
            "dtype",
            "preview",
            "device",
            "dark_scaling",
            "cosmetic",
            "percentile_low",
            "percentile_high",
            "transform",
            "interpolation",
            "reject_worst",
            "reference",
            "framing",
        ],
    )?;
    let compute = env
        .devices
        .select(&p.device)
        .map_err(|e| TaskError::value_error(e.to_string()))?;
    let params = stack::StackParams {
        inputs: env
            .roots
            .expand_inputs(&p.inputs.items())
            .map_err(path_error)?,
        output: env.roots.output(Path::new(&p.output)).map_err(path_error)?,
        method: stack::parse_method(
            &p.method,
            p.sigma_low,
            p.sigma_high,
            p.iterations,
            p.percentile_low,
            p.percentile_high,
        )
        .map_err(pipeline_error)?,
        normalize: stack::parse_normalization(&p.normalize).map_err(pipeline_error)?,
        weights: stack::parse_weights(&p.weights).map_err(pipeline_error)?,
        masters: masters(env, p.bias, p.dark, p.flat, &p.dark_scaling, p.cosmetic)?,
        debayer: stack::parse_debayer_choice(&p.debayer).map_err(pipeline_error)?,
        dtype: dtype(&p.dtype)?,
        preview: p
            .preview
            .as_deref()
            .map(|s| env.roots.output(Path::new(s)))
            .transpose()
            .map_err(path_error)?,
        memory_budget: stack::DEFAULT_MEMORY_BUDGET,
    };
    if p.register {
        let registration = register_params(env, params.inputs.clone(), None, &p.registration)?;
        return register::registered_stack(
            &params,
            &registration,
            compute.as_ref(),
            &TaskProgress::new(ctx),
        )
        .map_err(pipeline_error);
    }
    let report =
        stack::stack(&params, compute.as_ref(), &TaskProgress::new(ctx)).map_err(pipeline_error)?;
    crate::metrics::count_frames(report.frames_used, report.width * report.height);
    Ok(report.to_json())
}

/// `fits.register(inputs, output_dir=None, reference=None, transform="similarity",
/// interpolation="lanczos3", reject_worst=0, framing="reference")`.
fn register_task(env: &FitsEnv, ctx: &TaskContext, a: Args) -> Result<Value, TaskError> {
    #[derive(Deserialize)]
    struct P {
        inputs: Inputs,
        #[serde(default)]
        output_dir: Option<String>,
        #[serde(flatten)]
        registration: RegistrationArgs,
    }
    let p: P = a.bind(
        "fits.register",
        &[
            "inputs",
            "output_dir",
            "reference",
            "transform",
            "interpolation",
            "reject_worst",
            "framing",
        ],
    )?;
    let inputs = env
        .roots
        .expand_inputs(&p.inputs.items())
        .map_err(path_error)?;
    let output_dir = p
        .output_dir
        .as_deref()
        .map(|d| env.roots.output(Path::new(d)))
        .transpose()
        .map_err(path_error)?;
    let params = register_params(env, inputs, output_dir, &p.registration)?;
    let report = register::register(&params, &TaskProgress::new(ctx)).map_err(pipeline_error)?;
    Ok(report.to_json())
}

/// The registration kwargs `fits.stack` and `fits.register` share (flattened into both
/// argument structs; each task still lists their names for binding).
#[derive(Deserialize)]
struct RegistrationArgs {
    #[serde(default)]
    reference: Option<String>,
    #[serde(default = "default_similarity")]
    transform: String,
    #[serde(default = "default_lanczos3")]
    interpolation: String,
    #[serde(default)]
    reject_worst: f64,
    #[serde(default = "default_reference")]
    framing: String,
}

fn register_params(
    env: &FitsEnv,
    inputs: Vec<PathBuf>,
    output_dir: Option<PathBuf>,
    a: &RegistrationArgs,
) -> Result<register::RegisterParams, TaskError> {
    Ok(register::RegisterParams {
        inputs,
        output_dir,
        reference: a
            .reference
            .as_deref()
            .map(|r| env.roots.input(Path::new(r)))
            .transpose()
            .map_err(path_error)?,
        model: Model::parse(&a.transform).ok_or_else(|| {
            TaskError::value_error(format!(
                "transform must be shift, similarity, affine or homography, not {:?}",
                a.transform
            ))
        })?,
        interpolation: Interpolation::parse(&a.interpolation).ok_or_else(|| {
            TaskError::value_error(format!(
                "interpolation must be bilinear, bicubic or lanczos3, not {:?}",
                a.interpolation
            ))
        })?,
        reject_worst: if (0.0..1.0).contains(&a.reject_worst) {
            a.reject_worst
        } else {
            return Err(TaskError::value_error("reject_worst must be in [0, 1)"));
        },
        framing: register::Framing::parse(&a.framing).ok_or_else(|| {
            TaskError::value_error(format!(
                "framing must be reference, union or intersection, not {:?}",
                a.framing
            ))
        })?,
    })
}

fn masters(
    env: &FitsEnv,
    bias: Option<String>,
    dark: Option<String>,
    flat: Option<String>,
    dark_scaling: &str,
    cosmetic: bool,
) -> Result<jobs::MasterFiles, TaskError> {
    Ok(jobs::MasterFiles {
        bias: optional_input(env, bias.as_deref())?,
        dark: optional_input(env, dark.as_deref())?,
        flat: optional_input(env, flat.as_deref())?,
        dark_scaling: jobs::parse_dark_scaling(dark_scaling).map_err(pipeline_error)?,
        cosmetic,
    })
}

fn optional_input(env: &FitsEnv, path: Option<&str>) -> Result<Option<PathBuf>, TaskError> {
    path.map(|p| env.roots.input(Path::new(p)))
        .transpose()
        .map_err(path_error)
}

fn dtype(s: &str) -> Result<crate::fits::OutputType, TaskError> {
    jobs::parse_dtype(s).map_err(pipeline_error)
}

/// Python exceptions for path problems: a path outside the roots is a `PermissionError`,
/// anything else about the path a `ValueError` (a missing glob match: `FileNotFoundError`).
pub(crate) fn path_error(e: PathError) -> TaskError {
    let exc_type = match e {
        PathError::OutsideRoots { .. } => "PermissionError",
        PathError::NoMatch(_) => "FileNotFoundError",
        _ => "ValueError",
    };
    TaskError::exception(ExceptionInfo::builtin(exc_type, e.to_string()))
}

/// Python exceptions for pipeline failures. FITS problems are `FitsError` (a class the
/// producer gets re-created by name), a missing file is `FileNotFoundError`.
pub fn pipeline_error(e: PipelineError) -> TaskError {
    use crate::fits::FitsError;
    match e {
        PipelineError::SoftTimeLimit => TaskError::SoftTimeLimitExceeded,
        PipelineError::Cancelled => TaskError::Cancelled,
        PipelineError::Path(p) => path_error(p),
        PipelineError::Invalid(msg) => TaskError::value_error(msg),
        PipelineError::Fits(f @ FitsError::NotFound { .. }) => {
            TaskError::exception(ExceptionInfo::builtin("FileNotFoundError", f.to_string()))
        }
        PipelineError::Fits(f) => TaskError::exception(ExceptionInfo::new(
            "FitsError",
            "astroworker.errors",
            f.to_string(),
        )),
        other => TaskError::exception(ExceptionInfo::new(
            "PipelineError",
            "astroworker.errors",
            other.to_string(),
        )),
    }
}

/// PROGRESS states for a running task, at most every 250 ms (and at every change of step),
/// so a long stack does not flood the result backend.
pub(crate) struct TaskProgress<'a> {
    ctx: &'a TaskContext,
    last: std::sync::Mutex<(Option<Instant>, String)>,
}

impl<'a> TaskProgress<'a> {
    pub(crate) fn new(ctx: &'a TaskContext) -> Self {
        Self {
            ctx,
            last: std::sync::Mutex::new((None, String::new())),
        }
    }
}

impl Progress for TaskProgress<'_> {
    fn report(&self, current: u64, total: u64, step: &str) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last
            .0
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
        if due || last.1 != step || current == total {
            *last = (Some(Instant::now()), step.to_string());
            drop(last);
            self.ctx.progress(current, total, Some(step));
        }
    }

    fn checkpoint(&self) -> pipeline::Result<()> {
        match self.ctx.checkpoint() {
            Ok(()) => Ok(()),
            Err(TaskError::SoftTimeLimitExceeded) => Err(PipelineError::SoftTimeLimit),
            Err(_) => Err(PipelineError::Cancelled),
        }
    }
}

fn default_median() -> String {
    "median".into()
}
fn default_exposure() -> String {
    "exposure".into()
}
fn default_auto() -> String {
    "auto".into()
}
fn default_bilinear() -> String {
    "bilinear".into()
}
fn default_sigma_clip() -> String {
    "sigma_clip".into()
}
fn default_additive_scale() -> String {
    "additive_scale".into()
}
fn default_similarity() -> String {
    "similarity".into()
}
fn default_lanczos3() -> String {
    "lanczos3".into()
}
fn default_reference() -> String {
    "reference".into()
}
fn default_none() -> String {
    "none".into()
}
fn default_float32() -> String {
    "float32".into()
}
fn yes() -> bool {
    true
}
fn three() -> f32 {
    3.0
}
fn five() -> u32 {
    5
}
fn percentile_low() -> f32 {
    0.2
}
fn percentile_high() -> f32 {
    0.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_accept_a_list_or_a_pattern() {
        let one: Inputs = serde_json::from_value(json!("/data/*.fit")).unwrap();
        assert_eq!(one.items(), ["/data/*.fit"]);
        let many: Inputs = serde_json::from_value(json!(["/a.fit", "/b.fit"])).unwrap();
        assert_eq!(many.items(), ["/a.fit", "/b.fit"]);
        assert!(serde_json::from_value::<Inputs>(json!(3)).is_err());
    }

    #[test]
    fn errors_map_to_python_exceptions() {
        let name = |e: TaskError| match e {
            TaskError::Exception { exc, .. } => exc.exc_type,
            other => format!("{other:?}"),
        };
        assert_eq!(
            name(pipeline_error(PipelineError::Fits(
                crate::fits::FitsError::NotFound {
                    path: "/x.fit".into()
                }
            ))),
            "FileNotFoundError"
        );
        assert_eq!(
            name(path_error(PathError::OutsideRoots {
                path: "/etc/passwd".into(),
                roots: "/data".into()
            })),
            "PermissionError"
        );
        assert_eq!(
            name(pipeline_error(PipelineError::Invalid("bad".into()))),
            "ValueError"
        );
        assert!(matches!(
            pipeline_error(PipelineError::SoftTimeLimit),
            TaskError::SoftTimeLimitExceeded
        ));
    }
}
