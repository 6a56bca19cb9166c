//! One compute interface, several devices. The pipeline hands a [`Compute`] the hot loops —
//! per-band calibrate + normalise + reject/stack, and debayer — and does everything else
//! (file I/O, planning, headers) itself. [`cpu::Cpu`] runs them with rayon and is the oracle
//! every other backend is tested against.

pub mod cpu;

use std::sync::Arc;

use ndarray::{Array3, ArrayView2, ArrayViewMut2, ArrayViewMut3};

use crate::science::calibrate::{ApplyOptions, CalibrateError, Masters};
use crate::science::cfa::{BayerPattern, DebayerMethod};
use crate::science::normalize::Coefficients;
use crate::science::stack::Method;

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("device {0:?} is not available: {1}")]
    Unavailable(String, String),
    #[error("unknown device {0:?} (use auto, cpu, cuda or cuda:N)")]
    UnknownDevice(String),
    #[error("{device}: out of memory ({detail})")]
    OutOfMemory { device: String, detail: String },
    #[error("{device}: {detail}")]
    Device { device: String, detail: String },
    #[error("calibration: {0}")]
    Calibrate(#[from] CalibrateError),
}

/// How to find the normalisation channel (0..3) of a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMap {
    /// One channel.
    Mono,
    /// A Bayer mosaic: the pixel's colour (R, G, B → 0, 1, 2).
    Cfa(BayerPattern),
    /// One plane of a colour cube: every pixel is this channel.
    Plane(usize),
}

impl ChannelMap {
    pub fn channel(&self, x: usize, y: usize) -> usize {
        match self {
            Self::Mono => 0,
            Self::Cfa(p) => p.color_at(x, y) as usize,
            Self::Plane(c) => *c,
        }
    }
}

/// Calibration applied to each frame's rows of a band (`science::calibrate::apply_rows`).
#[derive(Clone, Copy)]
pub struct BandCalibration<'a> {
    pub masters: &'a Masters,
    /// Per frame: dark scaling and the frame's exposure.
    pub options: &'a [ApplyOptions],
}

/// One band of a stack: every frame's rows `row0 .. row0 + rows` of one plane.
pub struct BandJob<'a> {
    /// `(frames, rows, width)` physical values; backends may modify them in place.
    pub frames: ArrayViewMut3<'a, f32>,
    pub row0: usize,
    pub calibration: Option<BandCalibration<'a>>,
    /// Per frame, per channel: `x' = x · factor + offset`.
    pub coefficients: &'a [[Coefficients; 3]],
    pub channels: ChannelMap,
    pub method: Method,
    pub weights: Option<&'a [f32]>,
}

/// A device that runs the hot loops.
pub trait Compute: Send + Sync {
    /// `cpu`, `cuda:0`, … — what the task result reports.
    fn device(&self) -> String;

    /// Calibrates, normalises and stacks one band into `out` (`(rows, width)`); returns the
    /// number of rejected samples.
    fn stack_band(
        &self,
        job: BandJob<'_>,
        out: ArrayViewMut2<'_, f32>,
    ) -> Result<u64, ComputeError>;

    /// Debayers a mosaic (see `science::cfa::debayer`).
    fn debayer(
        &self,
        mosaic: ArrayView2<'_, f32>,
        pattern: BayerPattern,
        method: DebayerMethod,
    ) -> Result<Array3<f32>, ComputeError>;
}

/// The devices this process may use, and the choice made for each task's `device` argument.
pub struct Devices {
    cpu: Arc<cpu::Cpu>,
}

impl Default for Devices {
    fn default() -> Self {
        Self::cpu_only()
    }
}

impl Devices {
    pub fn cpu_only() -> Self {
        Self {
            cpu: Arc::new(cpu::Cpu),
        }
    }

    /// The devices tasks can run on, as shown by `/health`.
    pub fn describe(&self) -> Vec<String> {
        vec![format!(
            "cpu ({} rayon threads)",
            rayon::current_num_threads()
        )]
    }

    /// `auto` | `cpu` | `cuda` | `cuda:N`.
    pub fn select(&self, spec: &str) -> Result<Arc<dyn Compute>, ComputeError> {
        match spec.trim().to_ascii_lowercase().as_str() {
            "auto" | "cpu" => Ok(self.cpu.clone()),
            s if s == "cuda" || s.starts_with("cuda:") => Err(ComputeError::Unavailable(
                s.to_string(),
                "this build has no CUDA backend yet".into(),
            )),
            other => Err(ComputeError::UnknownDevice(other.to_string())),
        }
    }
}
