//! Calibration: master frames, bias/dark/flat application, cosmetic correction.
//!
//! Everything works on raw sensor planes, `(height, width)` f32 arrays (a CFA mosaic or a mono
//! frame), before debayering. NaN marks a missing pixel throughout.
//!
//! # Masters
//!
//! A master is the per-pixel combination of N frames by a [`Method`] of `science::stack`
//! (median or a sigma-clipped mean, typically). [`combine_band`] combines one band of rows of
//! the N frames, `(N, rows, W)`, so a master of any size is built with bounded memory; the
//! whole-frame helpers ([`combine`], [`master_flat`]) are the one-band case.
//!
//! - **Bias**: raw bias frames combined.
//! - **Dark**: raw dark frames combined, bias included ([`MasterDark`] keeps its exposure).
//! - **Flat**: each flat minus an offset (the master bias, or a flat-dark of the flats'
//!   exposure, which contains the bias), divided by its own level so frames of different
//!   brightness agree ([`frame_levels`]), combined, then divided by the master's own level
//!   ([`normalize_flat`]) so it is ≈ 1. Levels are medians per CFA channel, i.e. per position
//!   in the 2×2 cell (which keeps the two greens apart and needs no knowledge of the pattern),
//!   or one global median for non-CFA data.
//!
//! # Application ([`apply_rows`], [`apply`])
//!
//! Per pixel, with `b` the master bias, `d` the master dark and `f` the normalised flat:
//!
//! ```text
//! DarkScaling::None:      x' = x − d                  (the dark contains the bias)
//! DarkScaling::Exposure:  x' = x − b − (d − b) · s    s = t_light / t_dark: only the thermal
//!                                                     signal d − b scales with exposure
//! bias only:              x' = x − b
//! flat:                   x'' = x' / f   when f is finite and > 0, else NaN (missing)
//! ```
//!
//! Exposure scaling without a master bias is an error unless the exposures are equal (s = 1,
//! the same as no scaling): scaling the whole dark would scale its bias pedestal too.
//!
//! # Cosmetic correction
//!
//! A [`DefectMap`] marks bad pixels: hot and cold pixels of the master dark
//! ([`DefectMap::from_dark`]) and/or outliers of a light ([`DefectMap::from_outliers`]).
//! [`correct_defects`] replaces each by the median of its same-colour neighbours (2 pixels away
//! in a CFA mosaic, 1 in a mono frame). Both look 2 pixels around each pixel and the light
//! statistics cover the whole frame, so they work on whole frames (one calibrated light at a
//! time), not on bands.

use ndarray::{Array2, ArrayView2, ArrayViewMut1, ArrayViewMut2, ArrayViewMut3};
use rayon::prelude::*;

use super::cfa::BayerPattern;
use super::stack::{self, Method};
use super::stats::{self, Estimate, Estimator, MAD_TO_SIGMA};

/// Default κ of the cosmetic correction: pixels more than 5 σ away are defects.
pub const DEFAULT_COSMETIC_KAPPA: f32 = 5.0;

/// What can go wrong calibrating.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrateError {
    #[error("the {what} is {found:?} (rows, columns) but the frame is {expected:?}")]
    ShapeMismatch {
        what: &'static str,
        expected: (usize, usize),
        found: (usize, usize),
    },
    #[error("rows {start}..{end} are outside the {height}-row masters")]
    RowsOutOfRange {
        start: usize,
        end: usize,
        height: usize,
    },
    #[error("dark scaling by exposure needs the {0} exposure time")]
    MissingExposure(&'static str),
    #[error("invalid {what} exposure time {value} s")]
    InvalidExposure { what: &'static str, value: f64 },
    #[error(
        "dark scaling by exposure needs a master bias (light {light} s, dark {dark} s): \
         without it the dark's bias would be scaled too"
    )]
    ScalingNeedsBias { light: f64, dark: f64 },
    #[error("{frames} frames but {levels} levels")]
    LevelCount { frames: usize, levels: usize },
    #[error("flat level {level} in CFA channel {channel}: a flat needs positive levels")]
    InvalidFlatLevel { channel: usize, level: f32 },
}

/// How the master dark is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DarkScaling {
    /// Subtract the master dark as it is (same exposure and temperature as the lights).
    #[default]
    None,
    /// Scale the dark's thermal signal (dark − bias) by t_light / t_dark.
    Exposure,
}

impl DarkScaling {
    /// Parses "none" or "exposure" (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "exposure" => Some(Self::Exposure),
            _ => None,
        }
    }
}

/// A master dark and its exposure time in seconds (needed by [`DarkScaling::Exposure`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MasterDark {
    pub data: Array2<f32>,
    pub exposure: Option<f64>,
}

/// The masters applied to lights, all `(height, width)` like the lights (any may be absent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Masters {
    pub bias: Option<Array2<f32>>,
    pub dark: Option<MasterDark>,
    /// The normalised master flat (≈ 1, see [`normalize_flat`]).
    pub flat: Option<Array2<f32>>,
}

impl Masters {
    /// Every master present, with its name.
    fn planes(&self) -> impl Iterator<Item = (&'static str, &Array2<f32>)> {
        [
            ("master bias", self.bias.as_ref()),
            ("master dark", self.dark.as_ref().map(|d| &d.data)),
            ("master flat", self.flat.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, plane)| plane.map(|p| (name, p)))
    }
}

