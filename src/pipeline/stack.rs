//! `fits.stack`: calibrate, normalise, reject and combine N frames — streamed by row bands so
//! that memory does not grow with N — then cosmetic correction, debayer, FITS and preview.
//!
//! ```text
//! pass 1 (only for normalisation or noise weights): per frame, whole frame read, calibrated,
//!         location/scale per channel measured, dropped
//! pass 2: per plane, per band of rows: the band of every frame is read (frames in parallel,
//!         the next band while the current one is stacked) and handed to the compute device,
//!         which calibrates, normalises and stacks it into the output rows
//! then:   hot/cold pixels of the master dark corrected in the stacked mosaic (without
//!         registration they sit at the same sensor position in every frame), debayer,
//!         header, write (temporary name + rename), preview
//! ```
//!
//! Memory: two band buffers of `N × rows × width` f32 (rows chosen from the memory budget),
//! the output image, and the masters. For 100 Seestar frames (1080 × 1920) with the default
//! 64 MiB budget that is ≈ 128 MiB of bands + 8 MiB output + 8 MiB per master. A sum or mean
//! of uncalibrated uint16 frames skips the band buffers: it adds the frames' rows straight
//! from the files into integer sums (`sum_u16`).

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{Array3, ArrayViewMut2, Axis, s};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use super::frames::{FrameSet, MAX_U16_SUM_FRAMES, bayer_pattern};
use super::jobs::{self, MasterFiles};
use super::{PipelineError, Progress, Result};
use crate::compute::{BandCalibration, BandJob, ChannelMap, Compute};
use crate::fits::OutputType;
use crate::science::calibrate;
use crate::science::cfa::DebayerMethod;
use crate::science::normalize::{self, Coefficients, Normalization};
use crate::science::stack::Method;
use crate::science::stats::{self, Estimate, Estimator};
use crate::science::stretch::Stretch;

/// Default memory for one band buffer (two are used: one read while the other is stacked).
pub const DEFAULT_MEMORY_BUDGET: usize = 64 << 20;

/// Frame weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    None,
    /// 1 / σ² of each normalised frame's background noise.
    Noise,
    /// Each frame's exposure time.
    Exposure,
    /// 1 / (σ²·FWHM²): background noise and star sharpness, measured while registering
    /// (`register=True` only).
    Quality,
}

/// What to do with CFA data after stacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebayerChoice {
    /// Keep the mosaic.
    None,
    /// RCD (Siril's default) when the frames declare a Bayer pattern.
    Auto,
    Method(DebayerMethod),
}

pub fn parse_method(
    name: &str,
    low: f32,
    high: f32,
    iterations: u32,
    p_low: f32,
    p_high: f32,
) -> Result<Method> {
    let bad = |what: &str| Err(PipelineError::Invalid(what.to_string()));
    if !(low.is_finite() && high.is_finite() && low > 0.0 && high > 0.0) {
        return bad("sigma_low and sigma_high must be positive numbers");
    }
    if iterations == 0 {
        return bad("iterations must be at least 1");
    }
    if name.trim().eq_ignore_ascii_case("percentile") {
        if !(p_low.is_finite() && p_high.is_finite() && p_low > 0.0 && p_high > 0.0) {
            return bad("percentile_low and percentile_high must be positive fractions");
        }
        return Ok(Method::Percentile {
            low: p_low,
            high: p_high,
        });
    }
    Method::parse(name, low, high, iterations).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "method must be sum, mean, median, sigma_clip, winsorized, mad_clip, percentile or \
             linear_fit, not {name:?}"
        ))
    })
}

pub fn parse_normalization(s: &str) -> Result<Normalization> {
    Normalization::parse(s).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "normalize must be none, additive, multiplicative, additive_scale or \
             multiplicative_scale, not {s:?}"
        ))
    })
}

pub fn parse_weights(s: &str) -> Result<Weights> {
    match s.trim().to_ascii_lowercase().as_str() {
        "none" => Ok(Weights::None),
        "noise" => Ok(Weights::Noise),
        "exposure" => Ok(Weights::Exposure),
        "quality" => Ok(Weights::Quality),
        other => Err(PipelineError::Invalid(format!(
            "weights must be none, noise, exposure or quality, not {other:?}"
        ))),
    }
}

