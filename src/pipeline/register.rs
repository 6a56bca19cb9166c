//! Registration: stars in every frame, each frame matched to a reference, and either
//! registered frames written out or a registered stack computed band by band.
//!
//! The registered stack never holds whole frames: for each band of output rows (in the
//! reference's geometry) it reads, from every frame, only the source rows that band maps
//! onto (plus a margin for the debayer and the resampling kernel), debayers them, resamples
//! them into the band, and stacks the band with the compute device. Pixels a frame does not
//! cover are NaN there, so rejection sees them as missing rather than black.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::{Array2, Array3, Axis, s};
use rayon::prelude::*;
use serde_json::{Value, json};

use super::frames::{Frame, bayer_pattern};
use super::stack::Weights;
use super::{PipelineError, Progress, Result, jobs};
use crate::compute::{BandJob, ChannelMap, Compute};
use crate::fits::OutputType;
use crate::science::align::{self, Model, apply, invert, matmul};
use crate::science::cfa::DebayerMethod;
use crate::science::normalize::Coefficients;
use crate::science::stack::Method;
use crate::science::stars::{self, DetectParams, Star};
use crate::science::warp::{Interpolation, Transform, warp_band};

/// Rows read above and below what a band maps onto: RCD's reach (within it of the rows read,
/// it falls back to bilinear) plus Lanczos-3's.
const MARGIN: usize = crate::science::cfa::RCD_RADIUS + 3;

/// The output geometry of registered frames and stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// The reference frame's pixels.
    #[default]
    Reference,
    /// Every pixel any used frame covers.
    Union,
    /// Only pixels every used frame covers.
    Intersection,
}

impl Framing {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reference" => Some(Self::Reference),
            "union" => Some(Self::Union),
            "intersection" => Some(Self::Intersection),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Reference => "reference",
            Self::Union => "union",
            Self::Intersection => "intersection",
        }
    }
}

/// Where the output pixels lie: reference coordinates of output pixel (0, 0), and the size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Canvas {
    pub origin: (f64, f64),
    pub height: usize,
    pub width: usize,
}

impl Canvas {
    /// Output → frame, from a frame's reference → frame transform.
    fn output_to_frame(&self, inverse: &Transform) -> Transform {
        let (ox, oy) = self.origin;
        matmul(inverse, &[[1.0, 0.0, ox], [0.0, 1.0, oy], [0.0, 0.0, 1.0]])
    }
}

#[derive(Debug, Clone)]
pub struct RegisterParams {
    pub inputs: Vec<PathBuf>,
    /// Where registered frames go (`None`: only compute transforms).
    pub output_dir: Option<PathBuf>,
    /// The reference frame (`None`: the one with most stars, then the smallest FWHM).
    pub reference: Option<PathBuf>,
    pub model: Model,
    pub interpolation: Interpolation,
    /// Fraction of the frames with the worst FWHM to drop (0 keeps all).
    pub reject_worst: f64,
    pub framing: Framing,
}

/// One frame's registration.
#[derive(Debug, Clone)]
pub struct FrameRegistration {
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    pub stars: usize,
    pub fwhm: f64,
    pub roundness: f64,
    /// Background noise σ per pixel (ADU).
    pub noise: f64,
    pub matched: Option<usize>,
    /// Frame → reference.
    pub transform: Option<Transform>,
    pub rms_px: Option<f64>,
    /// Why it is not used (no match, too few stars, rejected as one of the worst).
    pub dropped: Option<String>,
}