/// Per-light options of [`apply_rows`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ApplyOptions {
    pub dark_scaling: DarkScaling,
    /// The light's exposure time in seconds (needed by [`DarkScaling::Exposure`]).
    pub light_exposure: Option<f64>,
}

/// How the dark enters the formula, resolved once per light.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DarkTerm {
    /// No dark: subtract the bias if there is one.
    BiasOnly,
    /// x − d.
    Whole,
    /// x − b − (d − b) · s.
    Thermal(f32),
}

fn dark_term(masters: &Masters, options: &ApplyOptions) -> Result<DarkTerm, CalibrateError> {
    let Some(dark) = &masters.dark else {
        return Ok(DarkTerm::BiasOnly);
    };
    if options.dark_scaling == DarkScaling::None {
        return Ok(DarkTerm::Whole);
    }
    let exposure = |what, value: Option<f64>| match value {
        None => Err(CalibrateError::MissingExposure(what)),
        Some(v) if !(v.is_finite() && v > 0.0) => {
            Err(CalibrateError::InvalidExposure { what, value: v })
        }
        Some(v) => Ok(v),
    };
    let light = exposure("light", options.light_exposure)?;
    let dark_exposure = exposure("dark", dark.exposure)?;
    match (&masters.bias, light == dark_exposure) {
        (_, true) => Ok(DarkTerm::Whole),
        (Some(_), false) => Ok(DarkTerm::Thermal((light / dark_exposure) as f32)),
        (None, false) => Err(CalibrateError::ScalingNeedsBias {
            light,
            dark: dark_exposure,
        }),
    }
}

/// Checks that a band of `dim` = (rows, width) starting at `row0` lies inside planes of shape
/// `full`.
fn check_band(
    what: &'static str,
    full: (usize, usize),
    row0: usize,
    dim: (usize, usize),
) -> Result<(), CalibrateError> {
    let (rows, width) = dim;
    if full.1 != width {
        return Err(CalibrateError::ShapeMismatch {
            what,
            expected: (full.0, width),
            found: full,
        });
    }
    if row0 + rows > full.0 {
        return Err(CalibrateError::RowsOutOfRange {
            start: row0,
            end: row0 + rows,
            height: full.0,
        });
    }
    Ok(())
}

/// Calibrates rows `row0 .. row0 + band.nrows()` of a light in place (see the module docs for
/// the formula): `band` holds those rows, the masters are full frames. Calling it on every
/// band of a frame gives exactly the same result as on the whole frame. rayon-parallel by
/// rows.
pub fn apply_rows(
    mut band: ArrayViewMut2<f32>,
    row0: usize,
    masters: &Masters,
    options: &ApplyOptions,
) -> Result<(), CalibrateError> {
    let term = dark_term(masters, options)?;
    for (what, plane) in masters.planes() {
        check_band(what, plane.dim(), row0, band.dim())?;
    }
    let bias = masters.bias.as_ref();
    let dark = masters.dark.as_ref().map(|d| &d.data);
    let flat = masters.flat.as_ref();
    let rows: Vec<ArrayViewMut1<f32>> = band.outer_iter_mut().collect();
    rows.into_par_iter().enumerate().for_each(|(i, mut row)| {
        let y = row0 + i;
        for (x, v) in row.iter_mut().enumerate() {
            let b = bias.map_or(0.0, |m| m[[y, x]]);
            let mut value = match (term, dark) {
                (DarkTerm::Whole, Some(d)) => *v - d[[y, x]],
                (DarkTerm::Thermal(s), Some(d)) => *v - b - (d[[y, x]] - b) * s,
                _ => *v - b,
            };
            if let Some(f) = flat.map(|m| m[[y, x]]) {
                value = if f.is_finite() && f > 0.0 {
                    value / f
                } else {
                    f32::NAN
                };
            }
            *v = value;
        }
    });
    Ok(())
}

/// Calibrates a whole light in place: [`apply_rows`] from row 0, after checking that the frame
/// has the masters' height.
pub fn apply(
    frame: ArrayViewMut2<f32>,
    masters: &Masters,
    options: &ApplyOptions,
) -> Result<(), CalibrateError> {
    for (what, plane) in masters.planes() {
        if plane.dim() != frame.dim() {
            return Err(CalibrateError::ShapeMismatch {
                what,
                expected: frame.dim(),
                found: plane.dim(),
            });
        }
    }
    apply_rows(frame, 0, masters, options)
}

/// Levels of a frame per CFA channel: `0[i]` is the level of cell position `i` =
/// [`BayerPattern::channel_index`]`(x, y)`. For non-CFA data the four are the same global
/// level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels(pub [f32; 4]);

impl Levels {
    /// The level that applies at pixel (x, y) of the full frame.
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.0[BayerPattern::channel_index(x, y)]
    }
}

