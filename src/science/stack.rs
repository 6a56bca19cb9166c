//! Per-pixel stacking with rejection, and the band driver.
//!
//! Each output pixel reduces the N samples of that pixel (one per frame). NaN (and ±inf) is a
//! missing sample, ignored everywhere; a pixel with no finite sample gives NaN and 0 rejected.
//! Statistics are computed in `f64`, results are rounded to `f32`. Results do not depend on
//! thread scheduling: every pixel is reduced sequentially by one thread.
//!
//! # Definitions
//!
//! *Kept* samples are the finite samples not (yet) rejected; `w` are the frame weights (all 1
//! when `None`). "Mean" below is the weighted mean `Σw·x / Σw` over the kept samples; if the
//! kept weights sum to 0 (or are not finite) the plain mean is used instead (Siril's
//! fallback). Medians are exact; for an even count the median is the mean of the two middle
//! values (numpy's convention). All rejections are strict: a sample on a bound is kept.
//!
//! * `Sum`: `Σx` over the finite samples (weights ignored).
//! * `Mean`: the mean of all finite samples.
//! * `Median`: the median of the finite samples (weights ignored).
//! * `SigmaClip { low, high, iterations }` (astropy's `sigma_clip(data, sigma_lower=low,
//!   sigma_upper=high, maxiters=iterations, cenfunc='median', stdfunc='std')`): up to
//!   `iterations` passes of: `c` = median(kept), `s` = population std (ddof 0) of kept;
//!   reject `x < c − low·s` or `x > c + high·s`; stop early when a pass rejects nothing.
//!   Result: the mean of kept (NaN if a pass rejected everything, as astropy).
//! * `Winsorized { low, high, iterations }` (Siril's winsorized sigma clipping,
//!   `apply_rejection_float` in `src/stacking/rejection_float.c` of
//!   github.com/free-astro/siril): per pass, `c` = median(kept), `s` = sample std (ddof 1)
//!   of kept; then, on a copy `y` of kept, repeat: `s0 = s`, clamp
//!   `y ← clamp(y, c − 1.5·s0, c + 1.5·s0)` (in place, so clamps accumulate as in Siril),
//!   `s = 1.134 · std(y, ddof 1)`, until `|s − s0| ≤ 5·10⁻⁴ · s0`; then reject
//!   `x < c − low·s` or `x > c + high·s`. Siril's loop has no step limit; this one stops
//!   after 1000 steps, only to bound the work (convergence is slow with few samples and a
//!   strong outlier: hundreds of steps for N = 5, tens for N = 12, under 25 for N ≥ 40; a
//!   10-step cap would change the result of a large fraction of such pixels).
//! * `MadClip { low, high, iterations }`: per pass, `c` = median(kept),
//!   `s` = 1.4826 · MAD(kept); reject outside `[c − low·s, c + high·s]`. (Siril's k-MAD
//!   clipping uses the raw MAD as `s`, so its `k` is 1.4826 times ours.)
//! * `Percentile { low, high }` (Siril's percentile clipping, a single pass): `c` = median of
//!   the finite samples; reject `c − x > low·|c|` or `x − c > high·|c|` (`low`, `high` are
//!   fractions, e.g. 0.2 and 0.1). A zero median disables the rejection (as in Siril: the
//!   relative bounds would reject every non-zero sample).
//! * `LinearFit { low, high, iterations }` (Siril's linear fit clipping): per pass, sort kept
//!   as `y_0 ≤ … ≤ y_{n−1}` (ties in frame order), fit `y = a + b·i` by least squares,
//!   `σ` = mean `|y_i − (a + b·i)|`; reject `y_i < a + b·i − low·σ` or
//!   `y_i > a + b·i + high·σ`.
//!
//! The iterative methods stop after `iterations` passes or when a pass rejects nothing.
//! Winsorized, MadClip and LinearFit also stop (like Siril's guard) when fewer than 3 samples
//! are kept before a pass; SigmaClip has no such guard, so that it matches astropy. Every
//! method but SigmaClip discards (and stops at) a pass that would reject every kept sample, so
//! a pixel with a finite sample always gets a finite value.
//!
//! The value returned with the result is the number of finite samples rejected.
//!
//! # Implementation
//!
//! The finite samples of a pixel are turned into `Key`s: integers with the same order as the
//! values (IEEE total order), so that selections and range tests compare integers, which is
//! faster than comparing floats. Medians use `select_nth_unstable` (O(n), no sort). Each
//! clipping pass keeps the samples within an interval, so the kept samples are always those
//! within the intersection of the pass intervals; the passes compact the kept keys in place
//! and keep them partitioned around their middle index, so that a later pass re-selects its
//! median within one half only. The final mean runs over the kept keys (equal weights) or over
//! the original samples within the interval (in frame order, with their weights). LinearFit
//! sorts (key, frame) pairs once (ties in frame order); later passes only compact that list.
//!
//! [`stack_band`] parallelises over rows with rayon. Within a row, blocks of pixels are
//! gathered from the N frames into a transposed buffer (each pixel's samples contiguous), and
//! all per-pixel work uses per-thread memory: nothing is allocated per pixel.
//!
//! Median, SigmaClip and Winsorized without weights (the median ignores them) take an integer
//! path (`lanes`) for the pixels whose samples are all integers in `0..=65535`, as those of
//! uncalibrated unsigned 16-bit frames: 32 adjacent pixels are sorted at once by a sorting
//! network on 16-bit keys (vectorised across pixels), and each pass only moves the ends of
//! the kept range of the sorted samples, with exact integer sums. Median and SigmaClip give
//! the same bits as the general path; Winsorized sums its clamped samples in another order
//! (σ may differ in its last bits).

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2, Axis, s};
use rayon::prelude::*;

use super::stats::{MAD_TO_SIGMA, mad_around};

/// Stacking methods and their parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    Sum,
    Mean,
    Median,
    SigmaClip {
        low: f32,
        high: f32,
        iterations: u32,
    },
    Winsorized {
        low: f32,
        high: f32,
        iterations: u32,
    },
    MadClip {
        low: f32,
        high: f32,
        iterations: u32,
    },
    Percentile {
        low: f32,
        high: f32,
    },
    LinearFit {
        low: f32,
        high: f32,
        iterations: u32,
    },
}

impl Method {
    /// Builds a method from its name ("sum", "mean", "median", "sigma_clip", "winsorized",
    /// "mad_clip", "percentile", "linear_fit"; case-insensitive, `-` may replace `_`) and the
    /// rejection parameters, which the methods without rejection ignore (and `percentile`
    /// ignores `iterations`).
    pub fn parse(name: &str, low: f32, high: f32, iterations: u32) -> Option<Self> {
        Some(
            match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "sum" => Self::Sum,
                "mean" => Self::Mean,
                "median" => Self::Median,
                "sigma_clip" => Self::SigmaClip {
                    low,
                    high,
                    iterations,
                },
                "winsorized" => Self::Winsorized {
                    low,
                    high,
                    iterations,
                },
                "mad_clip" => Self::MadClip {
                    low,
                    high,
                    iterations,
                },
                "percentile" => Self::Percentile { low, high },
                "linear_fit" => Self::LinearFit {
                    low,
                    high,
                    iterations,
                },
                _ => return None,
            },
        )
    }

    /// The canonical name, as accepted by [`Method::parse`].
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Mean => "mean",
            Self::Median => "median",
            Self::SigmaClip { .. } => "sigma_clip",
            Self::Winsorized { .. } => "winsorized",
            Self::MadClip { .. } => "mad_clip",
            Self::Percentile { .. } => "percentile",
            Self::LinearFit { .. } => "linear_fit",
        }
    }
}

