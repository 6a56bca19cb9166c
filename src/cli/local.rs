//! The local subcommands: the same jobs as the `fits.*` tasks, run in this process with a
//! progress bar on stderr and the task's JSON result on stdout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::compute::Devices;
use crate::fixtures::{self, FixtureSpec};
use crate::paths::DataRoots;
use crate::pipeline::{self, PipelineError, Progress, jobs, register, stack};
use crate::science::align::Model;
use crate::science::warp::Interpolation;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// FITS file (`file.fits[N]` or `file.fits[EXTNAME]` selects an HDU).
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// bias, dark or flat.
    #[arg(long)]
    pub kind: String,
    /// Input frames, or one quoted glob pattern.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    #[arg(short, long)]
    pub output: PathBuf,
    /// median or sigma_clip (sigma-clipped mean).
    #[arg(long, default_value = "median")]
    pub method: String,
    /// Master bias subtracted from darks and flats.
    #[arg(long)]
    pub bias: Option<PathBuf>,
    /// Master dark (flat-darks) subtracted from flats.
    #[arg(long)]
    pub dark: Option<PathBuf>,
}

/// Calibration options shared by `calibrate` and `stack`.
#[derive(Debug, Args)]
pub struct MasterOptions {
    #[arg(long)]
    pub bias: Option<PathBuf>,
    #[arg(long)]
    pub dark: Option<PathBuf>,
    #[arg(long)]
    pub flat: Option<PathBuf>,
    /// exposure (scale the dark's thermal signal by exposure time) or none.
    #[arg(long, default_value = "exposure")]
    pub dark_scaling: String,
    /// Skip the cosmetic correction of hot and cold pixels.
    #[arg(long)]
    pub no_cosmetic: bool,
}

impl MasterOptions {
    fn files(&self) -> pipeline::Result<jobs::MasterFiles> {
        Ok(jobs::MasterFiles {
            bias: self.bias.as_deref().map(absolute).transpose()?,
            dark: self.dark.as_deref().map(absolute).transpose()?,
            flat: self.flat.as_deref().map(absolute).transpose()?,
            dark_scaling: jobs::parse_dark_scaling(&self.dark_scaling)?,
            cosmetic: !self.no_cosmetic,
        })
    }
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Directory for the calibrated frames (same file names).
    #[arg(short, long)]
    pub output_dir: PathBuf,
    #[command(flatten)]
    pub masters: MasterOptions,
    /// float32 or uint16.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
}