pub fn parse_debayer_choice(s: &str) -> Result<DebayerChoice> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" | "true" => Ok(DebayerChoice::Auto),
        "none" | "false" | "no" => Ok(DebayerChoice::None),
        other => jobs::parse_debayer_method(other)
            .map(DebayerChoice::Method)
            .map_err(|_| {
                PipelineError::Invalid(format!(
                    "debayer must be auto, none, bilinear, vng, rcd or superpixel, not {s:?}"
                ))
            }),
    }
}

pub struct StackParams {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub method: Method,
    pub normalize: Normalization,
    pub weights: Weights,
    pub masters: MasterFiles,
    pub debayer: DebayerChoice,
    pub dtype: OutputType,
    pub preview: Option<PathBuf>,
    /// Bytes for one band buffer.
    pub memory_budget: usize,
}

/// Seconds spent per phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    pub open_s: f64,
    pub measure_s: f64,
    /// Reading bands; for the fused uint16 sum (`sum_u16`), reading and summing together.
    pub read_s: f64,
    pub stack_s: f64,
    pub debayer_s: f64,
    pub write_s: f64,
}

#[derive(Debug, Clone)]
pub struct StackReport {
    pub output: PathBuf,
    pub preview: Option<PathBuf>,
    pub frames_used: usize,
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub method: String,
    pub rejected_fraction: f64,
    pub device: String,
    pub elapsed_s: f64,
    pub phases: Phases,
}

impl StackReport {
    /// The `fits.stack` task result.
    pub fn to_json(&self) -> Value {
        json!({
            "output": self.output.display().to_string(),
            "preview": self.preview.as_ref().map(|p| p.display().to_string()),
            "frames_used": self.frames_used,
            "width": self.width,
            "height": self.height,
            "channels": self.channels,
            "method": self.method,
            "rejected_fraction": self.rejected_fraction,
            "device": self.device,
            "elapsed_s": self.elapsed_s,
        })
    }
}

/// Per-frame facts from pass 1.
struct FrameMeasure {
    estimates: [Estimate; 3],
}