impl FrameRegistration {
    pub fn to_json(&self) -> Value {
        json!({
            "input": self.input.display().to_string(),
            "output": self.output.as_ref().map(|p| p.display().to_string()),
            "stars": self.stars,
            "fwhm": finite(self.fwhm),
            "roundness": finite(self.roundness),
            "noise": finite(self.noise),
            "matched": self.matched,
            "transform": self.transform,
            "rms_px": self.rms_px.and_then(finite),
            "dropped": self.dropped,
        })
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

#[derive(Debug, Clone)]
pub struct RegisterReport {
    pub reference: PathBuf,
    pub frames: Vec<FrameRegistration>,
    pub model: Model,
    pub interpolation: Interpolation,
    pub framing: Framing,
    /// Frame size (rows, columns), the same for every frame.
    pub shape: (usize, usize),
    /// Wall time of star detection (all frames) and of matching, seconds.
    pub detect_s: f64,
    pub match_s: f64,
}

impl RegisterReport {
    /// The `fits.register` result.
    pub fn to_json(&self) -> Value {
        let canvas = self.canvas().ok();
        json!({
            "reference": self.reference.display().to_string(),
            "transform": self.model.name(),
            "interpolation": self.interpolation.name(),
            "framing": self.framing.name(),
            "origin": canvas.map(|c| [c.origin.0, c.origin.1]),
            "frames": self.frames.iter().map(FrameRegistration::to_json).collect::<Vec<_>>(),
            "dropped": self.dropped().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        })
    }

    pub fn dropped(&self) -> Vec<PathBuf> {
        self.frames
            .iter()
            .filter(|f| f.dropped.is_some())
            .map(|f| f.input.clone())
            .collect()
    }

    /// The output canvas of the used frames under this report's framing.
    pub fn canvas(&self) -> Result<Canvas> {
        let (h, w) = self.shape;
        if self.framing == Framing::Reference {
            return Ok(Canvas {
                origin: (0.0, 0.0),
                height: h,
                width: w,
            });
        }
        let (right, bottom) = ((w - 1) as f64, (h - 1) as f64);
        // [left, top, right, bottom] of the union, or of the intersection.
        let mut bounds = match self.framing {
            Framing::Union => [
                f64::INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NEG_INFINITY,
            ],
            _ => [
                f64::NEG_INFINITY,
                f64::NEG_INFINITY,
                f64::INFINITY,
                f64::INFINITY,
            ],
        };
        for (_, t) in self.used() {
            let [tl, tr, bl, br] = [(0.0, 0.0), (right, 0.0), (0.0, bottom), (right, bottom)]
                .map(|(x, y)| apply(&t, x, y));
            if self.framing == Framing::Union {
                for (x, y) in [tl, tr, bl, br] {
                    bounds = [
                        bounds[0].min(x),
                        bounds[1].min(y),
                        bounds[2].max(x),
                        bounds[3].max(y),
                    ];
                }
            } else {
                // The axis-aligned box inside the frame's (nearly axis-aligned) footprint.
                bounds = [
                    bounds[0].max(tl.0.max(bl.0)),
                    bounds[1].max(tl.1.max(tr.1)),
                    bounds[2].min(tr.0.min(br.0)),
                    bounds[3].min(bl.1.min(br.1)),
                ];
            }
        }
        let [left, top, right, bottom] = match self.framing {
            Framing::Union => [
                bounds[0].floor(),
                bounds[1].floor(),
                bounds[2].ceil(),
                bounds[3].ceil(),
            ],
            _ => [
                bounds[0].ceil(),
                bounds[1].ceil(),
                bounds[2].floor(),
                bounds[3].floor(),
            ],
        };
        if !(right >= left && bottom >= top) || (right - left).max(bottom - top) > 1e6 {
            return Err(PipelineError::Invalid(format!(
                "the {} of the registered frames is empty or unbounded",
                self.framing.name()
            )));
        }
        Ok(Canvas {
            origin: (left, top),
            height: (bottom - top) as usize + 1,
            width: (right - left) as usize + 1,
        })
    }

    /// The frames to stack, with their frame → reference transforms.
    pub fn used(&self) -> Vec<(&FrameRegistration, Transform)> {
        self.frames
            .iter()
            .filter(|f| f.dropped.is_none())
            .filter_map(|f| f.transform.map(|t| (f, t)))
            .collect()
    }
}

/// What detection found in one frame.
struct Detected {
    /// In frame pixels.
    stars: Vec<Star>,
    /// (rows, columns).
    shape: (usize, usize),
    /// Background noise σ per pixel, from the luminance (2×2 sums for CFA frames).
    noise: f64,
}

/// Stars and background noise of one frame.
fn frame_stars(path: &Path) -> Result<Detected> {
    let frame = Frame::open(path)?;
    let data = frame.read_all()?;
    let pattern = bayer_pattern(&frame.info);
    let lum = stars::luminance(data.view(), pattern);
    let saturation = data.iter().copied().fold(f32::MIN, f32::max) as f64 * 0.98;
    let params = DetectParams {
        saturation: saturation.max(1.0) * lum.scale * lum.scale,
        ..DetectParams::default()
    };
    let (mut found, noise) = stars::detect_with_noise(lum.image.view(), &params);
    stars::to_frame(&mut found, &lum);
    Ok(Detected {
        stars: found,
        shape: (data.dim().1, data.dim().2),
        // A sum of scale² pixels has scale times one pixel's noise.
        noise: noise / lum.scale,
    })
}

/// Detects, picks the reference and matches every frame to it.
pub fn register(p: &RegisterParams, progress: &dyn Progress) -> Result<RegisterReport> {
    if p.inputs.is_empty() {
        return Err(PipelineError::Invalid("no input frames".into()));
    }
    let n = p.inputs.len();
    let total = (2 * n) as u64 + if p.output_dir.is_some() { n as u64 } else { 0 };
    let counter = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let detected: Vec<Detected> = p
        .inputs
        .par_iter()
        .map(|path| {
            progress.checkpoint()?;
            let r = frame_stars(path);
            let d = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            progress.report(d, total, "detecting stars");
            r
        })
        .collect::<Result<_>>()?;
    let shape = detected[0].shape;
    if let Some((i, _)) = detected.iter().enumerate().find(|(_, d)| d.shape != shape) {
        return Err(PipelineError::Invalid(format!(
            "{} is {}×{}, the first frame {}×{}",
            p.inputs[i].display(),
            detected[i].shape.1,
            detected[i].shape.0,
            shape.1,
            shape.0
        )));
    }
    let reference = match &p.reference {
        Some(r) => p.inputs.iter().position(|i| i == r).ok_or_else(|| {
            PipelineError::Invalid(format!(
                "reference {} is not one of the inputs",
                r.display()
            ))
        })?,
        None => (0..n)
            .max_by(|&a, &b| {
                let (sa, sb) = (&detected[a].stars, &detected[b].stars);
                sa.len()
                    .cmp(&sb.len())
                    .then(stars::median_fwhm(sb).total_cmp(&stars::median_fwhm(sa)))
            })
            .expect("at least one frame"),
    };
    let detect_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let ref_stars = &detected[reference].stars;
    let mut frames: Vec<FrameRegistration> = detected
        .par_iter()
        .enumerate()
        .map(|(i, detected)| {
            let found = &detected.stars;
            let roundness = {
                let mut r: Vec<f32> = found.iter().map(|s| s.roundness as f32).collect();
                if r.is_empty() {
                    f64::NAN
                } else {
                    f64::from(crate::science::stats::median_in_place(&mut r))
                }
            };
            let alignment = if i == reference {
                Some(align::Alignment {
                    transform: crate::science::warp::IDENTITY,
                    matched: found.len(),
                    rms_px: 0.0,
                })
            } else {
                align::align(found, ref_stars, p.model)
            };
            FrameRegistration {
                input: p.inputs[i].clone(),
                output: None,
                stars: found.len(),
                fwhm: stars::median_fwhm(found),
                roundness,
                noise: detected.noise,
                matched: alignment.as_ref().map(|a| a.matched),
                transform: alignment.as_ref().map(|a| a.transform),
                rms_px: alignment.as_ref().map(|a| a.rms_px),
                dropped: alignment.is_none().then(|| {
                    format!(
                        "no match with the reference ({} stars, {} needed in common)",
                        found.len(),
                        align::MIN_MATCHES
                    )
                }),
            }
        })
        .collect();
    progress.report(2 * n as u64, total, "matching");
    reject_worst(&mut frames, reference, p.reject_worst);
    for f in frames.iter().filter(|f| f.dropped.is_some()) {
        tracing::warn!(
            "{}: dropped: {}",
            f.input.display(),
            f.dropped.as_deref().unwrap_or("")
        );
    }
    let mut report = RegisterReport {
        reference: p.inputs[reference].clone(),
        frames,
        model: p.model,
        interpolation: p.interpolation,
        framing: p.framing,
        shape,
        detect_s,
        match_s: started.elapsed().as_secs_f64(),
    };
    if let Some(dir) = &p.output_dir {
        write_registered(&mut report, dir, progress, 2 * n as u64, total)?;
    }
    Ok(report)
}

/// Drops the `fraction` of matched frames with the largest FWHM (never the reference).
fn reject_worst(frames: &mut [FrameRegistration], reference: usize, fraction: f64) {
    if fraction.is_nan() || fraction <= 0.0 {
        return;
    }
    let mut order: Vec<usize> = (0..frames.len())
        .filter(|&i| i != reference && frames[i].dropped.is_none())
        .collect();
    order.sort_by(|&a, &b| frames[b].fwhm.total_cmp(&frames[a].fwhm));
    let count = ((frames.len() as f64) * fraction.min(1.0)).round() as usize;
    for &i in order.iter().take(count) {
        frames[i].dropped = Some(format!(
            "rejected as one of the worst {:.0}% (FWHM {:.2} px)",
            fraction * 100.0,
            frames[i].fwhm
        ));
    }
}

/// Writes each used frame debayered and resampled onto the canvas as float32 FITS.
fn write_registered(
    report: &mut RegisterReport,
    dir: &Path,
    progress: &dyn Progress,
    mut done: u64,
    total: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| PipelineError::Directory {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let interpolation = report.interpolation;
    let canvas = report.canvas()?;
    for f in report.frames.iter_mut().filter(|f| f.dropped.is_none()) {
        progress.checkpoint()?;
        let Some(t) = f.transform else { continue };
        let frame = Frame::open(&f.input)?;
        let sources = band_sources(&frame, 0, frame.info.height(), DebayerMethod::Rcd)?;
        let inverse =
            invert(&t).ok_or_else(|| PipelineError::Invalid("singular transform".into()))?;
        let mut out = Array3::<f32>::zeros((sources.dim().0, canvas.height, canvas.width));
        let m = canvas.output_to_frame(&inverse);
        warp_band(sources.view(), 0, &m, interpolation, 0, out.view_mut());
        let mut header = jobs::output_header(&frame.info.header, false);
        header.push_history(&format!(
            "register: {} onto {}, {} ({} stars matched, rms {:.3} px)",
            report.model.name(),
            report.reference.display(),
            interpolation.name(),
            f.matched.unwrap_or(0),
            f.rms_px.unwrap_or(f64::NAN)
        ));
        let stem = f
            .input
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let path = dir.join(format!("{stem}_registered.fits"));
        jobs::write_output(&path, out.view(), OutputType::Float32, &header)?;
        f.output = Some(path);
        done += 1;
        progress.report(done, total, "resampling");
    }
    Ok(())
}

/// Rows `row0 .. row1` of a frame as colour planes: debayered by `debayer` when the frame is
/// a CFA mosaic (starting on an even row, so the pattern is the file's), as they are
/// otherwise.
fn band_sources(
    frame: &Frame,
    row0: usize,
    row1: usize,
    debayer: DebayerMethod,
) -> Result<Array3<f32>> {
    let (w, planes) = (frame.info.width(), frame.info.channels());
    let rows = row1 - row0;
    let mut raw = Array3::<f32>::zeros((planes, rows, w));
    for (c, mut plane) in raw.axis_iter_mut(Axis(0)).enumerate() {
        frame.read_rows(c, row0, plane.as_slice_mut().expect("contiguous"))?;
    }
    match (planes, bayer_pattern(&frame.info)) {
        (1, Some(pattern)) => Ok(crate::science::cfa::debayer(
            raw.index_axis(Axis(0), 0),
            pattern.shifted(0, row0 % 2),
            debayer,
        )),
        _ => Ok(raw),
    }
}

/// The frame rows `[first, last)` that output rows `[y0, y1)` of width `w` map onto, in a
/// frame of `h` rows.
fn source_rows(inverse: &Transform, y0: usize, y1: usize, w: usize, h: usize) -> (usize, usize) {
    let corners = [
        (0.0, y0 as f64),
        ((w - 1) as f64, y0 as f64),
        (0.0, (y1 - 1) as f64),
        ((w - 1) as f64, (y1 - 1) as f64),
    ];
    let ys: Vec<f64> = corners
        .iter()
        .map(|&(x, y)| apply(inverse, x, y).1)
        .collect();
    let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).floor() as i64 - MARGIN as i64;
    let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max).ceil() as i64 + MARGIN as i64 + 1;
    let lo = (lo.max(0) as usize) & !1;
    let hi = (hi.max(0) as usize).min(h);
    if lo >= hi { (0, 0) } else { (lo, hi) }
}

/// A registered stack: the `(planes, H, W)` image, its header and the rejected samples.
pub struct RegisteredStack {
    pub image: Array3<f32>,
    pub header: crate::fits::Header,
    pub rejected: u64,
    /// Time spent reading and debayering source rows and resampling them (summed over the
    /// frames, which are processed in parallel: thread time, not elapsed), and stacking bands.
    pub read: Duration,
    pub warp: Duration,
    pub stack: Duration,
}

/// Stacks the used frames of `report` onto the reference, band by band, debayering CFA
/// frames with `debayer` (a full-resolution method: CFA frames can't be registered as
/// mosaics or at half resolution).
pub fn stack_registered(
    report: &RegisterReport,
    method: Method,
    weights: Weights,
    debayer: Option<DebayerMethod>,
    compute: &dyn Compute,
    memory_budget: usize,
    progress: &dyn Progress,
) -> Result<RegisteredStack> {
    let used = report.used();
    let canvas = report.canvas()?;
    // Each frame with its output → frame transform.
    let frames: Vec<(Frame, Transform)> = used
        .iter()
        .map(|(f, t)| {
            let inverse =
                invert(t).ok_or_else(|| PipelineError::Invalid("singular transform".into()))?;
            Ok((Frame::open(&f.input)?, canvas.output_to_frame(&inverse)))
        })
        .collect::<Result<_>>()?;
    let first = &frames[0].0.info;
    let frame_h = first.height();
    let (h, w) = (canvas.height, canvas.width);
    let cfa = first.channels() == 1 && bayer_pattern(first).is_some();
    let planes = if cfa { 3 } else { first.channels() };
    let debayer = match debayer {
        Some(m) if m != DebayerMethod::Superpixel => m,
        // Not used: nothing to debayer.
        _ if !cfa => DebayerMethod::Rcd,
        _ => {
            return Err(PipelineError::Invalid(
                "registration resamples full-resolution colour planes: debayer must be auto, \
                 bilinear, vng or rcd for CFA frames"
                    .into(),
            ));
        }
    };
    let n = frames.len();
    // 16-bit frames are resampled to whole ADU, as Siril keeps registered 16-bit frames: the
    // rounding adds 0.29 ADU RMS to each sample (a Seestar sub's noise is ~50 ADU), and the
    // stack can take its exact integer path.
    let whole_adu = frames.iter().all(|(f, _)| f.stores_u16());
    let rows = jobs::band_rows(n * planes, w, h, memory_budget).max(1);
    let coefficients = vec![[Coefficients::IDENTITY; 3]; n];
    let weights = frame_weights(&used, &frames, weights)?;
    let mut out = Array3::<f32>::zeros((planes, h, w));
    let mut rejected = 0u64;
    let (mut read, mut warp, mut stack) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let bands = h.div_ceil(rows) as u64;
    for (b, y0) in (0..h).step_by(rows).enumerate() {
        progress.checkpoint()?;
        let y1 = (y0 + rows).min(h);
        let mut band = Array3::<f32>::from_elem((planes * n, y1 - y0, w), f32::NAN);
        // Frames in parallel (and each debayer and resampling parallel inside, for the cores
        // left over): frame i's planes are band planes i, n + i, 2n + i, …
        let mut by_frame = band
            .view_mut()
            .into_shape_with_order((planes, n, y1 - y0, w))
            .expect("band planes are plane-major, then frame");
        let times = by_frame
            .axis_iter_mut(Axis(1))
            .into_par_iter()
            .zip(&frames)
            .map(|(mut out, (frame, inverse))| {
                let (s0, s1) = source_rows(inverse, y0, y1, w, frame_h);
                if s0 == s1 {
                    return Ok((Duration::ZERO, Duration::ZERO));
                }
                let started = Instant::now();
                let sources = band_sources(frame, s0, s1, debayer)?;
                let read = started.elapsed();
                let started = Instant::now();
                warp_band(
                    sources.view(),
                    s0,
                    inverse,
                    report.interpolation,
                    y0,
                    out.view_mut(),
                );
                if whole_adu {
                    round_to_adu(out);
                }
                Ok((read, started.elapsed()))
            })
            .collect::<Result<Vec<_>>>()?;
        for (r, w) in times {
            read += r;
            warp += w;
        }
        let started = Instant::now();
        for c in 0..planes {
            let job = BandJob {
                frames: band.slice_mut(s![c * n..(c + 1) * n, .., ..]),
                row0: y0,
                calibration: None,
                coefficients: &coefficients,
                channels: ChannelMap::Plane(c.min(2)),
                method,
                weights: weights.as_deref(),
            };
            rejected += compute.stack_band(job, out.slice_mut(s![c, y0..y1, ..]))?;
        }
        stack += started.elapsed();
        progress.report(b as u64 + 1, bands, "stacking registered frames");
    }
    Ok(RegisteredStack {
        image: out,
        header: stack_header(report, &frames, method),
        rejected,
        read,
        warp,
        stack,
    })
}

/// Per used frame: `noise` 1/σ², `quality` 1/(σ²·FWHM²) (σ and FWHM measured while
/// detecting stars), `exposure` EXPTIME. A frame whose σ or FWHM is unusable gets the median
/// weight of the others.
fn frame_weights(
    used: &[(&FrameRegistration, Transform)],
    frames: &[(Frame, Transform)],
    weights: Weights,
) -> Result<Option<Vec<f32>>> {
    let raw: Vec<f64> = match weights {
        Weights::None => return Ok(None),
        Weights::Exposure => {
            return super::frames::exposure_weights(frames.iter().map(|(f, _)| f)).map(Some);
        }
        Weights::Noise => used.iter().map(|(f, _)| f.noise.powi(-2)).collect(),
        Weights::Quality => used
            .iter()
            .map(|(f, _)| (f.noise * f.fwhm).powi(-2))
            .collect(),
    };
    let mut usable: Vec<f32> = raw
        .iter()
        .filter(|w| w.is_finite() && **w > 0.0)
        .map(|&w| w as f32)
        .collect();
    let fallback = if usable.is_empty() {
        1.0
    } else {
        crate::science::stats::median_in_place(&mut usable)
    };
    Ok(Some(
        raw.iter()
            .map(|&w| {
                if w.is_finite() && w > 0.0 {
                    w as f32
                } else {
                    fallback
                }
            })
            .collect(),
    ))
}

/// Rounds samples in 0..=65535 to the nearest integer; NaN (no coverage) and anything out of
/// that range (bicubic overshoot) stay as they are.
fn round_to_adu(mut samples: ndarray::ArrayViewMut3<f32>) {
    samples
        .axis_iter_mut(Axis(1))
        .into_par_iter()
        .for_each(|mut planes| {
            for mut row in planes.outer_iter_mut() {
                let row = row.as_slice_mut().expect("rows are contiguous");
                for v in row {
                    if (0.0..65535.5).contains(v) {
                        *v = ((*v + 0.5) as u32) as f32;
                    }
                }
            }
        });
}

/// The header of a registered stack, from the frames already open: the reference's carried
/// cards, exposure totals and the registration in HISTORY.
fn stack_header(
    report: &RegisterReport,
    frames: &[(Frame, Transform)],
    method: Method,
) -> crate::fits::Header {
    // The reference is never dropped, so it is among the stacked frames.
    let reference = frames
        .iter()
        .find(|(f, _)| f.path() == report.reference)
        .unwrap_or(&frames[0]);
    let mut header = jobs::output_header(&reference.0.info.header, false);
    let exposure: f64 = frames.iter().filter_map(|(f, _)| f.exposure()).sum();
    jobs::set_stack_totals(&mut header, exposure, frames.len());
    header.push_history(&format!(
        "register: {} transforms onto {}, {} resampling, {} framing, {} frame(s) dropped",
        report.model.name(),
        report.reference.display(),
        report.interpolation.name(),
        report.framing.name(),
        report.dropped().len()
    ));
    header.push_history(&format!("stack: {}", method.name()));
    header
}

/// `stack(..., register=True)`: registers the frames, stacks them band by band onto the
/// reference and writes the output (and preview); returns the `fits.stack` result with the
/// registration under `"registration"`. Calibration must have been applied before.
pub fn registered_stack(
    params: &super::stack::StackParams,
    registration: &RegisterParams,
    compute: &dyn Compute,
    progress: &dyn Progress,
) -> Result<Value> {
    let m = &params.masters;
    if m.bias.is_some() || m.dark.is_some() || m.flat.is_some() {
        return Err(PipelineError::Invalid(
            "registration stacks calibrated frames: calibrate them first (calibrate), then \
             stack the calibrated frames with registration"
                .into(),
        ));
    }
    let debayer = match params.debayer {
        super::stack::DebayerChoice::Auto => Some(DebayerMethod::Rcd),
        super::stack::DebayerChoice::Method(m) => Some(m),
        super::stack::DebayerChoice::None => None,
    };
    let started = std::time::Instant::now();
    let report = register(registration, progress)?;
    let RegisteredStack {
        image,
        header,
        rejected,
        read,
        warp,
        stack,
    } = stack_registered(
        &report,
        params.method,
        params.weights,
        debayer,
        compute,
        params.memory_budget,
        progress,
    )?;
    jobs::write_output(&params.output, image.view(), params.dtype, &header)?;
    if let Some(preview) = &params.preview {
        jobs::write_stretched(
            preview,
            image.view(),
            crate::science::stretch::Stretch::Auto,
        )?;
    }
    let used = report.used().len();
    let (planes, h, w) = image.dim();
    crate::metrics::count_frames(used, w * h);
    Ok(json!({
        "output": params.output.display().to_string(),
        "preview": params.preview.as_ref().map(|p| p.display().to_string()),
        "frames_used": used,
        "width": w,
        "height": h,
        "channels": planes,
        "method": params.method.name(),
        "rejected_fraction": rejected as f64 / (used * planes * h * w).max(1) as f64,
        "device": compute.device(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "timings": {
            "detect_s": report.detect_s,
            "match_s": report.match_s,
            "read_debayer_s": read.as_secs_f64(),
            "warp_s": warp.as_secs_f64(),
            "stack_s": stack.as_secs_f64(),
        },
        "registration": report.to_json(),
    }))
}

/// A luminance view of a stacked/registered image for FWHM checks: the sum of its planes.
pub fn image_fwhm(image: ndarray::ArrayView3<f32>) -> f64 {
    let lum: Array2<f32> = image.sum_axis(Axis(0));
    let found = stars::detect(lum.view(), &DetectParams::default());
    stars::median_fwhm(&found)
}
