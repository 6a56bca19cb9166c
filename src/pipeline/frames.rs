//! A set of input frames opened together: shape checks, per-frame facts from headers, and
//! reads of whole frames or of the same row band from every frame (in parallel).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::{Array3, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::{PipelineError, Result};
use crate::fits::{FitsReader, ImageInfo};
use crate::science::cfa::BayerPattern;

/// One open input frame.
pub struct Frame {
    pub info: ImageInfo,
    reader: Mutex<FitsReader>,
}

impl Frame {
    pub fn open(path: &Path) -> Result<Self> {
        let reader = FitsReader::open(path)?;
        Ok(Self {
            info: reader.info().clone(),
            reader: Mutex::new(reader),
        })
    }

    pub fn path(&self) -> &Path {
        &self.info.path
    }

    /// EXPTIME (or EXPOSURE) in seconds.
    pub fn exposure(&self) -> Option<f64> {
        exposure(&self.info)
    }

    pub fn read_all(&self) -> Result<Array3<f32>> {
        Ok(self.lock().read_all()?)
    }

    /// Rows `row0..` of plane `channel` into `out` (row-major, whole rows).
    pub fn read_rows(&self, channel: usize, row0: usize, out: &mut [f32]) -> Result<()> {
        Ok(self.lock().read_rows(channel, row0, out)?)
    }

    /// Adds rows `row0..` of plane `channel` to `sums` (see [`FitsReader::add_rows_u16`]).
    pub fn add_rows_u16(
        &self,
        channel: usize,
        row0: usize,
        sums: &mut [u32],
        scratch: &mut [u16],
    ) -> Result<bool> {
        Ok(self.lock().add_rows_u16(channel, row0, sums, scratch)?)
    }

    /// Whether [`Frame::add_rows_u16`] can read the pixels.
    pub fn stores_u16(&self) -> bool {
        self.lock().stores_u16()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FitsReader> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `weights=exposure`: each frame's exposure, an error naming a frame without one.
pub fn exposure_weights<'a>(frames: impl Iterator<Item = &'a Frame>) -> Result<Vec<f32>> {
    frames
        .map(|f| {
            f.exposure()
                .filter(|e| *e > 0.0)
                .map(|e| e as f32)
                .ok_or_else(|| {
                    PipelineError::Invalid(format!(
                        "{}: weights=exposure needs EXPTIME",
                        f.path().display()
                    ))
                })
        })
        .collect()
}

/// EXPTIME, or EXPOSURE, in seconds.
pub fn exposure(info: &ImageInfo) -> Option<f64> {
    let h = &info.header;
    h.get_f64("EXPTIME").or_else(|| h.get_f64("EXPOSURE"))
}

/// The Bayer pattern of a 2-D image as stored, from its header (None for colour cubes or when
/// no pattern is declared).
pub fn bayer_pattern(info: &ImageInfo) -> Option<BayerPattern> {
    if info.channels() != 1 {
        return None;
    }
    let h = &info.header;
    BayerPattern::from_header_values(
        h.get_str("BAYERPAT").or_else(|| h.get_str("COLORTYP")),
        h.get_i64("XBAYROFF").unwrap_or(0),
        h.get_i64("YBAYROFF").unwrap_or(0),
        h.get_str("ROWORDER"),
        info.height(),
    )
}

/// Frames of one shape, opened for reading.
pub struct FrameSet {
    pub frames: Vec<Frame>,
    pub width: usize,
    pub height: usize,
    pub channels: usize,
}

impl FrameSet {
    /// Opens every path (in parallel) and checks that all frames have the first one's shape.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.is_empty() {
            return Err(PipelineError::Invalid("no input frames".into()));
        }
        raise_open_file_limit(paths.len() + 64);
        let frames = paths
            .par_iter()
            .map(|p| Frame::open(p))
            .collect::<Result<Vec<_>>>()?;
        let first = &frames[0].info;
        let (width, height, channels) = (first.width(), first.height(), first.channels());
        for f in &frames[1..] {
            let i = &f.info;
            if (i.width(), i.height(), i.channels()) != (width, height, channels) {
                return Err(PipelineError::ShapeMismatch {
                    path: i.path.clone(),
                    width: i.width(),
                    height: i.height(),
                    channels: i.channels(),
                    expected: format!("{width}×{height}×{channels}"),
                });
            }
        }
        Ok(Self {
            frames,
            width,
            height,
            channels,
        })
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Reads rows `row0 .. row0 + band.dim().1` of plane `channel` of every frame into
    /// `band` (`(N, rows, width)`), frames in parallel.
    pub fn read_band(
        &self,
        channel: usize,
        row0: usize,
        mut band: ArrayViewMut3<f32>,
    ) -> Result<()> {
        band.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(self.frames.par_iter())
            .try_for_each(|(mut rows, frame)| {
                let slice = rows
                    .as_slice_mut()
                    .expect("band planes are contiguous rows");
                frame.read_rows(channel, row0, slice)
            })
    }

    /// Whether every frame stores exactly unsigned 16-bit values.
    pub fn all_u16(&self) -> bool {
        self.frames.iter().all(Frame::stores_u16)
    }

    /// Adds rows `row0..` of plane `channel` of every frame into `sums` (whole rows), using
    /// `scratch` (the same length) for one frame's rows. Only for [`FrameSet::all_u16`] sets
    /// of at most [`MAX_U16_SUM_FRAMES`] frames, so that the sums cannot overflow.
    pub fn sum_rows_u16(
        &self,
        channel: usize,
        row0: usize,
        sums: &mut [u32],
        scratch: &mut [u16],
    ) -> Result<()> {
        debug_assert!(self.len() <= MAX_U16_SUM_FRAMES);
        sums.fill(0);
        for frame in &self.frames {
            if !frame.add_rows_u16(channel, row0, sums, scratch)? {
                return Err(PipelineError::Invalid(format!(
                    "{}: not an unsigned 16-bit image",
                    frame.path().display()
                )));
            }
        }
        Ok(())
    }
}

/// The most frames whose 16-bit values a `u32` can sum.
pub const MAX_U16_SUM_FRAMES: usize = (u32::MAX / u16::MAX as u32) as usize;

/// Raises the soft limit on open files towards `wanted` (a 1,000-frame stack keeps 1,000 files
/// open); failures only mean the default limit stays.
fn raise_open_file_limit(wanted: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let wanted = wanted as libc::rlim_t;
    if lim.rlim_cur >= wanted {
        return;
    }
    lim.rlim_cur = wanted.min(lim.rlim_max);
    // SAFETY: setrlimit reads the struct we pass; the new soft limit is within the hard limit.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}