pub fn stack(
    p: &StackParams,
    compute: &dyn Compute,
    progress: &dyn Progress,
) -> Result<StackReport> {
    if p.weights == Weights::Quality {
        return Err(PipelineError::Invalid(
            "weights=quality uses the stars' FWHM, which only registration measures: stack \
             with register=True"
                .into(),
        ));
    }
    let started = Instant::now();
    let mut phases = Phases::default();
    let t = Instant::now();
    let frames = FrameSet::open(&p.inputs)?;
    let (w, h, planes, n) = (frames.width, frames.height, frames.channels, frames.len());
    let pattern = bayer_pattern(&frames.frames[0].info);
    let loaded = jobs::load_masters(&p.masters, w, h, pattern.is_some())?;
    if planes != 1 && !loaded.is_empty() {
        return Err(PipelineError::Invalid(
            "calibration frames apply to 2-D (mono or CFA) lights, not colour cubes".into(),
        ));
    }
    let options = loaded.options(p.masters.dark_scaling, &frames);
    let channel_map = |plane: usize| match (planes, pattern) {
        (1, Some(pat)) => ChannelMap::Cfa(pat),
        (1, None) => ChannelMap::Mono,
        _ => ChannelMap::Plane(plane),
    };
    let channel_count = if pattern.is_some() || planes > 1 {
        3
    } else {
        1
    };
    phases.open_s = t.elapsed().as_secs_f64();

    let rows = jobs::band_rows(n, w, h, p.memory_budget);
    let bands_per_plane = h.div_ceil(rows);
    let needs_measure = p.normalize != Normalization::None || p.weights == Weights::Noise;
    let total = (if needs_measure { n } else { 0 } + planes * bands_per_plane + 2) as u64;
    let mut done = 0u64;

    // Pass 1: per-frame location and scale per channel.
    let t = Instant::now();
    let measures: Option<Vec<FrameMeasure>> = if needs_measure {
        let counter = std::sync::atomic::AtomicU64::new(0);
        let m = frames
            .frames
            .par_iter()
            .zip(&options)
            .map(|(frame, opts)| {
                progress.checkpoint()?;
                let mut data = frame.read_all()?;
                if !loaded.is_empty() {
                    calibrate::apply(data.index_axis_mut(Axis(0), 0), &loaded.masters, opts)?;
                }
                let estimates = measure(&data, channel_map, channel_count);
                let d = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                progress.report(d, total, "measuring frames");
                Ok(FrameMeasure { estimates })
            })
            .collect::<Result<Vec<_>>>()?;
        done = n as u64;
        Some(m)
    } else {
        None
    };
    phases.measure_s = t.elapsed().as_secs_f64();

    let coefficients: Vec<[Coefficients; 3]> = match &measures {
        Some(m) if p.normalize != Normalization::None => m
            .iter()
            .map(|f| {
                std::array::from_fn(|c| {
                    normalize::coefficients(p.normalize, f.estimates[c], m[0].estimates[c])
                })
            })
            .collect(),
        _ => vec![[Coefficients::IDENTITY; 3]; n],
    };
    let weights: Option<Vec<f32>> = match p.weights {
        Weights::None => None,
        Weights::Exposure => Some(super::frames::exposure_weights(frames.frames.iter())?),
        Weights::Noise => Some(noise_weights(
            measures.as_deref().expect("measured for noise weights"),
            &coefficients,
            channel_count,
        )),
        Weights::Quality => unreachable!("refused before the first pass"),
    };

    // Pass 2: bands.
    let mut out = Array3::<f32>::zeros((planes, h, w));
    let direct = matches!(p.method, Method::Sum | Method::Mean)
        && loaded.is_empty()
        && weights.is_none()
        && p.normalize == Normalization::None
        && n <= MAX_U16_SUM_FRAMES
        && frames.all_u16();
    let rejected = if direct {
        let t = Instant::now();
        for plane in 0..planes {
            progress.checkpoint()?;
            sum_u16(&frames, plane, p.method, out.index_axis_mut(Axis(0), plane))?;
            done += bands_per_plane as u64;
            progress.report(done, total, "stacking");
        }
        phases.read_s = t.elapsed().as_secs_f64();
        0
    } else {
        let mut stacking = BandStacking {
            frames: &frames,
            rows,
            calibration: (!loaded.is_empty()).then(|| BandCalibration {
                masters: &loaded.masters,
                options: &options,
            }),
            coefficients: &coefficients,
            method: p.method,
            weights: weights.as_deref(),
            phases: &mut phases,
        };
        let mut rejected = 0;
        for plane in 0..planes {
            rejected += stacking.plane(
                plane,
                channel_map(plane),
                compute,
                out.index_axis_mut(Axis(0), plane),
                &mut |bands| {
                    done += bands;
                    progress.report(done, total, "stacking");
                    progress.checkpoint()
                },
            )?;
        }
        rejected
    };

    let mut history = loaded.history.clone();
    if let (Some(defects), 1) = (&loaded.defects, planes) {
        let fixed =
            calibrate::correct_defects(out.index_axis_mut(Axis(0), 0), defects, pattern.is_some())?;
        history.push(format!(
            "cosmetic: {fixed} hot/cold pixels of the master dark replaced in the stack"
        ));
    }

    // Debayer.
    let t = Instant::now();
    let debayer_method = match (p.debayer, pattern, planes) {
        (DebayerChoice::None, _, _) | (_, None, _) => None,
        (_, Some(_), p) if p != 1 => None,
        (DebayerChoice::Auto, Some(_), _) => Some(DebayerMethod::Rcd),
        (DebayerChoice::Method(m), Some(_), _) => Some(m),
    };
    if let (DebayerChoice::Method(_), None) = (p.debayer, pattern) {
        return Err(PipelineError::Invalid(
            "debayer was requested but the frames declare no Bayer pattern (BAYERPAT)".into(),
        ));
    }
    let image = match (debayer_method, pattern) {
        (Some(method), Some(pat)) => {
            progress.report(done, total, "debayering");
            history.push(format!(
                "debayer: {} with pattern {}",
                jobs::method_name(method),
                pat.name()
            ));
            compute.debayer(out.index_axis(Axis(0), 0), pat, method)?
        }
        _ => out,
    };
    phases.debayer_s = t.elapsed().as_secs_f64();
    done += 1;

    // Header and files.
    let t = Instant::now();
    progress.report(done, total, "writing");
    let still_cfa = debayer_method.is_none() && pattern.is_some();
    let header = stack_header(p, &frames, still_cfa, &history, &weights);
    jobs::write_output(&p.output, image.view(), p.dtype, &header)?;
    if let Some(preview) = &p.preview {
        let preview_data = match (still_cfa, pattern) {
            (true, Some(pat)) => crate::science::cfa::debayer(
                image.index_axis(Axis(0), 0),
                pat,
                DebayerMethod::Bilinear,
            ),
            _ => image.clone(),
        };
        jobs::write_stretched(preview, preview_data.view(), Stretch::Auto)?;
    }
    phases.write_s = t.elapsed().as_secs_f64();
    progress.report(total, total, "done");

    let samples = (n * planes * h * w) as f64;
    Ok(StackReport {
        output: p.output.clone(),
        preview: p.preview.clone(),
        frames_used: n,
        width: image.dim().2,
        height: image.dim().1,
        channels: image.dim().0,
        method: p.method.name().to_string(),
        rejected_fraction: rejected as f64 / samples,
        device: compute.device(),
        elapsed_s: started.elapsed().as_secs_f64(),
        phases,
    })
}