/// The medians of `frame − offset` (finite values) per CFA channel (`cfa`) or globally: the
/// level a flat is divided by before combining. `offset` is a full frame like `frame`.
pub fn frame_levels(
    frame: ArrayView2<f32>,
    offset: Option<ArrayView2<f32>>,
    cfa: bool,
) -> Result<Levels, CalibrateError> {
    if let Some(o) = &offset
        && o.dim() != frame.dim()
    {
        return Err(CalibrateError::ShapeMismatch {
            what: "offset",
            expected: frame.dim(),
            found: o.dim(),
        });
    }
    let mut channels: [Vec<f32>; 4] = Default::default();
    for ((y, x), &v) in frame.indexed_iter() {
        let v = v - offset.as_ref().map_or(0.0, |o| o[[y, x]]);
        let channel = if cfa {
            BayerPattern::channel_index(x, y)
        } else {
            0
        };
        channels[channel].push(v);
    }
    if cfa {
        Ok(Levels(
            channels.each_mut().map(|c| stats::median_in_place(c)),
        ))
    } else {
        Ok(Levels([stats::median_in_place(&mut channels[0]); 4]))
    }
}

/// How each frame is prepared before [`combine_band`] combines it.
#[derive(Debug, Clone, Copy, Default)]
pub struct FramePrep<'a> {
    /// Subtracted from every frame first: the master bias (or a flat-dark) for flats; `None`
    /// for bias and dark frames. A full frame; the band's rows are taken from it.
    pub offset: Option<ArrayView2<'a, f32>>,
    /// Frame i is then divided by `levels[i]` (flats, from [`frame_levels`]); `None` leaves the
    /// frames as they are.
    pub levels: Option<&'a [Levels]>,
}

/// Combines one band of a master: `frames` is `(N, rows, W)`, rows `row0 .. row0 + rows` of N
/// frames, prepared in place by `prep` and combined per pixel by `method` into `out`
/// `(rows, W)`. Returns the number of rejected samples.
pub fn combine_band(
    method: &Method,
    mut frames: ArrayViewMut3<f32>,
    row0: usize,
    prep: &FramePrep,
    out: ArrayViewMut2<f32>,
) -> Result<u64, CalibrateError> {
    let (n, rows, width) = frames.dim();
    if out.dim() != (rows, width) {
        return Err(CalibrateError::ShapeMismatch {
            what: "output band",
            expected: (rows, width),
            found: out.dim(),
        });
    }
    if let Some(offset) = &prep.offset {
        check_band("offset", offset.dim(), row0, (rows, width))?;
    }
    if let Some(levels) = prep.levels
        && levels.len() != n
    {
        return Err(CalibrateError::LevelCount {
            frames: n,
            levels: levels.len(),
        });
    }
    for (i, mut frame) in frames.outer_iter_mut().enumerate() {
        let level = prep.levels.map(|l| l[i]);
        let frame_rows: Vec<ArrayViewMut1<f32>> = frame.outer_iter_mut().collect();
        frame_rows
            .into_par_iter()
            .enumerate()
            .for_each(|(r, mut row)| {
                let y = row0 + r;
                for (x, v) in row.iter_mut().enumerate() {
                    if let Some(offset) = &prep.offset {
                        *v -= offset[[y, x]];
                    }
                    if let Some(level) = level {
                        *v /= level.at(x, y);
                    }
                }
            });
    }
    Ok(stack::stack_band(method, frames.view(), None, out))
}

/// Combines whole frames `(N, H, W)` into a master (one band: [`combine_band`] from row 0).
pub fn combine(
    method: &Method,
    frames: ArrayViewMut3<f32>,
    prep: &FramePrep,
) -> Result<Array2<f32>, CalibrateError> {
    let (_, height, width) = frames.dim();
    let mut out = Array2::zeros((height, width));
    combine_band(method, frames, 0, prep, out.view_mut())?;
    Ok(out)
}

/// Divides a combined flat by its own levels (per CFA channel or global), so that it is ≈ 1;
/// returns the levels. Fails when a level is not positive (an empty or inverted flat).
pub fn normalize_flat(mut flat: ArrayViewMut2<f32>, cfa: bool) -> Result<Levels, CalibrateError> {
    let levels = frame_levels(flat.view(), None, cfa)?;
    if let Some((channel, &level)) = levels
        .0
        .iter()
        .enumerate()
        .find(|(_, l)| !(l.is_finite() && **l > 0.0))
    {
        return Err(CalibrateError::InvalidFlatLevel { channel, level });
    }
    for ((y, x), v) in flat.indexed_iter_mut() {
        *v /= levels.at(x, y);
    }
    Ok(levels)
}

/// A whole normalised master flat from flats `(N, H, W)` in memory: each minus `offset` (the
/// master bias or a flat-dark), divided by its level, combined by `method`, normalised. A
/// pipeline with bounded memory does the same with [`frame_levels`] per flat, then
/// [`combine_band`] per band, then [`normalize_flat`].
pub fn master_flat(
    method: &Method,
    mut flats: ArrayViewMut3<f32>,
    offset: Option<ArrayView2<f32>>,
    cfa: bool,
) -> Result<Array2<f32>, CalibrateError> {
    let levels = flats
        .outer_iter()
        .map(|flat| frame_levels(flat, offset, cfa))
        .collect::<Result<Vec<_>, _>>()?;
    for (channel, &level) in levels.iter().flat_map(|l| l.0.iter().enumerate()) {
        if !(level.is_finite() && level > 0.0) {
            return Err(CalibrateError::InvalidFlatLevel { channel, level });
        }
    }
    let mut master = combine(
        method,
        flats.view_mut(),
        &FramePrep {
            offset,
            levels: Some(&levels),
        },
    )?;
    normalize_flat(master.view_mut(), cfa)?;
    Ok(master)
}