/// Working memory for [`reduce_with`], reused from pixel to pixel so that stacking allocates
/// nothing per pixel. Holds no state between calls.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The kept samples, compacted and partitioned around their median by the passes.
    keys: Vec<Key>,
    /// Absolute deviations (MAD) or the winsorized copy.
    wide: Vec<f64>,
    /// LinearFit: the kept samples with their frame index, sorted.
    ranked: Vec<(Key, u32)>,
}

/// Reduces one pixel's samples (NaN = missing). Returns the value and how many finite samples
/// were rejected. `weights` (one per sample, finite and ≥ 0, or `None` for equal weights)
/// apply to the mean-based methods. `values` may be reordered.
pub fn reduce(method: &Method, values: &mut [f32], weights: Option<&[f32]>) -> (f32, u32) {
    reduce_with(method, values, weights, &mut Scratch::default())
}

/// [`reduce`] with caller-provided working memory (no allocation once `scratch` has grown to
/// the sample count).
pub fn reduce_with(
    method: &Method,
    values: &mut [f32],
    weights: Option<&[f32]>,
    scratch: &mut Scratch,
) -> (f32, u32) {
    if let Some(w) = weights {
        assert_eq!(w.len(), values.len(), "one weight per sample");
    }
    reduce_samples(method, values, weights, scratch)
}

/// [`reduce_with`] without the checks: `values` has one sample per frame, in frame order.
fn reduce_samples(
    method: &Method,
    values: &[f32],
    weights: Option<&[f32]>,
    scratch: &mut Scratch,
) -> (f32, u32) {
    let Scratch { keys, wide, ranked } = scratch;
    // The finite samples as keys; the common case, all finite, is a loop without branches.
    keys.clear();
    let finite = values.iter().map(|x| u32::from(x.is_finite())).sum::<u32>() as usize;
    if finite == values.len() {
        keys.extend(values.iter().map(|&x| Key::new(x)));
    } else {
        keys.extend(
            values
                .iter()
                .filter(|x| x.is_finite())
                .map(|&x| Key::new(x)),
        );
    }
    if finite == 0 {
        return (f32::NAN, 0);
    }
    let (accepted, kept) = match *method {
        Method::Sum => {
            return (
                sum_pairs(keys.iter().map(|&x| (f64::from(x), 0.0))).0 as f32,
                0,
            );
        }
        Method::Median => {
            keys.select_nth_unstable(finite / 2);
            return (partitioned_median(keys) as f32, 0);
        }
        Method::LinearFit {
            low,
            high,
            iterations,
        } => {
            return linear_fit(values, weights, ranked, low, high, iterations);
        }
        Method::Mean => (KeyRange::FINITE, finite),
        Method::SigmaClip {
            low,
            high,
            iterations,
        } => clip(keys, iterations, Guard::Astropy, |kept, c| {
            around(c, std_around(kept, c, 0), low, high)
        }),
        Method::Winsorized {
            low,
            high,
            iterations,
        } => clip(keys, iterations, Guard::Siril, |kept, c| {
            around(c, winsorized_sigma(kept, c, wide), low, high)
        }),
        Method::MadClip {
            low,
            high,
            iterations,
        } => clip(keys, iterations, Guard::Siril, |kept, c| {
            around(c, MAD_TO_SIGMA * mad_around(kept, c, wide), low, high)
        }),
        Method::Percentile { low, high } => clip(keys, 1, Guard::NeverEmpty, |_, c| {
            if c == 0.0 {
                (f64::MIN, f64::MAX)
            } else {
                around(c, c.abs(), low, high)
            }
        }),
    };
    let value = match weights {
        // The kept samples are exactly keys[..kept].
        None => weighted_mean(keys[..kept].iter().map(|&k| (k.value(), 1.0, true))),
        // Weights follow the frame order: select the kept samples among the originals.
        Some(w) => weighted_mean(
            (values.iter().zip(w)).map(|(&x, &w)| (x, f64::from(w), accepted.contains_value(x))),
        ),
    };
    (value, (finite - kept) as u32)
}

/// Stacks a band: `frames` is `(N, rows, width)`; writes `(rows, width)` to `out`; returns
/// the number of rejected samples. rayon-parallel over rows; `weights` has one entry per
/// frame.
pub fn stack_band(
    method: &Method,
    frames: ArrayView3<f32>,
    weights: Option<&[f32]>,
    mut out: ArrayViewMut2<f32>,
) -> u64 {
    let (n, rows, width) = frames.dim();
    assert_eq!(
        out.dim(),
        (rows, width),
        "output shape must be (rows, width) of the frames"
    );
    if let Some(w) = weights {
        assert_eq!(w.len(), n, "one weight per frame");
    }
    if n == 0 {
        out.fill(f32::NAN);
        return 0;
    }
    match out.as_slice_mut() {
        Some(dst) => stack_rows(method, frames, weights, dst),
        None => {
            let mut dst = vec![0.0; rows * width];
            let rejected = stack_rows(method, frames, weights, &mut dst);
            out.assign(&ArrayView2::from_shape((rows, width), &dst).expect("rows × width buffer"));
            rejected
        }
    }
}

/// Pixels gathered at a time by [`stack_row`].
const BLOCK: usize = 64;

/// Per-thread memory of the band driver.
#[derive(Default)]
struct RowScratch {
    /// A block of pixels, transposed: pixel `p`'s samples are `block[p·N .. (p+1)·N]`.
    block: Vec<f32>,
    pixel: Scratch,
    lanes: lanes::Scratch,
}

/// `dst` is the standard-layout `(rows, width)` output; `frames` has at least one frame.
fn stack_rows(
    method: &Method,
    frames: ArrayView3<f32>,
    weights: Option<&[f32]>,
    dst: &mut [f32],
) -> u64 {
    let (n, _, width) = frames.dim();
    if width == 0 {
        return 0;
    }
    let network = lanes::eligible(method, weights, n).then(|| lanes::SortingNetwork::new(n));
    thread_local! {
        // Kept from band to band: the integer path's scratch is hundreds of KiB.
        static SCRATCH: std::cell::RefCell<RowScratch> = std::cell::RefCell::default();
    }
    dst.par_chunks_mut(width)
        .enumerate()
        .map(|(row, out)| {
            let frame_rows = frames.index_axis(Axis(1), row);
            SCRATCH.with_borrow_mut(|scratch| match &network {
                Some(network) => lanes::stack_row(method, network, frame_rows, out, scratch),
                None => stack_row(method, frame_rows, weights, out, scratch),
            })
        })
        .sum()
}

/// Stacks one row: `frame_rows` is `(N, width)`, that row of every frame.
fn stack_row(
    method: &Method,
    frame_rows: ArrayView2<f32>,
    weights: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut RowScratch,
) -> u64 {
    let n = frame_rows.nrows();
    let mut rejected = 0;
    for (x0, out_block) in (0..).step_by(BLOCK).zip(out.chunks_mut(BLOCK)) {
        let len = out_block.len();
        scratch.block.resize(len * n, 0.0);
        for (frame, frame_row) in frame_rows.outer_iter().enumerate() {
            let entries = scratch.block[frame..].iter_mut().step_by(n);
            for (entry, &x) in entries.zip(frame_row.slice(s![x0..x0 + len])) {
                *entry = x;
            }
        }
        for (column, o) in scratch.block.chunks_exact(n).zip(out_block) {
            let (value, r) = reduce_samples(method, column, weights, &mut scratch.pixel);
            *o = value;
            rejected += u64::from(r);
        }
    }
    rejected
}