/// Pass 2 of the general case: the same band of every frame read into a band buffer (the
/// next band while the compute device stacks the current one).
struct BandStacking<'a> {
    frames: &'a FrameSet,
    rows: usize,
    calibration: Option<BandCalibration<'a>>,
    coefficients: &'a [[Coefficients; 3]],
    method: Method,
    weights: Option<&'a [f32]>,
    phases: &'a mut Phases,
}

impl BandStacking<'_> {
    /// Stacks plane `plane` into `out`; `band_done(1)` after each band (it may cancel).
    /// Returns the number of rejected samples.
    fn plane(
        &mut self,
        plane: usize,
        channels: ChannelMap,
        compute: &dyn Compute,
        mut out: ArrayViewMut2<f32>,
        band_done: &mut dyn FnMut(u64) -> Result<()>,
    ) -> Result<u64> {
        let (n, h, w) = (self.frames.len(), out.dim().0, out.dim().1);
        let rows = self.rows;
        let mut current = Array3::<f32>::zeros((n, rows, w));
        let mut next = Array3::<f32>::zeros((n, rows, w));
        let starts: Vec<usize> = (0..h).step_by(rows).collect();
        let mut rejected = 0;
        let t = Instant::now();
        read_band(self.frames, plane, starts[0], rows, h, &mut current)?;
        self.phases.read_s += t.elapsed().as_secs_f64();
        for (k, &row0) in starts.iter().enumerate() {
            let band_rows = rows.min(h - row0);
            let following = starts.get(k + 1).copied();
            let job = BandJob {
                frames: current.slice_mut(s![.., ..band_rows, ..]),
                row0,
                calibration: self.calibration,
                coefficients: self.coefficients,
                channels,
                method: self.method,
                weights: self.weights,
            };
            let target = out.slice_mut(s![row0..row0 + band_rows, ..]);
            let frames = self.frames;
            let next_buffer = &mut next;
            let (stacked, read) = rayon::join(
                || {
                    let t = Instant::now();
                    compute
                        .stack_band(job, target)
                        .map(|r| (r, t.elapsed().as_secs_f64()))
                },
                || {
                    let t = Instant::now();
                    following
                        .map(|next_row| read_band(frames, plane, next_row, rows, h, next_buffer))
                        .transpose()
                        .map(|_| t.elapsed().as_secs_f64())
                },
            );
            let (r, secs) = stacked?;
            rejected += r;
            self.phases.stack_s += secs;
            self.phases.read_s += read?;
            std::mem::swap(&mut current, &mut next);
            band_done(1)?;
        }
        Ok(rejected)
    }
}

/// Rows summed per task by [`sum_u16`]: the sums and one frame's rows stay in cache.
const SUM_ROWS: usize = 32;