#[derive(Debug, Args)]
pub struct DebayerArgs {
    pub input: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    /// auto (from BAYERPAT/ROWORDER/XBAYROFF/YBAYROFF), or RGGB, BGGR, GRBG, GBRG.
    #[arg(long, default_value = "auto")]
    pub pattern: String,
    /// bilinear, vng, rcd or superpixel.
    #[arg(long, default_value = "bilinear")]
    pub method: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct StackArgs {
    /// Input frames, or one quoted glob pattern.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    #[arg(short, long)]
    pub output: PathBuf,
    /// sum, mean, median, sigma_clip, winsorized, mad_clip, percentile, linear_fit.
    #[arg(long, default_value = "sigma_clip")]
    pub method: String,
    #[arg(long, default_value_t = 3.0)]
    pub sigma_low: f32,
    #[arg(long, default_value_t = 3.0)]
    pub sigma_high: f32,
    #[arg(long, default_value_t = 5)]
    pub iterations: u32,
    /// Fractions for `percentile`.
    #[arg(long, default_value_t = 0.2)]
    pub percentile_low: f32,
    #[arg(long, default_value_t = 0.1)]
    pub percentile_high: f32,
    /// none, additive, multiplicative, additive_scale, multiplicative_scale.
    #[arg(long, default_value = "additive_scale")]
    pub normalize: String,
    /// none, noise or exposure.
    #[arg(long, default_value = "none")]
    pub weights: String,
    #[command(flatten)]
    pub masters: MasterOptions,
    /// auto (debayer with RCD when the frames declare a Bayer pattern), none, bilinear, vng,
    /// rcd, superpixel.
    #[arg(long, default_value = "auto")]
    pub debayer: String,
    /// float32 or uint16.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
    /// Also write a stretched preview (.png, .jpg or .tif).
    #[arg(long)]
    pub preview: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Align the frames on their stars before stacking (see `astroworker register`).
    #[arg(long)]
    pub register: bool,
    #[command(flatten)]
    pub registration: RegistrationOptions,
    /// Memory for the band buffers, in MiB.
    #[arg(long, default_value_t = stack::DEFAULT_MEMORY_BUDGET >> 20)]
    pub memory_mb: usize,
}

impl StackArgs {
    pub fn params(&self) -> pipeline::Result<stack::StackParams> {
        Ok(stack::StackParams {
            inputs: expand(&self.inputs)?,
            output: absolute(&self.output)?,
            method: stack::parse_method(
                &self.method,
                self.sigma_low,
                self.sigma_high,
                self.iterations,
                self.percentile_low,
                self.percentile_high,
            )?,
            normalize: stack::parse_normalization(&self.normalize)?,
            weights: stack::parse_weights(&self.weights)?,
            masters: self.masters.files()?,
            debayer: stack::parse_debayer_choice(&self.debayer)?,
            dtype: jobs::parse_dtype(&self.dtype)?,
            preview: self.preview.as_deref().map(absolute).transpose()?,
            memory_budget: self.memory_mb << 20,
        })
    }
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    pub input: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    /// auto, asinh or linear.
    #[arg(long, default_value = "auto")]
    pub stretch: String,
}

#[derive(Debug, Args)]
pub struct FixturesArgs {
    /// Output directory.
    pub dir: PathBuf,
    #[arg(long, default_value_t = FixtureSpec::default().lights)]
    pub lights: usize,
    #[arg(long, default_value_t = FixtureSpec::default().biases)]
    pub biases: usize,
    #[arg(long, default_value_t = FixtureSpec::default().darks)]
    pub darks: usize,
    #[arg(long, default_value_t = FixtureSpec::default().flats)]
    pub flats: usize,
    #[arg(long, default_value_t = FixtureSpec::default().width)]
    pub width: usize,
    #[arg(long, default_value_t = FixtureSpec::default().height)]
    pub height: usize,
    #[arg(long, default_value_t = FixtureSpec::default().stars)]
    pub stars: usize,
    #[arg(long, default_value_t = FixtureSpec::default().seed)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Frames to stack (or one glob); without inputs, synthetic frames are generated in
    /// `--fixtures-dir`.
    pub inputs: Vec<String>,
    /// Where to generate (or reuse) synthetic frames when no inputs are given.
    #[arg(long, default_value = "target/bench-fixtures")]
    pub fixtures_dir: PathBuf,
    /// Number of synthetic frames.
    #[arg(long, default_value_t = 100)]
    pub frames: usize,
    /// Methods to time, comma-separated.
    #[arg(long, default_value = "mean,median,sigma_clip,winsorized")]
    pub methods: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Normalisation (none keeps the timing to read + stack).
    #[arg(long, default_value = "none")]
    pub normalize: String,
    /// Memory for the band buffers, in MiB.
    #[arg(long, default_value_t = stack::DEFAULT_MEMORY_BUDGET >> 20)]
    pub memory_mb: usize,
}

/// CLI paths are relative to the working directory; the jobs want absolute paths.
fn absolute(p: &Path) -> pipeline::Result<PathBuf> {
    std::path::absolute(p).map_err(|e| PipelineError::Invalid(format!("{}: {e}", p.display())))
}

fn expand(inputs: &[String]) -> pipeline::Result<Vec<PathBuf>> {
    let absolute_inputs = inputs
        .iter()
        .map(|s| absolute(Path::new(s)).map(|p| p.display().to_string()))
        .collect::<pipeline::Result<Vec<_>>>()?;
    Ok(DataRoots::default().expand_inputs(&absolute_inputs)?)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:<22} [{bar:40}] {pos}/{len} {elapsed}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn report(&self, current: u64, total: u64, step: &str) {
        self.0.set_length(total);
        self.0.set_position(current);
        if self.0.message() != step {
            self.0.set_message(step.to_string());
        }
    }