/// A map of defective pixels, `(height, width)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DefectMap {
    mask: Array2<bool>,
}

impl DefectMap {
    /// No defects.
    pub fn empty(height: usize, width: usize) -> Self {
        DefectMap {
            mask: Array2::from_elem((height, width), false),
        }
    }

    /// Hot and cold pixels of a master dark: finite pixels more than `kappa` σ above or below
    /// its median, σ = 1.4826 · MAD over the whole dark (no light reaches a dark, so every
    /// colour behaves alike). A quantised, nearly noiseless dark can have MAD = 0; σ is then
    /// 1.2533 × the mean absolute deviation from the median (the Gaussian-consistent version),
    /// and a perfectly constant dark has no defects.
    pub fn from_dark(dark: ArrayView2<f32>, kappa: f32) -> Self {
        let values = dark.as_standard_layout();
        let values = values.as_slice().expect("standard layout");
        let Estimate {
            location: median,
            scale: mut sigma,
        } = stats::estimate(values, Estimator::MedianMad);
        if sigma == 0.0 {
            let finite = values.iter().filter(|v| v.is_finite());
            let (sum, n) = finite.fold((0.0f64, 0usize), |(s, n), &v| {
                (s + (f64::from(v) - median).abs(), n + 1)
            });
            sigma = 1.2533 * sum / n as f64;
        }
        let limit = f64::from(kappa) * sigma;
        let mask =
            dark.mapv(|v| v.is_finite() && sigma > 0.0 && (f64::from(v) - median).abs() > limit);
        DefectMap { mask }
    }

    /// Outliers of a light (hot pixels, cosmic-ray hits, dead pixels). A finite pixel is one
    /// when it stands out by more than `kappa` σ from two rings of neighbours (those inside the
    /// frame and finite), each with its own σ = max(1.4826 · MAD of the ring, robust σ of the
    /// pixel's CFA channel over the frame):
    /// - its same-colour neighbours (the 8 at distance 2 in a CFA mosaic, 1 in a mono frame):
    ///   the pixel differs from what its colour should be there;
    /// - its 8 immediate neighbours of any colour: the difference is confined to that one
    ///   pixel. A star lifts its immediate neighbours with it, and their spread (MAD) with
    ///   them, so undersampled stars are not taken for hot pixels.
    ///
    /// The ring's MAD keeps edges and gradients, the channel σ keeps a locally smooth patch of
    /// sky from flagging its own noise. In a mono frame both rings are the same.
    pub fn from_outliers(frame: ArrayView2<f32>, kappa: f32, cfa: bool) -> Self {
        let (height, width) = frame.dim();
        let channel_sigma = channel_sigmas(frame, cfa);
        let step = if cfa { 2 } else { 1 };
        let mask_rows: Vec<Vec<bool>> = (0..height)
            .into_par_iter()
            .map(|y| {
                (0..width)
                    .map(|x| {
                        let v = frame[[y, x]];
                        let channel = if cfa {
                            BayerPattern::channel_index(x, y)
                        } else {
                            0
                        };
                        let stands_out = |ring: Neighbours| {
                            let (median, mad) = ring.median_and_mad();
                            let sigma = (MAD_TO_SIGMA as f32 * mad).max(channel_sigma[channel]);
                            (v - median).abs() > kappa * sigma
                        };
                        v.is_finite()
                            && stands_out(neighbours(frame, x, y, step, |_, _| true))
                            && stands_out(neighbours(frame, x, y, 1, |_, _| true))
                    })
                    .collect()
            })
            .collect();
        let mask = Array2::from_shape_vec((height, width), mask_rows.concat()).expect("H·W flags");
        DefectMap { mask }
    }

    /// Adds the defects of `other` (same shape) to this map.
    pub fn merge(&mut self, other: &DefectMap) -> Result<(), CalibrateError> {
        if other.mask.dim() != self.mask.dim() {
            return Err(CalibrateError::ShapeMismatch {
                what: "defect map",
                expected: self.mask.dim(),
                found: other.mask.dim(),
            });
        }
        self.mask.zip_mut_with(&other.mask, |a, &b| *a |= b);
        Ok(())
    }

    /// Marks pixel (x, y) as defective.
    pub fn insert(&mut self, x: usize, y: usize) {
        self.mask[[y, x]] = true;
    }

    pub fn contains(&self, x: usize, y: usize) -> bool {
        self.mask[[y, x]]
    }