/// Sum or mean of unsigned 16-bit frames with nothing to apply first: every sample is finite,
/// so the sum is exact in integers and the mean is `sum / N` — the values the general path
/// computes, in one pass over the files with no band buffer.
fn sum_u16(
    frames: &FrameSet,
    plane: usize,
    method: Method,
    mut out: ArrayViewMut2<f32>,
) -> Result<()> {
    let n = frames.len() as f64;
    let w = out.dim().1;
    out.axis_chunks_iter_mut(Axis(0), SUM_ROWS)
        .into_par_iter()
        .enumerate()
        .map(|(k, rows)| (rows, k * SUM_ROWS))
        .try_for_each_init(
            || (vec![0u32; SUM_ROWS * w], vec![0u16; SUM_ROWS * w]),
            |(sums, scratch), (mut rows, row0)| {
                let len = rows.len();
                debug_assert_eq!(len % w, 0);
                frames.sum_rows_u16(plane, row0, &mut sums[..len], &mut scratch[..len])?;
                for (o, &s) in rows.iter_mut().zip(sums.iter()) {
                    *o = match method {
                        Method::Sum => s as f32,
                        _ => (f64::from(s) / n) as f32,
                    };
                }
                Ok(())
            },
        )
}

/// Reads the band starting at `row0` (clipped to the image) into the front of `buffer`.
fn read_band(
    frames: &FrameSet,
    plane: usize,
    row0: usize,
    rows: usize,
    height: usize,
    buffer: &mut Array3<f32>,
) -> Result<()> {
    let band_rows = rows.min(height - row0);
    frames.read_band(plane, row0, buffer.slice_mut(s![.., ..band_rows, ..]))
}

/// Location and scale per channel (R, G, B for CFA mosaics and cubes; one for mono).
fn measure(
    data: &Array3<f32>,
    channel_map: impl Fn(usize) -> ChannelMap,
    channels: usize,
) -> [Estimate; 3] {
    let (planes, h, w) = data.dim();
    let mut per_channel: [Vec<f32>; 3] = Default::default();
    for plane in 0..planes {
        let map = channel_map(plane);
        for y in 0..h {
            for x in 0..w {
                per_channel[map.channel(x, y)].push(data[(plane, y, x)]);
            }
        }
    }
    let mut out = [Estimate {
        location: 0.0,
        scale: 0.0,
    }; 3];
    for c in 0..channels {
        out[c] = stats::estimate(&per_channel[c], Estimator::MedianMad);
    }
    if channels == 1 {
        out = [out[0]; 3];
    }
    out
}

/// 1/σ² with σ the frame's noise after normalisation, averaged over channels.
fn noise_weights(
    measures: &[FrameMeasure],
    coefficients: &[[Coefficients; 3]],
    channels: usize,
) -> Vec<f32> {
    measures
        .iter()
        .zip(coefficients)
        .map(|(m, c)| {
            let sigma: f64 = (0..channels)
                .map(|k| m.estimates[k].scale * f64::from(c[k].factor.abs()))
                .sum::<f64>()
                / channels as f64;
            if sigma > 0.0 {
                (1.0 / (sigma * sigma)) as f32
            } else {
                1.0
            }
        })
        .collect()
}

fn stack_header(
    p: &StackParams,
    frames: &FrameSet,
    cfa: bool,
    history: &[String],
    weights: &Option<Vec<f32>>,
) -> crate::fits::Header {
    let mut h = jobs::output_header(&frames.frames[0].info.header, cfa);
    let total: f64 = frames.frames.iter().filter_map(|f| f.exposure()).sum();
    jobs::set_stack_totals(&mut h, total, frames.len());
    for line in history {
        h.push_history(line);
    }
    h.push_history(&format!(
        "normalisation: {} (median, MAD per channel; reference frame 1)",
        p.normalize.name()
    ));
    h.push_history(&format!(
        "stack: {} of {} frames, {}",
        p.method.name(),
        frames.len(),
        describe(&p.method)
    ));
    if let Some(w) = weights {
        h.push_history(&format!("weights: {:?} ({} frames)", p.weights, w.len()).to_lowercase());
    }
    h
}

fn describe(m: &Method) -> String {
    match m {
        Method::SigmaClip {
            low,
            high,
            iterations,
        }
        | Method::Winsorized {
            low,
            high,
            iterations,
        }
        | Method::MadClip {
            low,
            high,
            iterations,
        }
        | Method::LinearFit {
            low,
            high,
            iterations,
        } => {
            format!("sigma_low={low} sigma_high={high} iterations={iterations}")
        }
        Method::Percentile { low, high } => format!("percentile_low={low} percentile_high={high}"),
        _ => "no rejection".into(),
    }
}