/// A sample value as an integer with the same order (IEEE 754 total order, as
/// `f32::total_cmp`, except that −0 is stored as +0 so that the two zeros compare equal, as
/// floats do): negative numbers get their magnitude bits flipped. Integer comparisons are
/// faster than float comparisons in selections and range tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key(i32);

impl Key {
    const fn new(x: f32) -> Self {
        // Adding +0 turns −0 into +0 and changes nothing else.
        Self(flip_negative((x + 0.0).to_bits() as i32))
    }

    fn value(self) -> f32 {
        f32::from_bits(flip_negative(self.0) as u32)
    }
}

impl From<Key> for f64 {
    fn from(key: Key) -> f64 {
        f64::from(key.value())
    }
}

/// Flips the magnitude bits of negative numbers (its own inverse).
const fn flip_negative(bits: i32) -> i32 {
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// The keys of the finite values within `[low, high]` (`f64` bounds), so that testing a
/// sample takes two integer comparisons. NaN and ±inf are never within.
#[derive(Clone, Copy)]
struct KeyRange {
    first: Key,
    last: Key,
}

impl KeyRange {
    const FINITE: Self = Self {
        first: Key::new(f32::MIN),
        last: Key::new(f32::MAX),
    };

    fn new(low: f64, high: f64) -> Self {
        // The smallest f32 ≥ low and the largest f32 ≤ high, within the finite range.
        let (mut first, mut last) = (low as f32, high as f32);
        if f64::from(first) < low {
            first = first.next_up();
        }
        if f64::from(last) > high {
            last = last.next_down();
        }
        Self {
            first: Key::new(first.max(f32::MIN)),
            last: Key::new(last.min(f32::MAX)),
        }
    }

    fn contains(&self, key: Key) -> bool {
        (self.first <= key) & (key <= self.last)
    }

    /// `contains(Key::new(x))`, with float comparisons (false for NaN).
    fn contains_value(&self, x: f32) -> bool {
        (self.first.value() <= x) & (x <= self.last.value())
    }

    fn intersection(&self, other: &Self) -> Self {
        Self {
            first: self.first.max(other.first),
            last: self.last.min(other.last),
        }
    }

    /// How many of `keys` are within (a loop the compiler vectorises).
    fn count(&self, keys: &[Key]) -> usize {
        let (first, last) = (self.first.0, self.last.0);
        keys.iter()
            .map(|k| u32::from((first <= k.0) & (k.0 <= last)))
            .sum::<u32>() as usize
    }
}

/// When the passes of [`clip`] stop besides "nothing rejected" and the pass limit.
#[derive(Clone, Copy, PartialEq)]
enum Guard {
    /// No other stop: a pass may reject every sample (astropy's sigma_clip).
    Astropy,
    /// A pass that would reject every sample is discarded and stops the passes.
    NeverEmpty,
    /// As `NeverEmpty`, and no pass runs with fewer than 3 kept samples.
    Siril,
}

/// Runs up to `iterations` rejection passes on `keys` (the finite samples, compacted in
/// place). `bounds(kept, median)` gives each pass's interval of accepted values from the
/// samples still kept and their median; samples outside it are rejected. Returns the
/// intersection of the pass intervals and how many samples are kept: `keys[..kept]`.
///
/// The kept keys stay partitioned around their middle index `kept / 2` (smaller values
/// before, larger after), so that each median is found at that index: the first pass runs a
/// full selection, later passes only re-select within the half where the middle moved.
fn clip(
    keys: &mut [Key],
    iterations: u32,
    guard: Guard,
    mut bounds: impl FnMut(&[Key], f64) -> (f64, f64),
) -> (KeyRange, usize) {
    let min_count = if guard == Guard::Siril { 3 } else { 1 };
    let mut accepted = KeyRange::FINITE;
    let mut kept = keys.len();
    if iterations == 0 || kept < min_count {
        return (accepted, kept);
    }
    keys.select_nth_unstable(kept / 2);
    for _ in 0..iterations {
        if kept < min_count {
            break;
        }
        let current = &mut keys[..kept];
        let (low, high) = bounds(current, partitioned_median(current));
        let range = KeyRange::new(low, high);
        let survivors = range.count(current);
        if survivors == kept || (survivors == 0 && guard != Guard::Astropy) {
            break;
        }
        retain_partitioned(current, |k| range.contains(k));
        accepted = accepted.intersection(&range);
        kept = survivors;
    }
    (accepted, kept)
}

/// The median of `v` (not empty), partitioned around `v[v.len() / 2]`.
fn partitioned_median(v: &[Key]) -> f64 {
    let middle = v.len() / 2;
    let upper = f64::from(v[middle]);
    // The lower middle of an even count is the largest key below the middle.
    match v[..middle].iter().map(|k| k.0).max() {
        Some(lower) if v.len().is_multiple_of(2) => (f64::from(Key(lower)) + upper) / 2.0,
        _ => upper,
    }
}

/// Moves the keys of `v` passing `keep` to the front, in order; returns how many.
fn retain(v: &mut [Key], keep: impl Fn(Key) -> bool) -> usize {
    let mut count = 0;
    for i in 0..v.len() {
        if keep(v[i]) {
            v[count] = v[i];
            count += 1;
        }
    }
    count
}

/// As [`retain`], and re-partitions the survivors around their middle index. `v` must be
/// partitioned around `v[v.len() / 2]` (the pivot).
fn retain_partitioned(v: &mut [Key], keep: impl Fn(Key) -> bool) {
    let middle = v.len() / 2;
    // Survivors keep their order: those below the pivot, the pivot, those above.
    let below = v[..middle].iter().filter(|&&k| keep(k)).count();
    let pivot_kept = keep(v[middle]);
    let count = retain(v, keep);
    let survivors = &mut v[..count];
    let target = count / 2;
    if count == 0 || (pivot_kept && target == below) {
        // Nothing left, or the pivot is still the middle.
    } else if !pivot_kept {
        survivors.select_nth_unstable(target);
    } else if target < below {
        survivors[..below].select_nth_unstable(target);
    } else {
        survivors[below + 1..].select_nth_unstable(target - below - 1);
    }
}

/// The interval `[c − low·s, c + high·s]`.
fn around(c: f64, s: f64, low: f32, high: f32) -> (f64, f64) {
    (c - f64::from(low) * s, c + f64::from(high) * s)
}

/// Standard deviation of `v` (`ddof` 0: population, 1: sample), from the sums of the
/// deviations from `c` and of their squares: one pass, and accurate when `c` is central (the
/// median), since the squared mean deviation is then small.
fn std_around<T: Copy + Into<f64>>(v: &[T], c: f64, ddof: usize) -> f64 {
    let (sum, squares) = sum_pairs(v.iter().map(|&x| {
        let d = x.into() - c;
        (d, d * d)
    }));
    std_from_sums(sum, squares, v.len(), ddof)
}

/// The standard deviation of `n` samples from the sums of their deviations from a centre and
/// of the squared deviations (see [`std_around`]).
fn std_from_sums(sum: f64, squares: f64, n: usize, ddof: usize) -> f64 {
    let n = n as f64;
    ((squares - sum * sum / n) / (n - ddof as f64))
        .max(0.0)
        .sqrt()
}

/// Siril's winsorized σ of `v` (at least 2 samples) around its median `c`; `copy` is scratch.
fn winsorized_sigma(v: &[Key], c: f64, copy: &mut Vec<f64>) -> f64 {
    const MAX_STEPS: usize = 1000;
    let mut s = std_around(v, c, 1);
    copy.clear();
    copy.extend(v.iter().map(|&x| f64::from(x)));
    for _ in 0..MAX_STEPS {
        let s0 = s;
        let (low, high) = (c - 1.5 * s0, c + 1.5 * s0);
        for y in copy.iter_mut() {
            *y = y.clamp(low, high);
        }
        s = 1.134 * std_around(copy, c, 1);
        if (s - s0).abs() <= 5e-4 * s0 {
            break;
        }
    }
    s
}

/// Siril's linear fit clipping (see the module docs) of the finite `values`; `ranked` is
/// scratch.
fn linear_fit(
    values: &[f32],
    weights: Option<&[f32]>,
    ranked: &mut Vec<(Key, u32)>,
    low: f32,
    high: f32,
    iterations: u32,
) -> (f32, u32) {
    ranked.clear();
    let finite = values.iter().enumerate().filter(|(_, x)| x.is_finite());
    ranked.extend(finite.map(|(frame, &x)| (Key::new(x), frame as u32)));
    ranked.sort_unstable(); // by value, then frame
    let finite = ranked.len();
    let mut kept = finite;
    for _ in 0..iterations {
        if kept < 3 {
            break;
        }
        let sorted = &mut ranked[..kept];
        let (a, b, sigma) = fit_line(sorted);
        let (below, above) = (f64::from(low) * sigma, f64::from(high) * sigma);
        let accepted = |i: usize, (y, _): (Key, u32)| {
            let fit = a + b * i as f64;
            fit - below <= f64::from(y) && f64::from(y) <= fit + above
        };
        let survivors = sorted
            .iter()
            .enumerate()
            .filter(|&(i, &y)| accepted(i, y))
            .count();
        if survivors == kept || survivors == 0 {
            break;
        }
        let mut next = 0;
        for i in 0..kept {
            if accepted(i, sorted[i]) {
                sorted[next] = sorted[i];
                next += 1;
            }
        }
        kept = survivors;
    }
    let weight = |frame: u32| weights.map_or(1.0, |w| f64::from(w[frame as usize]));
    let value = weighted_mean(
        ranked[..kept]
            .iter()
            .map(|&(y, f)| (y.value(), weight(f), true)),
    );
    (value, (finite - kept) as u32)
}

/// Least-squares line `y = a + b·i` through sorted samples `y_i` (i = 0, 1, …), and the mean
/// absolute residual. Returns `(a, b, σ)`.
fn fit_line(sorted: &[(Key, u32)]) -> (f64, f64, f64) {
    let n = sorted.len() as f64;
    let mean_i = (n - 1.0) / 2.0;
    let ys = || {
        sorted
            .iter()
            .enumerate()
            .map(|(i, &(y, _))| (i as f64, f64::from(y)))
    };
    let mean_y = sum_pairs(ys().map(|(_, y)| (y, 0.0))).0 / n;
    let (sxy, sxx) =
        sum_pairs(ys().map(|(i, y)| ((i - mean_i) * (y - mean_y), (i - mean_i).powi(2))));
    let b = sxy / sxx;
    let a = mean_y - b * mean_i;
    let residuals = sum_pairs(ys().map(|(i, y)| ((y - (a + b * i)).abs(), 0.0))).0;
    (a, b, residuals / n)
}

/// The weighted mean `Σw·x / Σw` of the samples `(x, w, keep)` with `keep`; the plain mean
/// of those samples when their weights do not sum to a positive number; NaN when none is kept.
fn weighted_mean(samples: impl Iterator<Item = (f32, f64, bool)> + Clone) -> f32 {
    let kept_terms = |keep: bool, terms: (f64, f64)| if keep { terms } else { (0.0, 0.0) };
    let (weighted, total) = sum_pairs(
        samples
            .clone()
            .map(|(x, w, keep)| kept_terms(keep, (w * f64::from(x), w))),
    );
    let mean = if total > 0.0 {
        weighted / total
    } else {
        let (sum, count) =
            sum_pairs(samples.map(|(x, _, keep)| kept_terms(keep, (f64::from(x), 1.0))));
        // Not 0 / 0: that NaN has its sign bit set on x86, unlike every other NaN of a stack.
        if count == 0.0 {
            return f32::NAN;
        }
        sum / count
    };
    mean as f32
}

/// The sum of a sequence of pairs, accumulated in four interleaved `f64` lanes (item `j` goes
/// to lane `j mod 4`): a fixed summation order (deterministic) without one long chain of
/// dependent additions.
#[inline(always)]
fn sum_pairs(mut terms: impl Iterator<Item = (f64, f64)>) -> (f64, f64) {
    let mut lanes = [(0.0, 0.0); 4];
    'terms: loop {
        for lane in &mut lanes {
            let Some((a, b)) = terms.next() else {
                break 'terms;
            };
            lane.0 += a;
            lane.1 += b;
        }
    }
    let [l0, l1, l2, l3] = lanes;
    ((l0.0 + l1.0) + (l2.0 + l3.0), (l0.1 + l1.1) + (l2.1 + l3.1))
}