    /// The number of defective pixels.
    pub fn len(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (height, width).
    pub fn dim(&self) -> (usize, usize) {
        self.mask.dim()
    }
}

/// Robust σ (1.4826 · MAD) of each CFA channel (cell position), or of the whole frame in slot
/// 0 for non-CFA data.
fn channel_sigmas(frame: ArrayView2<f32>, cfa: bool) -> [f32; 4] {
    let mut channels: [Vec<f32>; 4] = Default::default();
    for ((y, x), &v) in frame.indexed_iter() {
        channels[if cfa {
            BayerPattern::channel_index(x, y)
        } else {
            0
        }]
        .push(v);
    }
    channels.map(|c| {
        if c.is_empty() {
            0.0
        } else {
            stats::estimate(&c, Estimator::MedianMad).scale as f32
        }
    })
}

/// Up to 8 neighbour values, without allocating.
struct Neighbours {
    values: [f32; 8],
    len: usize,
}

impl Neighbours {
    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.values[..self.len]
    }

    /// Median of the values (NaN for none). Reorders them.
    fn median(&mut self) -> f32 {
        stats::median_in_place(self.as_mut_slice())
    }

    /// Median and MAD of the values (NaN for none).
    fn median_and_mad(mut self) -> (f32, f32) {
        let median = self.median();
        let mut deviations = self.values.map(|v| (v - median).abs());
        (median, stats::median_in_place(&mut deviations[..self.len]))
    }
}

/// The finite values of the 8 neighbours at distance `step` (in x, y or both) of (x, y) that
/// are inside the frame and accepted by `keep(nx, ny)`.
fn neighbours(
    frame: ArrayView2<f32>,
    x: usize,
    y: usize,
    step: usize,
    keep: impl Fn(usize, usize) -> bool,
) -> Neighbours {
    let (height, width) = frame.dim();
    let step = step as isize;
    let mut out = Neighbours {
        values: [0.0; 8],
        len: 0,
    };
    for dy in [-step, 0, step] {
        for dx in [-step, 0, step] {
            let nx = x.checked_add_signed(dx).filter(|&v| v < width);
            let ny = y.checked_add_signed(dy).filter(|&v| v < height);
            if let (Some(nx), Some(ny), false) = (nx, ny, dx == 0 && dy == 0) {
                let v = frame[[ny, nx]];
                if v.is_finite() && keep(nx, ny) {
                    out.values[out.len] = v;
                    out.len += 1;
                }
            }
        }
    }
    out
}