    fn checkpoint(&self) -> pipeline::Result<()> {
        Ok(())
    }
}

pub fn info(a: &InfoArgs) -> pipeline::Result<Value> {
    pipeline::info::info(&a.path)
}

pub fn master(a: &MasterArgs) -> pipeline::Result<Value> {
    let params = jobs::MasterParams {
        kind: jobs::MasterKind::parse(&a.kind).ok_or_else(|| {
            PipelineError::Invalid(format!(
                "--kind must be bias, dark or flat, not {:?}",
                a.kind
            ))
        })?,
        inputs: expand(&a.inputs)?,
        output: absolute(&a.output)?,
        method: jobs::MasterMethod::parse(&a.method).ok_or_else(|| {
            PipelineError::Invalid(format!(
                "--method must be median or sigma_clip, not {:?}",
                a.method
            ))
        })?,
        bias: a.bias.as_deref().map(absolute).transpose()?,
        dark: a.dark.as_deref().map(absolute).transpose()?,
    };
    jobs::master(&params, &Bar::new())
}

pub fn calibrate(a: &CalibrateArgs) -> pipeline::Result<Value> {
    let params = jobs::CalibrateParams {
        inputs: expand(&a.inputs)?,
        output_dir: absolute(&a.output_dir)?,
        masters: a.masters.files()?,
        dtype: jobs::parse_dtype(&a.dtype)?,
    };
    jobs::calibrate(&params, &Bar::new())
}

pub fn debayer(a: &DebayerArgs, devices: &Devices) -> pipeline::Result<Value> {
    let params = jobs::DebayerParams {
        input: absolute(&a.input)?,
        output: absolute(&a.output)?,
        pattern: jobs::parse_pattern(&a.pattern)?,
        method: jobs::parse_debayer_method(&a.method)?,
    };
    let compute = devices.select(&a.device)?;
    jobs::debayer(&params, compute.as_ref(), &Bar::new())
}

pub fn stack(a: &StackArgs, devices: &Devices) -> pipeline::Result<Value> {
    let params = a.params()?;
    let compute = devices.select(&a.device)?;
    if a.register {
        let registration = a.registration.params(params.inputs.clone(), None)?;
        return register::registered_stack(&params, &registration, compute.as_ref(), &Bar::new());
    }
    Ok(stack::stack(&params, compute.as_ref(), &Bar::new())?.to_json())
}

/// How frames are registered (`register`, `stack --register`).
#[derive(Debug, Args)]
pub struct RegistrationOptions {
    /// The reference frame (default: the one with most stars).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// shift, similarity, affine or homography.
    #[arg(long, default_value = "similarity")]
    pub transform: String,
    /// bilinear, bicubic or lanczos3.
    #[arg(long, default_value = "lanczos3")]
    pub interpolation: String,
    /// Drop this fraction of the frames with the worst FWHM (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub reject_worst: f64,
    /// Output geometry: reference (the reference frame's pixels), union (every pixel any frame
    /// covers) or intersection (only pixels all frames cover).
    #[arg(long, default_value = "reference")]
    pub framing: String,
}

impl RegistrationOptions {
    fn params(
        &self,
        inputs: Vec<PathBuf>,
        output_dir: Option<PathBuf>,
    ) -> pipeline::Result<register::RegisterParams> {
        let bad = |m: String| PipelineError::Invalid(m);
        if !(0.0..1.0).contains(&self.reject_worst) {
            return Err(bad("--reject-worst must be in [0, 1)".into()));
        }
        Ok(register::RegisterParams {
            inputs,
            output_dir,
            reference: self.reference.as_deref().map(absolute).transpose()?,
            model: Model::parse(&self.transform).ok_or_else(|| {
                bad(format!(
                    "--transform must be shift, similarity, affine or homography, not {:?}",
                    self.transform
                ))
            })?,
            interpolation: Interpolation::parse(&self.interpolation).ok_or_else(|| {
                bad(format!(
                    "--interpolation must be bilinear, bicubic or lanczos3, not {:?}",
                    self.interpolation
                ))
            })?,
            reject_worst: self.reject_worst,
            framing: register::Framing::parse(&self.framing).ok_or_else(|| {
                bad(format!(
                    "--framing must be reference, union or intersection, not {:?}",
                    self.framing
                ))
            })?,
        })
    }
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Input frames, or one quoted glob pattern.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Write the registered frames here (`<stem>_registered.fits`); without it, only the
    /// transforms are computed and printed.
    #[arg(short, long)]
    pub output_dir: Option<PathBuf>,
    #[command(flatten)]
    pub registration: RegistrationOptions,
}