/// The integer path of [`stack_band`]: median, sigma clipping and winsorized clipping without
/// weights, for pixels whose samples are all integers in `0..=65535` (uncalibrated unsigned
/// 16-bit frames). Same results as [`reduce_samples`], faster.
///
/// `LANES` adjacent pixels are processed together, their samples laid out one row per frame
/// (as the frames store them), so that the work vectorises across pixels: each row is
/// converted to `u16` keys while the sums of the values and of their squares accumulate, then
/// a sorting network (Batcher's odd–even merge sort, one `min`/`max` per comparator and lane)
/// sorts every pixel's samples at once. Each clipping pass keeps an interval of values, so the
/// kept samples of a pixel are a contiguous range of its sorted samples: a pass moves the
/// ends of that range inward (subtracting what it rejects from the sums), and its median is
/// read at the middle of the range. With integer samples the deviation sums of
/// [`std_around`] are exact (integers and half-integers well below 2⁵³), so computing them
/// from the integer sums gives the same `f64` values, bit for bit; so do the medians and the
/// final means. Winsorized clipping clamps the samples in place step after step; since every
/// step's interval contains the median, the clamped samples are the originals clamped to the
/// intersection of the step intervals, and their sums come from the counts clamped at each
/// end and the exact sums in between (the clamped terms are rounded in another order than in
/// [`winsorized_sigma`], a difference in the last bits of σ).
///
/// A pixel with a sample that is not such an integer (NaN, a fraction, a negative value) is
/// reduced by [`reduce_samples`].
mod lanes {
    use ndarray::{ArrayView2, s};

    use super::{Method, RowScratch, around, reduce_samples, std_from_sums};

    /// Pixels processed together.
    pub(super) const LANES: usize = 32;

    /// Pixels of a row gathered at a time (the scratch holds `SEGMENT × N` samples).
    const SEGMENT: usize = 16 * LANES;

    /// One frame's samples of `LANES` adjacent pixels, as `u16` values with the top bit
    /// flipped, so that signed comparisons order them as unsigned ones.
    pub(super) type Row = [i16; LANES];

    /// The most frames for this path (the network has O(N·log²N) comparators).
    const MAX_FRAMES: usize = 1024;

    /// Whether [`stack_row`] can stack `n` frames by `method`.
    pub(super) fn eligible(method: &Method, weights: Option<&[f32]>, n: usize) -> bool {
        (1..=MAX_FRAMES).contains(&n)
            && match method {
                // The median ignores weights.
                Method::Median => true,
                Method::SigmaClip { .. } | Method::Winsorized { .. } => weights.is_none(),
                _ => false,
            }
    }