/// Replaces every pixel of `defects` by the median of its same-colour neighbours that are
/// finite and not defective themselves (distance 2 in a CFA mosaic, 1 in a mono frame);
/// a defect with no usable neighbour becomes NaN (missing). All replacements are computed
/// from the uncorrected frame, so the result does not depend on the order. Returns the number
/// of pixels replaced by a value.
pub fn correct_defects(
    mut frame: ArrayViewMut2<f32>,
    defects: &DefectMap,
    cfa: bool,
) -> Result<usize, CalibrateError> {
    if defects.dim() != frame.dim() {
        return Err(CalibrateError::ShapeMismatch {
            what: "defect map",
            expected: frame.dim(),
            found: defects.dim(),
        });
    }
    let step = if cfa { 2 } else { 1 };
    let source = frame.to_owned();
    let replacements: Vec<((usize, usize), f32)> = defects
        .mask
        .indexed_iter()
        .filter(|(_, m)| **m)
        .map(|((y, x), _)| {
            let mut good = neighbours(source.view(), x, y, step, |nx, ny| {
                !defects.contains(nx, ny)
            });
            ((y, x), good.median())
        })
        .collect();
    for &(index, value) in &replacements {
        frame[index] = value;
    }
    Ok(replacements.iter().filter(|(_, v)| v.is_finite()).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, Axis, s};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    fn noise(h: usize, w: usize, mean: f32, sigma: f32, seed: u64) -> Array2<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(mean, sigma).unwrap();
        Array2::from_shape_simple_fn((h, w), || normal.sample(&mut rng))
    }

    #[test]
    fn bias_dark_flat_arithmetic() {
        let light = Array2::from_elem((2, 4), 1000.0f32);
        let bias = Array2::from_elem((2, 4), 100.0f32);
        let dark = Array2::from_elem((2, 4), 160.0f32); // 60 thermal in 10 s
        let flat =
            Array2::from_shape_vec((2, 4), vec![1.0, 2.0, 0.5, 1.0, 0.0, -1.0, f32::NAN, 4.0])
                .unwrap();
        let masters = Masters {
            bias: Some(bias),
            dark: Some(MasterDark {
                data: dark,
                exposure: Some(10.0),
            }),
            flat: Some(flat),
        };
        // No scaling: 1000 − 160 = 840, / flat.
        let mut a = light.clone();
        apply(a.view_mut(), &masters, &ApplyOptions::default()).unwrap();
        assert_eq!(a.row(0).to_vec(), vec![840.0, 420.0, 1680.0, 840.0]);
        assert!(a[[1, 0]].is_nan() && a[[1, 1]].is_nan() && a[[1, 2]].is_nan());
        assert_eq!(a[[1, 3]], 210.0);
        // Exposure scaling, light 20 s: 1000 − 100 − 60·2 = 780.
        let mut b = light.clone();
        let options = ApplyOptions {
            dark_scaling: DarkScaling::Exposure,
            light_exposure: Some(20.0),
        };
        apply(b.view_mut(), &masters, &options).unwrap();
        assert_eq!(b[[0, 0]], 780.0);
        assert_eq!(b[[0, 1]], 390.0);
        // Bias only.
        let bias_only = Masters {
            bias: masters.bias.clone(),
            ..Masters::default()
        };
        let mut c = light.clone();
        apply(c.view_mut(), &bias_only, &ApplyOptions::default()).unwrap();
        assert!(c.iter().all(|&v| v == 900.0));
        // Nothing at all: unchanged.
        let mut d = light.clone();
        apply(d.view_mut(), &Masters::default(), &options).unwrap();
        assert_eq!(d, light);
    }

    #[test]
    fn dark_scaling_errors() {
        let dark = Some(MasterDark {
            data: Array2::from_elem((2, 2), 10.0),
            exposure: Some(10.0),
        });
        let no_bias = Masters {
            dark: dark.clone(),
            ..Masters::default()
        };
        let mut f = Array2::from_elem((2, 2), 100.0f32);
        let scaled = |t| ApplyOptions {
            dark_scaling: DarkScaling::Exposure,
            light_exposure: t,
        };
        assert_eq!(
            apply(f.view_mut(), &no_bias, &scaled(Some(20.0))),
            Err(CalibrateError::ScalingNeedsBias {
                light: 20.0,
                dark: 10.0
            })
        );
        assert_eq!(
            apply(f.view_mut(), &no_bias, &scaled(None)),
            Err(CalibrateError::MissingExposure("light"))
        );
        assert!(matches!(
            apply(f.view_mut(), &no_bias, &scaled(Some(-1.0))),
            Err(CalibrateError::InvalidExposure { .. })
        ));
        // Equal exposures need no bias: plain subtraction.
        apply(f.view_mut(), &no_bias, &scaled(Some(10.0))).unwrap();
        assert!(f.iter().all(|&v| v == 90.0));
        let no_dark_exposure = Masters {
            dark: Some(MasterDark {
                data: Array2::zeros((2, 2)),
                exposure: None,
            }),
            ..Masters::default()
        };
        assert_eq!(
            apply(f.view_mut(), &no_dark_exposure, &scaled(Some(1.0))),
            Err(CalibrateError::MissingExposure("dark"))
        );
        assert_eq!(DarkScaling::parse("Exposure"), Some(DarkScaling::Exposure));
        assert_eq!(DarkScaling::parse("none"), Some(DarkScaling::None));
        assert_eq!(DarkScaling::parse("temperature"), None);
    }

    #[test]
    fn bands_equal_whole_frame() {
        let light = noise(13, 7, 1000.0, 30.0, 1);
        let masters = Masters {
            bias: Some(noise(13, 7, 100.0, 3.0, 2)),
            dark: Some(MasterDark {
                data: noise(13, 7, 150.0, 5.0, 3),
                exposure: Some(30.0),
            }),
            flat: Some(noise(13, 7, 1.0, 0.05, 4)),
        };
        let options = ApplyOptions {
            dark_scaling: DarkScaling::Exposure,
            light_exposure: Some(60.0),
        };
        let mut whole = light.clone();
        apply(whole.view_mut(), &masters, &options).unwrap();
        let mut banded = light.clone();
        for row0 in (0..13).step_by(5) {
            let end = (row0 + 5).min(13);
            apply_rows(
                banded.slice_mut(s![row0..end, ..]),
                row0,
                &masters,
                &options,
            )
            .unwrap();
        }
        assert_eq!(whole, banded);
        // Bands must fit in the masters.
        let mut extra = Array2::zeros((3, 7));
        assert_eq!(
            apply_rows(extra.view_mut(), 11, &masters, &options),
            Err(CalibrateError::RowsOutOfRange {
                start: 11,
                end: 14,
                height: 13
            })
        );
        let mut narrow = Array2::zeros((3, 6));
        assert!(matches!(
            apply_rows(narrow.view_mut(), 0, &masters, &options),
            Err(CalibrateError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn masters_by_median_and_sigma_clip() {
        // Five bias frames, one with a cosmic ray: both methods reject it.
        let mut frames = Array3::from_shape_fn((5, 4, 6), |(i, _, _)| 100.0 + i as f32);
        frames[[2, 1, 1]] = 60000.0;
        let median = combine(&Method::Median, frames.view_mut(), &FramePrep::default()).unwrap();
        for ((y, x), &v) in median.indexed_iter() {
            // The cosmic ray only moves the median of its pixel one rank up.
            assert_eq!(v, if (y, x) == (1, 1) { 103.0 } else { 102.0 });
        }
        let clip = Method::SigmaClip {
            low: 3.0,
            high: 3.0,
            iterations: 5,
        };
        let mut frames = Array3::from_shape_fn((8, 4, 6), |(i, _, _)| 100.0 + (i % 2) as f32);
        frames[[2, 1, 1]] = 60000.0;
        let mean = combine(&clip, frames.view_mut(), &FramePrep::default()).unwrap();
        assert!((mean[[1, 1]] - 100.5714).abs() < 1e-3, "{}", mean[[1, 1]]); // 7 left: 4×100 + 3×101
        assert_eq!(mean[[0, 0]], 100.5);
    }

    /// A vignetted CFA flat, `gain[channel] · vignetting(x, y)`, plus a bias.
    fn flat_frame(h: usize, w: usize, brightness: f32, bias: f32) -> Array2<f32> {
        let gain = [1.0, 0.6, 0.8, 1.02];
        Array2::from_shape_fn((h, w), |(y, x)| {
            let (dx, dy) = (x as f32 - w as f32 / 2.0, y as f32 - h as f32 / 2.0);
            let vignetting = 1.0 - 0.001 * (dx * dx + dy * dy);
            bias + brightness * gain[BayerPattern::channel_index(x, y)] * vignetting
        })
    }

    #[test]
    fn flat_is_normalised_per_cfa_channel() {
        let (h, w) = (16, 20);
        let bias = Array2::from_elem((h, w), 200.0f32);
        // Flats of different brightness: each is scaled by its own levels first.
        let mut flats = ndarray::stack(
            Axis(0),
            &[
                flat_frame(h, w, 20000.0, 200.0).view(),
                flat_frame(h, w, 30000.0, 200.0).view(),
                flat_frame(h, w, 25000.0, 200.0).view(),
            ],
        )
        .unwrap();
        let master =
            master_flat(&Method::Median, flats.view_mut(), Some(bias.view()), true).unwrap();
        // Each CFA channel has median 1; the colour gains are gone, the vignetting stays.
        let levels = frame_levels(master.view(), None, true).unwrap();
        for l in levels.0 {
            assert!((l - 1.0).abs() < 1e-6, "{levels:?}");
        }
        let reference = flat_frame(h, w, 1.0, 0.0);
        let reference_levels = frame_levels(reference.view(), None, true).unwrap();
        for ((y, x), &v) in master.indexed_iter() {
            let want = reference[[y, x]] / reference_levels.at(x, y);
            assert!((v - want).abs() < 1e-5, "({x},{y}) {v} vs {want}");
        }
        // Calibrating the flat's own light pattern by it leaves a flat image per channel.
        let masters = Masters {
            bias: Some(bias.clone()),
            flat: Some(master),
            ..Masters::default()
        };
        let mut light = flat_frame(h, w, 5000.0, 200.0);
        apply(light.view_mut(), &masters, &ApplyOptions::default()).unwrap();
        let light_levels = frame_levels(light.view(), None, true).unwrap();
        for ((y, x), &v) in light.indexed_iter() {
            assert!((v - light_levels.at(x, y)).abs() < 0.05, "({x},{y}) {v}");
        }
    }

    #[test]
    fn mono_flat_uses_the_global_median() {
        let frame = Array2::from_shape_fn((4, 4), |(y, x)| 1.0 + (y * 4 + x) as f32);
        let levels = frame_levels(frame.view(), None, false).unwrap();
        assert_eq!(levels, Levels([8.5; 4]));
        let mut flat = frame.clone();
        normalize_flat(flat.view_mut(), false).unwrap();
        assert_eq!(flat[[0, 0]], 1.0 / 8.5);
        let mut dead = Array2::<f32>::zeros((4, 4));
        assert_eq!(
            normalize_flat(dead.view_mut(), true),
            Err(CalibrateError::InvalidFlatLevel {
                channel: 0,
                level: 0.0
            })
        );
    }

    #[test]
    fn banded_flat_equals_whole_flat() {
        let (h, w) = (10, 8);
        let bias = Array2::from_elem((h, w), 100.0f32);
        let frames: Vec<Array2<f32>> = (0..3)
            .map(|i| flat_frame(h, w, 1000.0 * (i + 1) as f32, 100.0) + noise(h, w, 0.0, 5.0, i))
            .collect();
        let views: Vec<_> = frames.iter().map(|f| f.view()).collect();
        let mut all = ndarray::stack(Axis(0), &views).unwrap();
        let whole = master_flat(
            &Method::Median,
            all.clone().view_mut(),
            Some(bias.view()),
            true,
        )
        .unwrap();
        let levels: Vec<Levels> = frames
            .iter()
            .map(|f| frame_levels(f.view(), Some(bias.view()), true).unwrap())
            .collect();
        let prep = FramePrep {
            offset: Some(bias.view()),
            levels: Some(&levels),
        };
        let mut banded = Array2::zeros((h, w));
        for row0 in (0..h).step_by(3) {
            let end = (row0 + 3).min(h);
            let band = all.slice_mut(s![.., row0..end, ..]);
            combine_band(
                &Method::Median,
                band,
                row0,
                &prep,
                banded.slice_mut(s![row0..end, ..]),
            )
            .unwrap();
        }
        normalize_flat(banded.view_mut(), true).unwrap();
        assert_eq!(whole, banded);
        let short = FramePrep {
            offset: None,
            levels: Some(&levels[..2]),
        };
        assert_eq!(
            combine(&Method::Median, all.view_mut(), &short),
            Err(CalibrateError::LevelCount {
                frames: 3,
                levels: 2
            })
        );
    }

    #[test]
    fn hot_and_cold_pixels_of_a_dark() {
        let mut dark = noise(40, 50, 500.0, 10.0, 7);
        let planted = [(3, 4, 5000.0), (20, 30, 900.0), (49, 39, 0.0)];
        for (x, y, v) in planted {
            dark[[y, x]] = v;
        }
        let map = DefectMap::from_dark(dark.view(), DEFAULT_COSMETIC_KAPPA);
        assert_eq!(map.len(), planted.len());
        for (x, y, _) in planted {
            assert!(map.contains(x, y));
        }
        // A quantised dark with MAD = 0 still finds its hot pixel (and nothing else).
        let mut quantised =
            Array2::from_shape_fn(
                (20, 20),
                |(y, x)| if (x + y) % 5 == 0 { 101.0 } else { 100.0 },
            );
        quantised[[7, 7]] = 400.0;
        let map = DefectMap::from_dark(quantised.view(), 5.0);
        assert_eq!(map.len(), 1);
        assert!(map.contains(7, 7));
        assert!(DefectMap::from_dark(Array2::from_elem((5, 5), 3.0).view(), 5.0).is_empty());
    }

    /// Pixel positions (x, y).
    type Pixels = Vec<(usize, usize)>;

    /// A CFA light: per-channel background with noise, a few stars, planted defects. Returns
    /// the light, the defects and the star centres.
    fn cfa_light() -> (Array2<f32>, Pixels, Pixels) {
        let background = [700.0, 630.0, 610.0, 700.0];
        let mut light = noise(60, 64, 0.0, 12.0, 11);
        let stars = [
            (20.0, 15.0, 20000.0),
            (45.3, 40.6, 8000.0),
            (10.5, 50.2, 40000.0),
        ];
        for ((y, x), v) in light.indexed_iter_mut() {
            *v += background[BayerPattern::channel_index(x, y)];
            for (sx, sy, peak) in stars {
                let r2 = (x as f32 - sx).powi(2) + (y as f32 - sy).powi(2);
                *v += peak * (-r2 / (2.0 * 1.1f32.powi(2))).exp(); // FWHM ≈ 2.6 px
            }
        }
        let hot = vec![(5, 5), (30, 31), (63, 59), (0, 0)];
        let cold = vec![(40, 12), (12, 44)];
        for &(x, y) in &hot {
            light[[y, x]] += 3000.0;
        }
        for &(x, y) in &cold {
            light[[y, x]] = 0.0;
        }
        let star_pixels = stars
            .iter()
            .map(|&(x, y, _)| (x.round() as usize, y.round() as usize))
            .collect();
        (light, [hot, cold].concat(), star_pixels)
    }

    #[test]
    fn outliers_of_a_light_spare_stars() {
        let (mut light, defects, stars) = cfa_light();
        let map = DefectMap::from_outliers(light.view(), DEFAULT_COSMETIC_KAPPA, true);
        for &(x, y) in &defects {
            assert!(map.contains(x, y), "defect ({x},{y}) missed");
        }
        assert_eq!(map.len(), defects.len(), "clean pixels flagged");
        for &(x, y) in &stars {
            assert!(!map.contains(x, y), "star ({x},{y}) flagged");
        }
        let clean = light.clone();
        let corrected = correct_defects(light.view_mut(), &map, true).unwrap();
        assert_eq!(corrected, defects.len());
        let background = [700.0, 630.0, 610.0, 700.0];
        for &(x, y) in &defects {
            let v = light[[y, x]];
            let expected = background[BayerPattern::channel_index(x, y)];
            assert!(
                (v - expected).abs() < 40.0,
                "({x},{y}) → {v}, expected ≈ {expected}"
            );
        }
        // Everything else is untouched.
        for ((y, x), &v) in light.indexed_iter() {
            if !defects.contains(&(x, y)) {
                assert_eq!(v, clean[[y, x]]);
            }
        }
    }

    #[test]
    fn correction_uses_same_colour_good_neighbours() {
        // A CFA checkerboard of two levels: same-colour neighbours are 2 px away.
        let mut frame =
            Array2::from_shape_fn((9, 9), |(y, x)| if (x + y) % 2 == 0 { 100.0 } else { 10.0 });
        // Three defects in a corner, neighbours of each other: were they used, the corner's
        // median would be 1e6.
        let mut map = DefectMap::empty(9, 9);
        for (x, y) in [(0, 0), (2, 0), (0, 2)] {
            map.insert(x, y);
            frame[[y, x]] = 1e6;
        }
        let mut frame_mono = frame.clone();
        assert_eq!(correct_defects(frame.view_mut(), &map, true).unwrap(), 3);
        for (x, y) in [(0, 0), (2, 0), (0, 2)] {
            assert_eq!(frame[[y, x]], 100.0);
        }
        // Mono: the immediate neighbours, any colour (at (0, 0): 10, 10, 100).
        assert_eq!(
            correct_defects(frame_mono.view_mut(), &map, false).unwrap(),
            3
        );
        assert_eq!(frame_mono[[0, 0]], 10.0);
        // A lone pixel with no usable neighbour becomes NaN and is not counted.
        let mut tiny = Array2::from_elem((1, 1), 5.0f32);
        let mut all = DefectMap::empty(1, 1);
        all.insert(0, 0);
        assert_eq!(correct_defects(tiny.view_mut(), &all, true).unwrap(), 0);
        assert!(tiny[[0, 0]].is_nan());
        let mut other = DefectMap::empty(2, 2);
        assert!(other.merge(&all).is_err());
        let mut same = DefectMap::empty(1, 1);
        same.merge(&all).unwrap();
        assert_eq!(same.len(), 1);
    }
}