pub fn register_frames(a: &RegisterArgs) -> pipeline::Result<Value> {
    let output_dir = a.output_dir.as_deref().map(absolute).transpose()?;
    let params = a.registration.params(expand(&a.inputs)?, output_dir)?;
    Ok(register::register(&params, &Bar::new())?.to_json())
}

pub fn preview(a: &PreviewArgs) -> pipeline::Result<Value> {
    let params = jobs::PreviewParams {
        input: absolute(&a.input)?,
        output: absolute(&a.output)?,
        stretch: jobs::parse_stretch(&a.stretch)?,
    };
    jobs::preview(&params, &Bar::new())
}

pub fn fixtures(a: &FixturesArgs) -> pipeline::Result<Value> {
    let spec = FixtureSpec {
        width: a.width,
        height: a.height,
        lights: a.lights,
        biases: a.biases,
        darks: a.darks,
        flats: a.flats,
        stars: a.stars,
        seed: a.seed,
        ..FixtureSpec::default()
    };
    if spec.width < 16 || spec.height < 16 || spec.width % 2 == 1 || spec.height % 2 == 1 {
        return Err(PipelineError::Invalid(
            "--width and --height must be even and at least 16".into(),
        ));
    }
    let bar = Bar::new();
    let set = fixtures::generate(&absolute(&a.dir)?, &spec, &|done, total| {
        bar.report(done as u64, total as u64, "generating frames");
    })?;
    Ok(serde_json::to_value(set).expect("serializable"))
}

/// Times each method on the same frames: phases and rejected fraction per method.
pub fn bench(a: &BenchArgs, devices: &Devices) -> pipeline::Result<Value> {
    let inputs = if a.inputs.is_empty() {
        let dir = absolute(&a.fixtures_dir)?;
        let existing =
            DataRoots::default().expand_inputs(&[format!("{}/light_*.fit", dir.display())]);
        match existing {
            Ok(found) if found.len() == a.frames => found,
            _ => {
                let spec = FixtureSpec {
                    lights: a.frames,
                    biases: 0,
                    darks: 0,
                    flats: 0,
                    ..FixtureSpec::default()
                };
                let bar = Bar::new();
                fixtures::generate(&dir, &spec, &|d, t| {
                    bar.report(d as u64, t as u64, "generating frames")
                })?
                .lights
            }
        }
    } else {
        expand(&a.inputs)?
    };
    let compute = devices.select(&a.device)?;
    let out_dir = tempfile_dir()?;
    let mut rows = Vec::new();
    for method in a
        .methods
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let params = stack::StackParams {
            inputs: inputs.clone(),
            output: out_dir.join(format!("bench_{method}.fits")),
            method: stack::parse_method(method, 3.0, 3.0, 5, 0.2, 0.1)?,
            normalize: stack::parse_normalization(&a.normalize)?,
            weights: stack::Weights::None,
            masters: jobs::MasterFiles::default(),
            debayer: stack::DebayerChoice::None,
            dtype: crate::fits::OutputType::Float32,
            preview: None,
            memory_budget: a.memory_mb << 20,
        };
        let report = stack::stack(&params, compute.as_ref(), &Bar::new())?;
        let _ = std::fs::remove_file(&params.output);
        rows.push(json!({
            "method": method,
            "frames": report.frames_used,
            "elapsed_s": report.elapsed_s,
            "phases_s": report.phases,
            "rejected_fraction": report.rejected_fraction,
            "device": report.device,
        }));
    }
    let _ = std::fs::remove_dir(&out_dir);
    Ok(json!({"frames": inputs.len(), "results": rows}))
}

fn tempfile_dir() -> pipeline::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("astroworker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| PipelineError::Directory {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    Ok(dir)
}