    /// The comparators of Batcher's odd–even merge sort of `n` elements (those of the next
    /// power of two, without the ones that involve the missing elements: padding with +∞
    /// would make them no-ops), as runs of independent comparators between two ranges.
    pub(super) struct SortingNetwork {
        n: usize,
        /// `(a, k, len)`: compare-exchange elements `a + t` and `a + k + t` for `t < len`
        /// (`len ≤ k`, so the two ranges do not overlap).
        runs: Vec<(u16, u16, u16)>,
    }

    impl SortingNetwork {
        pub(super) fn new(n: usize) -> Self {
            assert!(n <= MAX_FRAMES);
            let mut runs: Vec<(u16, u16, u16)> = Vec::new();
            let mut p = 1;
            while p < n {
                let mut k = p;
                while k > 0 {
                    let mut j = k % p;
                    while j + k < n {
                        // The comparators of one (p, k, j) are independent: consecutive ones
                        // make one run.
                        let mut extend = false;
                        for i in 0..k.min(n - j - k) {
                            if (i + j) / (2 * p) == (i + j + k) / (2 * p) {
                                match runs.last_mut() {
                                    Some(run) if extend => run.2 += 1,
                                    _ => runs.push(((i + j) as u16, k as u16, 1)),
                                }
                                extend = true;
                            } else {
                                extend = false;
                            }
                        }
                        j += 2 * k;
                    }
                    k /= 2;
                }
                p *= 2;
            }
            Self { n, runs }
        }

        /// [`SortingNetwork::sort`], for the tests.
        #[cfg(test)]
        pub(super) fn sort_rows(&self, rows: &mut [Row]) {
            self.sort(rows);
        }

        /// Sorts each lane of `rows` (`n` rows).
        #[inline(always)]
        fn sort(&self, rows: &mut [Row]) {
            assert_eq!(rows.len(), self.n, "one row per frame");
            for &(a, k, len) in &self.runs {
                let (a, k, len) = (usize::from(a), usize::from(k), usize::from(len));
                let (head, tail) = rows.split_at_mut(a + k);
                for (low, high) in head[a..a + len].iter_mut().zip(&mut tail[..len]) {
                    for l in 0..LANES {
                        let (x, y) = (low[l], high[l]);
                        low[l] = x.min(y);
                        high[l] = x.max(y);
                    }
                }
            }
        }
    }

    /// Stacks one row: `frame_rows` is `(N, width)`, that row of every frame. Returns the
    /// number of rejected samples.
    pub(super) fn stack_row(
        method: &Method,
        network: &SortingNetwork,
        frame_rows: ArrayView2<f32>,
        out: &mut [f32],
        scratch: &mut RowScratch,
    ) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of a
            // function compiled with `target_feature(enable = "avx2")`.
            return unsafe { stack_row_avx2(method, network, frame_rows, out, scratch) };
        }
        stack_row_body(method, network, frame_rows, out, scratch)
    }

    /// [`stack_row_body`] compiled for AVX2 (twice the vector width of the x86-64 baseline).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn stack_row_avx2(
        method: &Method,
        network: &SortingNetwork,
        frame_rows: ArrayView2<f32>,
        out: &mut [f32],
        scratch: &mut RowScratch,
    ) -> u64 {
        stack_row_body(method, network, frame_rows, out, scratch)
    }

    /// Working memory of [`stack_row`], per thread.
    #[derive(Default)]
    pub(super) struct Scratch {
        /// Block `b` (pixels `b·LANES ..` of the segment) has rows `b·N .. (b + 1)·N`, one
        /// per frame.
        rows: Vec<Row>,
        /// Per block and lane: 1 once a sample is not an integer in `0..=65535`.
        other: Vec<[u8; LANES]>,
        /// Per block and lane: the sum of the samples and of their squares.
        sums: Vec<[u32; LANES]>,
        squares: Vec<[u64; LANES]>,
        /// A copy of a frame's row when it is not contiguous.
        row: Vec<f32>,
    }

    #[inline(always)]
    fn stack_row_body(
        method: &Method,
        network: &SortingNetwork,
        frame_rows: ArrayView2<f32>,
        out: &mut [f32],
        scratch: &mut RowScratch,
    ) -> u64 {
        let n = frame_rows.nrows();
        let RowScratch {
            block,
            pixel,
            lanes:
                Scratch {
                    rows,
                    other,
                    sums,
                    squares,
                    row: row_copy,
                },
        } = scratch;
        let mut rejected = 0;
        for (x0, out) in (0..).step_by(SEGMENT).zip(out.chunks_mut(SEGMENT)) {
            let width = out.len();
            let blocks = width.div_ceil(LANES);
            rows.resize(blocks * n, [0; LANES]);
            other.clear();
            other.resize(blocks, [0; LANES]);
            sums.clear();
            sums.resize(blocks, [0; LANES]);
            squares.clear();
            squares.resize(blocks, [0; LANES]);
            // Each frame's row in turn (one contiguous stream), into the blocks' rows.
            for (f, frame_row) in frame_rows.outer_iter().enumerate() {
                let frame_row = frame_row.slice_move(s![x0..x0 + width]);
                let row = match frame_row.to_slice() {
                    Some(row) => row,
                    None => {
                        row_copy.clear();
                        row_copy.extend(frame_row.iter());
                        &row_copy[..]
                    }
                };
                let chunks = row.chunks(LANES).zip(rows[f..].iter_mut().step_by(n));
                let per_lane = other
                    .iter_mut()
                    .zip(sums.iter_mut())
                    .zip(squares.iter_mut());
                for ((chunk, keys), ((other, sums), squares)) in chunks.zip(per_lane) {
                    // Lanes past the end of the row read 0.
                    let x: [f32; LANES] = chunk.try_into().unwrap_or_else(|_| {
                        let mut x = [0.0; LANES];
                        x[..chunk.len()].copy_from_slice(chunk);
                        x
                    });
                    for l in 0..LANES {
                        // An integer in 0..=65535 is unchanged by clamping to that range, and
                        // 2²³ + it is exact, with the integer in the low mantissa bits (NaN
                        // stays NaN, which differs from itself).
                        let clamped = x[l].clamp(0.0, 65535.0);
                        let shifted = clamped + 8_388_608.0;
                        let exact = shifted - 8_388_608.0 == x[l];
                        other[l] |= u8::from(!exact);
                        let v = shifted.to_bits() & 0xffff;
                        keys[l] = (v as u16 ^ 0x8000) as i16;
                        sums[l] += v;
                        squares[l] += u64::from(v * v);
                    }
                }
            }
            let blocks = out.chunks_mut(LANES).zip(rows.chunks_exact_mut(n));
            for (b, (out_block, block_rows)) in blocks.enumerate() {
                network.sort(block_rows);
                for (l, o) in out_block.iter_mut().enumerate() {
                    let (value, r) = if other[b][l] == 0 {
                        let sorted = Sorted {
                            rows: block_rows,
                            lane: l,
                        };
                        let all = Kept {
                            lo: 0,
                            hi: n,
                            sum: i64::from(sums[b][l]),
                            squares: squares[b][l] as i64,
                        };
                        reduce_lane(method, &sorted, all)
                    } else {
                        block.clear();
                        block.extend(frame_rows.column(x0 + b * LANES + l).iter());
                        reduce_samples(method, block, None, pixel)
                    };
                    *o = value;
                    rejected += u64::from(r);
                }
            }
        }
        rejected
    }

    /// One lane (pixel) of the sorted rows.
    struct Sorted<'a> {
        rows: &'a [Row],
        lane: usize,
    }

    impl Sorted<'_> {
        #[inline(always)]
        fn get(&self, k: usize) -> i64 {
            i64::from(self.rows[k][self.lane] as u16 ^ 0x8000)
        }
    }

    /// The kept samples of a pixel: sorted samples `lo..hi`, their sum and sum of squares.
    #[derive(Clone, Copy)]
    struct Kept {
        lo: usize,
        hi: usize,
        sum: i64,
        squares: i64,
    }

    impl Kept {
        fn count(&self) -> usize {
            self.hi - self.lo
        }

        /// Twice the median (an integer). Not empty.
        fn twice_median(&self, sorted: &Sorted) -> i64 {
            let n = self.count();
            sorted.get(self.lo + (n - 1) / 2) + sorted.get(self.lo + n / 2)
        }

        /// The sums of the deviations from `c2 / 2` and of their squares: the exact values
        /// that [`super::std_around`] computes from integer samples.
        fn deviations(&self, c2: i64) -> (f64, f64) {
            let n = self.count() as i64;
            let twice = 2 * self.sum - n * c2;
            let four_times = 4 * self.squares - 4 * c2 * self.sum + n * c2 * c2;
            (twice as f64 / 2.0, four_times as f64 / 4.0)
        }

        /// The samples within `[low, high]` (NaN bounds reject nothing, as [`super::KeyRange`]).
        fn within(mut self, sorted: &Sorted, low: f64, high: f64) -> Self {
            while self.lo < self.hi && (sorted.get(self.lo) as f64) < low {
                let x = sorted.get(self.lo);
                self.sum -= x;
                self.squares -= x * x;
                self.lo += 1;
            }
            while self.hi > self.lo && (sorted.get(self.hi - 1) as f64) > high {
                let x = sorted.get(self.hi - 1);
                self.sum -= x;
                self.squares -= x * x;
                self.hi -= 1;
            }
            self
        }

        /// The mean (NaN when empty), as [`super::weighted_mean`] with equal weights.
        fn mean(&self) -> f32 {
            match self.count() {
                0 => f32::NAN,
                n => (self.sum as f64 / n as f64) as f32,
            }
        }
    }

    /// [`super::reduce_samples`] of one pixel's sorted samples (all of them finite).
    fn reduce_lane(method: &Method, sorted: &Sorted, all: Kept) -> (f32, u32) {
        let n = all.count();
        let kept = match *method {
            Method::Median => return ((all.twice_median(sorted) as f64 / 2.0) as f32, 0),
            Method::SigmaClip {
                low,
                high,
                iterations,
            } => clip(sorted, all, iterations, 1, |kept, c2| {
                let (sum, squares) = kept.deviations(c2);
                let s = std_from_sums(sum, squares, kept.count(), 0);
                around(c2 as f64 / 2.0, s, low, high)
            }),
            Method::Winsorized {
                low,
                high,
                iterations,
            } => clip(sorted, all, iterations, 3, |kept, c2| {
                let s = winsorized_sigma(sorted, kept, c2);
                around(c2 as f64 / 2.0, s, low, high)
            }),
            _ => unreachable!("not an integer-path method"),
        };
        (kept.mean(), (n - kept.count()) as u32)
    }

    /// [`super::clip`] on sorted samples: with `min_count` 1 a pass may reject everything
    /// (astropy), with 3 the passes need 3 samples and one that would reject everything is
    /// discarded (Siril).
    fn clip(
        sorted: &Sorted,
        all: Kept,
        iterations: u32,
        min_count: usize,
        mut bounds: impl FnMut(&Kept, i64) -> (f64, f64),
    ) -> Kept {
        let mut kept = all;
        for _ in 0..iterations {
            if kept.count() < min_count {
                break;
            }
            let (low, high) = bounds(&kept, kept.twice_median(sorted));
            let next = kept.within(sorted, low, high);
            if next.count() == kept.count() || (next.count() == 0 && min_count > 1) {
                break;
            }
            kept = next;
        }
        kept
    }

    /// [`super::winsorized_sigma`] of the kept samples around their median `c2 / 2`.
    fn winsorized_sigma(sorted: &Sorted, kept: &Kept, c2: i64) -> f64 {
        const MAX_STEPS: usize = 1000;
        let n = kept.count();
        let c = c2 as f64 / 2.0;
        let (sum, squares) = kept.deviations(c2);
        let mut s = std_from_sums(sum, squares, n, 1);
        // The samples strictly inside the clamp interval [low, high] (the intersection of
        // the step intervals so far); those below are clamped to low, those above to high.
        let mut inside = *kept;
        let (mut low, mut high) = (f64::NEG_INFINITY, f64::INFINITY);
        for _ in 0..MAX_STEPS {
            let s0 = s;
            low = low.max(c - 1.5 * s0);
            high = high.min(c + 1.5 * s0);
            inside = inside.within(sorted, low, high);
            let below = (inside.lo - kept.lo) as f64;
            let above = (kept.hi - inside.hi) as f64;
            let (d_low, d_high) = (low - c, high - c);
            let (sum, squares) = inside.deviations(c2);
            let sum = below * d_low + sum + above * d_high;
            let squares = below * (d_low * d_low) + squares + above * (d_high * d_high);
            s = 1.134 * std_from_sums(sum, squares, n, 1);
            if (s - s0).abs() <= 5e-4 * s0 {
                break;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};

    const NAN: f32 = f32::NAN;

    fn run(method: Method, values: &[f32]) -> (f32, u32) {
        reduce(&method, &mut values.to_vec(), None)
    }

    fn sigma(low: f32, high: f32, iterations: u32) -> Method {
        Method::SigmaClip {
            low,
            high,
            iterations,
        }
    }

    #[test]
    fn sum_mean_median() {
        assert_eq!(run(Method::Sum, &[1.0, NAN, 2.0, 3.0]), (6.0, 0));
        assert_eq!(run(Method::Mean, &[1.0, NAN, 2.0, 4.5]), (2.5, 0));
        assert_eq!(run(Method::Median, &[5.0, 1.0, NAN, 3.0]), (3.0, 0));
        assert_eq!(run(Method::Median, &[5.0, 1.0, NAN, 3.0, 4.0]), (3.5, 0));
        assert_eq!(run(Method::Mean, &[f32::INFINITY, 2.0]), (2.0, 0));
    }

    #[test]
    fn weights_apply_to_means_only() {
        let w = [1.0, 1.0, 2.0, 5.0];
        let mut v = [1.0, 2.0, 3.0, NAN];
        assert_eq!(reduce(&Method::Mean, &mut v, Some(&w)), (2.25, 0));
        assert_eq!(reduce(&Method::Sum, &mut v, Some(&w)), (6.0, 0));
        assert_eq!(reduce(&Method::Median, &mut v, Some(&w)), (2.0, 0));
        // The outlier's huge weight does not matter once it is rejected; the other weights do.
        let mut v = [1.0, 2.0, 3.0, 4.0, 5.0, 100.0];
        let w = [1.0, 1.0, 1.0, 1.0, 4.0, 1000.0];
        assert_eq!(reduce(&sigma(2.0, 2.0, 5), &mut v, Some(&w)), (3.75, 1));
        // Zero total weight falls back to the plain mean.
        assert_eq!(
            reduce(&Method::Mean, &mut [1.0, 3.0], Some(&[0.0, 0.0])),
            (2.0, 0)
        );
    }

    #[test]
    fn all_missing_gives_nan_and_no_rejection() {
        let methods = [
            Method::Sum,
            Method::Mean,
            Method::Median,
            sigma(3.0, 3.0, 5),
            Method::Winsorized {
                low: 3.0,
                high: 3.0,
                iterations: 5,
            },
            Method::MadClip {
                low: 3.0,
                high: 3.0,
                iterations: 5,
            },
            Method::Percentile {
                low: 0.1,
                high: 0.1,
            },
            Method::LinearFit {
                low: 3.0,
                high: 3.0,
                iterations: 5,
            },
        ];
        for method in methods {
            for values in [&[NAN, NAN, NAN][..], &[]] {
                let (value, rejected) = run(method, values);
                assert!(value.is_nan() && rejected == 0, "{method:?}");
            }
            // A single finite sample is kept as is.
            assert_eq!(run(method, &[NAN, 7.0, NAN]), (7.0, 0), "{method:?}");
        }
    }

    #[test]
    fn sigma_clip_matches_astropy_by_hand() {
        // Pass 1: c = 3.5, s = 36.17 → 100 out; pass 2: c = 3, s = √2 → nothing out.
        assert_eq!(
            run(sigma(2.0, 2.0, 5), &[1.0, NAN, 2.0, 3.0, 4.0, 5.0, 100.0]),
            (3.0, 1)
        );
        // Needs two passes (100 first, then 30); checked against astropy's sigma_clip.
        let data = [
            10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 30.0, 100.0,
        ];
        assert_eq!(run(sigma(2.0, 2.0, 1), &data), (15.6, 1));
        assert_eq!(run(sigma(2.0, 2.0, 2), &data), (14.0, 2));
        assert_eq!(run(sigma(2.0, 2.0, 5), &data), (14.0, 2));
        assert_eq!(run(sigma(2.0, 2.0, 0), &data), run(Method::Mean, &data));
        // Like astropy, a pass may reject everything: c = 2, s = 1, bounds [1.5, 2.5].
        let (value, rejected) = run(sigma(0.5, 0.5, 5), &[1.0, 3.0]);
        assert!(value.is_nan());
        assert_eq!(rejected, 2);
        // Flat samples: s = 0, nothing rejected (strict comparisons).
        assert_eq!(run(sigma(1.0, 1.0, 5), &[4.0, 4.0, 4.0]), (4.0, 0));
    }

    #[test]
    fn asymmetric_bounds() {
        // c = 10.5, s ≈ 4.06 (with 0): low = 2 keeps 0 ([2.4, …] would not) → check both sides.
        let data = [0.0, 10.0, 10.0, 11.0, 11.0, 12.0, 9.0, 10.0, 11.0, 20.0];
        let (_, rejected_low_only) = run(sigma(1.5, 10.0, 1), &data);
        let (_, rejected_high_only) = run(sigma(10.0, 1.5, 1), &data);
        assert_eq!((rejected_low_only, rejected_high_only), (1, 1));
    }

    #[test]
    fn winsorized_rejects_outlier() {
        // c = 10, winsorized σ ≈ 1.70 (after 12 steps) → bounds ≈ [4.9, 15.1].
        let data = [10.0, 11.0, 9.0, 10.0, NAN, 12.0, 8.0, 10.0, 50.0];
        let method = Method::Winsorized {
            low: 3.0,
            high: 3.0,
            iterations: 5,
        };
        assert_eq!(run(method, &data), (10.0, 1));
        let mut copy = Vec::new();
        let samples = [10.0, 11.0, 9.0, 10.0, 12.0, 8.0, 10.0, 50.0].map(Key::new);
        let s = winsorized_sigma(&samples, 10.0, &mut copy);
        assert!((s - 1.6968).abs() < 1e-3, "{s}");
        // Fewer than 3 samples: no pass.
        assert_eq!(run(method, &[1.0, 1000.0]), (500.5, 0));
    }

    #[test]
    fn mad_clip_iterates_and_stops_below_three() {
        let method = |iterations| Method::MadClip {
            low: 3.0,
            high: 3.0,
            iterations,
        };
        // c = 4.5, MAD = 2 → s = 2.9652, bounds [−4.4, 13.4]: 100 out; pass 2 rejects nothing.
        assert_eq!(
            run(method(5), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]),
            (4.0, 1)
        );
        // 3 samples: one pass (c = 2, MAD = 1) rejects 100; 2 left, so no further pass.
        assert_eq!(run(method(5), &[1.0, 2.0, 100.0]), (1.5, 1));
        // k = 1: pass 1 (c = 51, s = 73.4) rejects 1000, pass 2 (c = 2, s = 1.48) rejects 100.
        let k1 = |iterations| Method::MadClip {
            low: 1.0,
            high: 1.0,
            iterations,
        };
        assert_eq!(run(k1(1), &[1.0, 2.0, 100.0, 1000.0]), (34.333332, 1));
        assert_eq!(run(k1(5), &[1.0, 2.0, 100.0, 1000.0]), (1.5, 2));
    }

    #[test]
    fn percentile_clip() {
        let method = Method::Percentile {
            low: 0.05,
            high: 0.1,
        };
        // median 100: keep [95, 110].
        assert_eq!(
            run(method, &[100.0, 100.0, 100.0, 90.0, 115.0, 130.0, NAN]),
            (100.0, 3)
        );
        assert_eq!(run(method, &[100.0, 100.0, 100.0, 96.0, 110.0]), (101.2, 0));
        // A zero median disables the rejection.
        assert_eq!(run(method, &[-1.0, 0.0, 0.0, 5.0]), (1.0, 0));
        // A negative median uses |c|: keep [−105, −90].
        assert_eq!(
            run(method, &[-100.0, -100.0, -100.0, -106.0, -89.0]),
            (-100.0, 2)
        );
    }

    #[test]
    fn linear_fit_clip() {
        let method = Method::LinearFit {
            low: 2.0,
            high: 2.0,
            iterations: 5,
        };
        // Pass 1: a ≈ −4.82, b ≈ 3.18, σ ≈ 7.42 rejects 50; pass 2 fits 1..9 exactly.
        let data = [50.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, NAN];
        assert_eq!(run(method, &data), (5.0, 1));
        // Weights follow the samples through the sort.
        let weights: Vec<f32> = (0..data.len())
            .map(|i| if i == 1 { 3.0 } else { 1.0 })
            .collect();
        let (value, rejected) = reduce(&method, &mut data.to_vec(), Some(&weights));
        assert_eq!((value, rejected), (63.0 / 11.0, 1));
        // Fewer than 3 samples: no pass.
        assert_eq!(run(method, &[1.0, 100.0]), (50.5, 0));
    }

    #[test]
    fn keys_order_like_floats() {
        let ordered = [
            f32::NEG_INFINITY,
            -f32::MAX,
            -1.5,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for pair in ordered.windows(2) {
            assert!(Key::new(pair[0]) < Key::new(pair[1]), "{pair:?}");
        }
        for x in ordered {
            assert_eq!(Key::new(x).value().to_bits(), x.to_bits());
        }
        // The two zeros are equal, as floats.
        assert_eq!(Key::new(-0.0), Key::new(0.0));
        assert!(KeyRange::new(0.0, 0.0).contains(Key::new(-0.0)));
    }

    #[test]
    fn key_range_matches_f64_bounds() {
        let samples = [-3.0f32, -1.0, 0.1, 0.3, 1.0, 2.5, 1e30];
        let bounds = [
            (0.1, 1.0),
            (0.1000000001, 0.99999999),
            (0.1000000016, 1.0000001),
            (f64::from(0.1f32), f64::from(0.3f32)),
            (-1.0, 2.5),
            (-1e40, 1e40),
        ];
        for (low, high) in bounds {
            let range = KeyRange::new(low, high);
            for x in samples {
                let inside = low <= f64::from(x) && f64::from(x) <= high;
                assert_eq!(
                    range.contains(Key::new(x)),
                    inside,
                    "{x} in [{low}, {high}]"
                );
                assert_eq!(range.contains_value(x), inside, "{x} in [{low}, {high}]");
            }
        }
        for range in [KeyRange::FINITE, KeyRange::new(-1e40, 1e40)] {
            for missing in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                assert!(!range.contains(Key::new(missing)), "{missing}");
                assert!(!range.contains_value(missing), "{missing}");
            }
            assert!(range.contains(Key::new(f32::MAX)) && range.contains(Key::new(f32::MIN)));
        }
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            Method::parse("Sigma-Clip", 2.5, 3.0, 4),
            Some(sigma(2.5, 3.0, 4))
        );
        assert_eq!(
            Method::parse("percentile", 0.2, 0.1, 9),
            Some(Method::Percentile {
                low: 0.2,
                high: 0.1
            })
        );
        assert_eq!(Method::parse("median", 0.0, 0.0, 0), Some(Method::Median));
        assert_eq!(Method::parse("kappa", 1.0, 1.0, 1), None);
        let m = Method::Winsorized {
            low: 1.0,
            high: 2.0,
            iterations: 3,
        };
        assert_eq!(Method::parse(m.name(), 1.0, 2.0, 3), Some(m));
    }

    /// A band whose pixel (r, x) holds 10 + r + x in every frame, plus one outlier per pixel
    /// in a frame that depends on the pixel, and NaN borders in frame 0.
    fn band(n: usize, rows: usize, width: usize) -> Array3<f32> {
        let mut frames = Array3::from_shape_fn((n, rows, width), |(f, r, x)| {
            let base = (10 + r + x) as f32;
            base + if f % 2 == 0 { 0.25 } else { -0.25 }
        });
        for r in 0..rows {
            for x in 0..width {
                frames[((r * 7 + x) % n, r, x)] = 1.0e4;
            }
            frames[(0, r, 0)] = NAN;
        }
        frames
    }

    #[test]
    fn stack_band_matches_reduce_per_pixel() {
        let (n, rows, width) = (9, 5, 2 * BLOCK + 3);
        let frames = band(n, rows, width);
        let weights: Vec<f32> = (0..n).map(|f| 1.0 + f as f32 / 4.0).collect();
        let method = sigma(3.0, 3.0, 5);
        let mut out = Array2::zeros((rows, width));
        let rejected = stack_band(&method, frames.view(), Some(&weights), out.view_mut());
        let mut expected_rejected = 0;
        for r in 0..rows {
            for x in 0..width {
                let mut column: Vec<f32> = frames.slice(s![.., r, x]).to_vec();
                let (value, rej) = reduce(&method, &mut column, Some(&weights));
                assert_eq!(out[(r, x)].to_bits(), value.to_bits(), "pixel ({r}, {x})");
                expected_rejected += u64::from(rej);
            }
        }
        assert_eq!(rejected, expected_rejected);
        // Every outlier is rejected, except pixel (0, 0)'s, which frame 0's NaN border replaced.
        assert_eq!(rejected, (rows * width - 1) as u64);
    }

    #[test]
    fn sorting_network_sorts_every_lane() {
        use lanes::{LANES, Row, SortingNetwork};
        let mut state = 1u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 16) as i16
        };
        for n in (1..=70).chain([99, 100, 128, 129, 257]) {
            let network = SortingNetwork::new(n);
            // Few distinct values in some lanes (ties), the full range in others.
            let mut rows: Vec<Row> = (0..n)
                .map(|_| std::array::from_fn(|l| if l % 2 == 0 { next() % 4 } else { next() }))
                .collect();
            let mut expected: Vec<Vec<i16>> = (0..LANES)
                .map(|l| {
                    let mut lane: Vec<i16> = rows.iter().map(|r| r[l]).collect();
                    lane.sort_unstable();
                    lane
                })
                .collect();
            network.sort_rows(&mut rows);
            for (l, lane) in expected.iter_mut().enumerate() {
                let got: Vec<i16> = rows.iter().map(|r| r[l]).collect();
                assert_eq!(&got, lane, "n = {n}, lane {l}");
            }
        }
    }

    /// uint16-like frames: noise around a level, hot and cold outliers, saturated and zero
    /// samples, and in some pixels a sample that is not a 16-bit integer (NaN, a fraction, a
    /// negative or too large value) so that the integer path falls back for them.
    fn integer_band(n: usize, rows: usize, width: usize, seed: u32) -> Array3<f32> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state >> 8
        };
        let mut frames = Array3::from_shape_fn((n, rows, width), |(_, r, x)| {
            let level = 500 + 40 * ((r + x) % 7) as u32;
            let u = next();
            let noise = (u % 61) as f32 - 30.0;
            match u % 1000 {
                0..=14 => (level + 2000 + u % 9000) as f32,
                15..=22 => (level / 2 - u % 200) as f32,
                23 => 65535.0,
                24 => 0.0,
                _ => level as f32 + noise,
            }
        });
        let odd = [f32::NAN, 3.5, -2.0, 70000.0, f32::INFINITY, -0.0];
        for (k, &v) in odd.iter().enumerate() {
            let (f, r, x) = (k % n, k % rows, (397 * k + 3) % width);
            frames[(f, r, x)] = v;
        }
        frames
    }

    #[test]
    fn integer_path_matches_reduce_per_pixel() {
        let methods = [
            Method::Median,
            sigma(3.0, 3.0, 5),
            sigma(1.5, 2.5, 3),
            sigma(0.1, 0.1, 5),
            Method::Winsorized {
                low: 3.0,
                high: 3.0,
                iterations: 5,
            },
            Method::Winsorized {
                low: 1.0,
                high: 2.0,
                iterations: 10,
            },
        ];
        for (n, width) in [
            (1, 7),
            (2, 33),
            (3, 40),
            (5, 70),
            (12, 64),
            (41, 37),
            (100, 45),
        ] {
            let rows = 3;
            let frames = integer_band(n, rows, width, n as u32);
            for method in methods {
                let mut out = Array2::zeros((rows, width));
                let rejected = stack_band(&method, frames.view(), None, out.view_mut());
                let mut expected_rejected = 0;
                for r in 0..rows {
                    for x in 0..width {
                        let mut column: Vec<f32> = frames.slice(s![.., r, x]).to_vec();
                        let (value, rej) = reduce(&method, &mut column, None);
                        let got = out[(r, x)];
                        let label = format!("{method:?} n = {n} pixel ({r}, {x})");
                        if let Method::Winsorized { .. } = method {
                            // σ is summed in another order: equal to the last bits.
                            let close = (got - value).abs() <= 1e-6 * value.abs();
                            let both_nan = got.is_nan() && value.is_nan();
                            assert!(close || both_nan, "{label}: {got} {value}");
                        } else {
                            assert_eq!(got.to_bits(), value.to_bits(), "{label}: {got} {value}");
                        }
                        expected_rejected += u64::from(rej);
                    }
                }
                assert_eq!(rejected, expected_rejected, "{method:?} n = {n}");
            }
        }
    }

    #[test]
    fn stack_band_handles_views_and_empty_inputs() {
        let frames = band(6, 4, 10);
        // A non-contiguous output view (every other column of a wider array).
        let mut wide = Array2::from_elem((4, 20), -1.0);
        let rejected = stack_band(
            &Method::Median,
            frames.view(),
            None,
            wide.slice_mut(s![.., ..;2]),
        );
        assert_eq!(rejected, 0);
        assert_eq!(wide[(2, 6)], 15.25);
        assert_eq!(wide[(2, 7)], -1.0);
        // No frame: NaN everywhere.
        let mut out = Array2::zeros((4, 10));
        assert_eq!(
            stack_band(
                &Method::Mean,
                frames.slice(s![..0, .., ..]),
                None,
                out.view_mut()
            ),
            0
        );
        assert!(out.iter().all(|v| v.is_nan()));
    }
}
