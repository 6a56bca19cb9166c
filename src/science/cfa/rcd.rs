//! Ratio Corrected Demosaicing (Luis Sanz Rodríguez, RCD release 2.3, 2017), Siril's and
//! RawTherapee's default, written from the published description. Offsets t are directions
//! between neighbouring pixels (N, S, W, E or the diagonals); `v(t)` is the mosaic at that
//! offset from the pixel p being computed, 0 being p itself; "sites" are the red and blue
//! pixels; `ε = RCD_EPS · s`, s the largest finite |value| of the mosaic.
//!
//! 1. **Directional statistics** at every pixel: along a line with step d,
//!    `stat_d = Σ_{j=−1..1} (HP_d(p + j·d) / s)²` (at least ε²/s²), where `HP_d` is
//!    [`RCD_HIGH_PASS`] along the line. `vh = stat_V / (stat_V + stat_H)` is close to 1 across
//!    a horizontal edge (interpolate horizontally) and to 0 across a vertical one; at sites,
//!    `pq = stat_P / (stat_P + stat_Q)` does the same for the diagonals (P: NW–SE, Q: NE–SW).
//!    Where used, each is *refined*: replaced by the mean of its four diagonal neighbours when
//!    that mean is further from ½ (more decided).
//! 2. **Low-pass filter** at sites: `L = [1 2 1; 2 4 2; 1 2 1] / 16` over the mosaic, a grey
//!    level mixing the three colours.
//! 3. **Green at sites.** In each cardinal direction t, the green neighbour corrected by the
//!    ratio of grey levels, `v(t) · (1 + (L(0) − L(2t)) / (ε + |L(0)| + |L(2t)|))`, with the
//!    gradient `ε + |v(t) − v(−t)| + |v(0) − v(2t)| + |v(t) − v(3t)| + |v(2t) − v(4t)|`.
//!    Opposite directions are blended with weights inversely proportional to their gradients
//!    into a vertical and a horizontal estimate V and H; green is `V + vh · (H − V)`.
//! 4. **Blue at red sites, red at blue sites** (the colour c measured at the diagonal
//!    neighbours): in each diagonal direction t the colour difference `c(t) − G(t)`, with the
//!    gradient `ε + |c(t) − c(−t)| + |c(t) − c(3t)| + |G(0) − G(2t)|` (G from step 3); blended
//!    as in step 3 into P and Q; the value is `G + P + pq · (Q − P)`.
//! 5. **Red and blue at green pixels**: the same colour differences and gradients in the
//!    cardinal directions, reading red and blue at the neighbouring sites (measured, or from
//!    step 4), blended by `vh`.
//!
//! Measured values are kept. ε and the statistics follow the data's scale, so that scaling the
//! mosaic scales the result (up to rounding), like the reference on 16-bit data in [0, 1].
//! Pixels closer than [`RCD_RADIUS`] to the border, or with a non-finite value within that
//! distance, take the bilinear value (Siril takes bilinear for its outer 9 pixels).
//!
//! Where it differs from the reference code Siril 1.0.6 runs (librtprocess' tiled RCD):
//! - The ratio's denominator takes |L|, so that dark-subtracted data with negative values
//!   keeps it bounded (correction factor in [0, 2], as for non-negative data); the reference
//!   clamps its input to [0, 1] (×65536) and its output at 0 instead.
//! - The ratio correction is release 2.3's `1 + ΔL / (ε + ΣL)`, exact on flat data; the
//!   reference now computes `2·L(0) / (ε + L(0) + L(2t))` with L four times larger.
//! - The diagonal statistics sum the high-pass at the three sites on the diagonal through p.
//!   The reference stores its diagonal high-pass at half resolution, evaluated at odd columns
//!   only, and reads it back as if at the sites: depending on the row, the centre or the two
//!   outer terms come from the green pixels beside them. On the Seestar subs this is the whole
//!   difference in red and blue (correlation 0.992–0.998 with it, 0.99999 when emulated).
//! - No 16-bit rounding, no tiles (the reference's tile edges leave a trace 9 pixels in).
//!
//! **How it is computed.** Each step is a plane of the mosaic's size, computed row by row in
//! parallel from the planes before it. Within a row every column is computed alike, sites and
//! green pixels both (values a step does not need are computed and never read), from
//! contiguous slices of those planes, so that the loops vectorise — eight lanes with AVX2 where
//! the CPU has it. The formulas are the scalar functions at the end of this file, shared with
//! the per-pixel formulation in the tests, which is the oracle: both give the same bits.

use super::{BayerPattern, BilinearKernel, Color, Mosaic, rgb_by_strips};
use ndarray::Array3;
use rayon::prelude::*;

/// How far RCD reaches: the RCD value of a pixel depends on the mosaic within this Chebyshev
/// distance of it. The red and blue of a green pixel (step 5) read the step-4 values of sites
/// up to 3 pixels away, each of which reads the mosaic up to 7 pixels further (the step-3
/// greens 2 pixels away diagonally, 5 more).
pub(crate) const RCD_RADIUS: usize = 10;

/// RCD's tolerance against division by zero, relative to the largest magnitude in the mosaic:
/// the reference's `1e-5` for data normalised to [0, 1].
const RCD_EPS: f32 = 1e-5;

/// The colour-difference high-pass filter of RCD's directional statistics: taps at −3..=3
/// steps along a row, column or diagonal. Colours alternate along such a line, and the taps of
/// each colour (at 0, ±2 and at ±1, ±3) sum to zero: a constant added to one colour (a colour
/// cast) does not change the response, only structure does.
const RCD_HIGH_PASS: [f32; 7] = [1.0, -3.0, -1.0, 6.0, -1.0, -3.0, 1.0];

/// A step between neighbouring pixels, `(dx, dy)`.
type Dir = (isize, isize);
const DOWN: Dir = (0, 1);
const RIGHT: Dir = (1, 0);
/// NW → SE.
const P: Dir = (1, 1);
/// NE → SW.
const Q: Dir = (-1, 1);

/// Output rows computed together, through every step, by one thread, in scratch planes that
/// stay in its caches. Each strip also computes the steps over the [`RCD_RADIUS`] rows of
/// context above and below it: smaller strips would repeat more of that work (on 1080 × 1920
/// frames, 64 rows took 22 ms where 32 took 25).
const STRIP: usize = 64;

/// What every strip shares.
struct Context {
    eps: f32,
    /// 1 / s.
    unit: f32,
    /// The column of the first green pixel in even and odd rows.
    green_column: [usize; 2],
    near_nonfinite: Option<Vec<bool>>,
    bilinear: BilinearKernel,
}

/// Debayers `m` with RCD into `(3, H, W)` planes, by strips of rows in parallel.
pub(super) fn rcd(m: &Mosaic, pattern: BayerPattern) -> Array3<f32> {
    let (largest, all_finite) = m
        .data
        .par_chunks(1 << 14)
        .map(largest_finite)
        .reduce(|| (0.0, true), |a, b| (a.0.max(b.0), a.1 && b.1));
    let scale = largest.max(f32::MIN_POSITIVE);
    let context = Context {
        eps: RCD_EPS * scale,
        unit: scale.recip(),
        green_column: [0, 1].map(|y| usize::from(m.color(0, y) != Color::Green)),
        near_nonfinite: (!all_finite).then(|| near_nonfinite(m, RCD_RADIUS)),
        bilinear: BilinearKernel::new(pattern, m.width),
    };
    rgb_by_strips(m.height, m.width, STRIP, |y0, red, green, blue| {
        SCRATCH.with_borrow_mut(|scratch| strip(m, &context, y0, [red, green, blue], scratch))
    })
}

/// The planes of one strip, kept by each thread from call to call so that debayering band
/// after band does not allocate (1.8 MB for a Seestar-wide strip).
struct Scratch([Vec<f32>; 5]);

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch(Default::default()));
}

/// Output rows `y0 ..` (as many as `out` holds): steps 1 to 4 over the mosaic rows they read,
/// then step 5.
fn strip(m: &Mosaic, c: &Context, y0: usize, out: [&mut [f32]; 3], scratch: &mut Scratch) {
    let w = m.width;
    let rows = out[0].len() / w;
    // The mosaic rows the strip reads, from an even row so that the Bayer cell is the same:
    // each plane below is the whole image's plane over these rows.
    let first = y0.saturating_sub(RCD_RADIUS) & !1;
    let last = (y0 + rows + RCD_RADIUS).min(m.height);
    let local = Mosaic {
        data: &m.data[first * w..last * w],
        height: last - first,
        ..*m
    };
    let (data, unit, eps) = (local.data, c.unit, c.eps);
    let Scratch([a, b, vh, d, e]) = scratch;
    let high_pass = |along| HighPass {
        data,
        w,
        along,
        unit,
    };

    // Step 1, vertical/horizontal.
    fill(a, &local, 3, &high_pass(DOWN));
    fill(b, &local, 3, &high_pass(RIGHT));
    let step = Discrimination {
        a: (a, DOWN),
        b: (b, RIGHT),
        w,
    };
    fill(vh, &local, 4, &step);
    // Steps 2 and 3.
    let (low_pass, green) = (a, b);
    fill(low_pass, &local, 1, &LowPass { data, w });
    let green_column = c.green_column;
    let step = Green {
        data,
        low_pass,
        vh,
        w,
        eps,
        green_column,
    };
    fill(green, &local, 5, &step);
    // Step 1, diagonals, and step 4.
    let (p, q, pq) = (low_pass, d, e);
    fill(p, &local, 3, &high_pass(P));
    fill(q, &local, 3, &high_pass(Q));
    fill(
        pq,
        &local,
        4,
        &Discrimination {
            a: (p, P),
            b: (q, Q),
            w,
        },
    );
    let opposite = p;
    fill(
        opposite,
        &local,
        7,
        &ColourDifference {
            lines: [(data, P), (data, Q)],
            green,
            statistic: pq,
            base: green,
            w,
            eps,
        },
    );

    let planes = Planes {
        green,
        opposite,
        vh,
    };
    let [red, green, blue] = out;
    for (((y, red), green), blue) in (y0..)
        .zip(red.chunks_mut(w))
        .zip(green.chunks_mut(w))
        .zip(blue.chunks_mut(w))
    {
        output_row(m, c, (y, y - first), &local, &planes, [red, green, blue]);
    }
}

/// The planes of steps 3, 4 and 1 (vh) over a strip's mosaic rows.
struct Planes<'a> {
    green: &'a [f32],
    opposite: &'a [f32],
    vh: &'a [f32],
}

/// Output row y (row `local_y` of `local`, the strip's mosaic): step 5, the planes at sites,
/// bilinear near the border and near non-finite values.
fn output_row(
    m: &Mosaic,
    c: &Context,
    (y, local_y): (usize, usize),
    local: &Mosaic,
    planes: &Planes,
    mut out: [&mut [f32]; 3],
) {
    let (w, h, r) = (m.width, m.height, RCD_RADIUS);
    if y < r || y + r >= h || w <= 2 * r {
        bilinear_row(&c.bilinear, m, y, out);
        return;
    }
    for x in (0..r).chain(w - r..w) {
        set(&mut out, x, c.bilinear.pixel(m, x, y));
    }
    let Planes {
        green,
        opposite,
        vh,
    } = *planes;
    let (data, eps) = (local.data, c.eps);
    let cols = r..w - r;
    let row = local_y * w;
    let site = 1 - c.green_column[y % 2];
    let site_color = m.color(site, y) as usize;
    // Red or blue at green pixels: the colour of this row's sites, then the other.
    let [in_row, in_column] = [site_color, 2 - site_color];
    for (plane, along_column, along_row) in [(in_row, opposite, data), (in_column, data, opposite)]
    {
        let step = ColourDifference {
            lines: [(along_column, DOWN), (along_row, RIGHT)],
            green,
            statistic: vh,
            base: data,
            w,
            eps,
        };
        run_row(&step, local_y, cols.start, &mut out[plane][cols.clone()]);
    }
    out[1][cols.clone()].copy_from_slice(&green[row + cols.start..row + cols.end]);
    for x in cols.clone().filter(|x| x % 2 == site % 2) {
        out[site_color][x] = data[row + x];
        out[2 - site_color][x] = opposite[row + x];
    }
    if let Some(near) = &c.near_nonfinite {
        for x in cols.filter(|x| near[y * w + x]) {
            set(&mut out, x, c.bilinear.pixel(m, x, y));
        }
    }
}

/// Row y of the bilinear debayer into `out`.
fn bilinear_row(kernel: &BilinearKernel, m: &Mosaic, y: usize, mut out: [&mut [f32]; 3]) {
    if y == 0 || y + 1 == m.height || m.width < 3 {
        for x in 0..m.width {
            set(&mut out, x, kernel.pixel(m, x, y));
        }
    } else {
        kernel.row(m, y, out);
    }
}

fn set(out: &mut [&mut [f32]; 3], x: usize, rgb: [f32; 3]) {
    for (plane, v) in out.iter_mut().zip(rgb) {
        plane[x] = v;
    }
}

/// One step of RCD, computed a row at a time.
trait Step {
    /// Writes columns `x0 .. x0 + out.len()` of row y into `out`.
    fn row(&self, y: usize, x0: usize, out: &mut [f32]);
}

/// Makes `plane` a plane of `m`'s size and fills it with `step` at the pixels at least
/// `margin` from every edge. The rest holds whatever it held (NaN in debug builds, so that
/// the tests would see it read): the steps never read it.
fn fill(plane: &mut Vec<f32>, m: &Mosaic, margin: usize, step: &impl Step) {
    let (w, h) = (m.width, m.height);
    plane.resize(w * h, f32::NAN);
    if cfg!(debug_assertions) {
        plane.fill(f32::NAN);
    }
    if w > 2 * margin && h > 2 * margin {
        for (y, row) in plane
            .chunks_mut(w)
            .enumerate()
            .take(h - margin)
            .skip(margin)
        {
            run_row(step, y, margin, &mut row[margin..w - margin]);
        }
    }
}

/// `step.row(…)`, compiled for AVX2 when the CPU has it (twice the lanes of the baseline;
/// the same bits: no fused multiply-adds).
fn run_row(step: &impl Step, y: usize, x0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of a
        // function compiled with `target_feature(enable = "avx2")`.
        return unsafe { run_row_avx2(step, y, x0, out) };
    }
    step.row(y, x0, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_row_avx2(step: &impl Step, y: usize, x0: usize, out: &mut [f32]) {
    step.row(y, x0, out);
}

/// `K` slices of `plane` (rows of width w), each n long: slice k holds, for the columns
/// `x0 .. x0 + n` of row y, the value `(k − K/2)` steps `along` from each, so that `[k][j]` runs
/// along the line through pixel `(x0 + j, y)`, centred on it.
#[inline(always)]
fn line<const K: usize>(
    plane: &[f32],
    w: usize,
    (y, x0, n): (usize, usize, usize),
    (dx, dy): Dir,
) -> [&[f32]; K] {
    let mut slices: [&[f32]; K] = [&[]; K];
    for (k, slice) in slices.iter_mut().enumerate() {
        let o = k as isize - (K / 2) as isize;
        let start = (y as isize + o * dy) as usize * w + (x0 as isize + o * dx) as usize;
        *slice = &plane[start..start + n];
    }
    slices
}

/// Column j of slices taken with [`line`].
///
/// Here and in [`line`], loops rather than `array::from_fn` or `array::map`: those call their
/// closure through a wrapper that is not inlined, which kept the row loops scalar.
#[inline(always)]
fn at<const K: usize>(slices: &[&[f32]; K], j: usize) -> [f32; K] {
    let mut values = [0.0; K];
    for (value, slice) in values.iter_mut().zip(slices) {
        *value = slice[j];
    }
    values
}

/// The four diagonal neighbours of each pixel of a row, in [`refine`]'s order: slices as
/// from [`line`].
#[inline(always)]
fn diagonals(plane: &[f32], w: usize, at: (usize, usize, usize)) -> [&[f32]; 4] {
    let [nw, _, se] = line::<3>(plane, w, at, P);
    let [ne, _, sw] = line::<3>(plane, w, at, Q);
    [nw, ne, sw, se]
}

/// Step 1: `(HP / s)²` along a line.
struct HighPass<'a> {
    data: &'a [f32],
    w: usize,
    along: Dir,
    unit: f32,
}

impl Step for HighPass<'_> {
    #[inline(always)]
    fn row(&self, y: usize, x0: usize, out: &mut [f32]) {
        let v = line::<7>(self.data, self.w, (y, x0, out.len()), self.along);
        for (j, out) in out.iter_mut().enumerate() {
            *out = squared_high_pass(at(&v, j), self.unit);
        }
    }
}

/// Step 1: `stat_a / (stat_a + stat_b)` from two planes of squared high-pass responses, each
/// summed along its own line.
struct Discrimination<'a> {
    a: (&'a [f32], Dir),
    b: (&'a [f32], Dir),
    w: usize,
}

impl Step for Discrimination<'_> {
    #[inline(always)]
    fn row(&self, y: usize, x0: usize, out: &mut [f32]) {
        let at_row = (y, x0, out.len());
        let a = line::<3>(self.a.0, self.w, at_row, self.a.1);
        let b = line::<3>(self.b.0, self.w, at_row, self.b.1);
        for (j, out) in out.iter_mut().enumerate() {
            *out = discrimination(at(&a, j), at(&b, j));
        }
    }
}

/// Step 2.
struct LowPass<'a> {
    data: &'a [f32],
    w: usize,
}

impl Step for LowPass<'_> {
    #[inline(always)]
    fn row(&self, y: usize, x0: usize, out: &mut [f32]) {
        let at_row = (y, x0, out.len());
        let [n, centre, s] = line::<3>(self.data, self.w, at_row, DOWN);
        let [west, _, east] = line::<3>(self.data, self.w, at_row, RIGHT);
        let diagonal = diagonals(self.data, self.w, at_row);
        for (j, out) in out.iter_mut().enumerate() {
            let cross = [n[j], s[j], west[j], east[j]];
            *out = low_pass(centre[j], cross, at(&diagonal, j));
        }
    }
}

/// Step 3: green everywhere, measured at green pixels.
struct Green<'a> {
    data: &'a [f32],
    low_pass: &'a [f32],
    vh: &'a [f32],
    w: usize,
    eps: f32,
    /// The column of the first green pixel in even and odd rows.
    green_column: [usize; 2],
}

impl Step for Green<'_> {
    #[inline(always)]
    fn row(&self, y: usize, x0: usize, out: &mut [f32]) {
        let (w, eps) = (self.w, self.eps);
        let at_row = (y, x0, out.len());
        // (No closures or array maps in here: those are not inlined, and keep the loop
        // scalar.)
        let (down, right) = (
            line::<9>(self.data, w, at_row, DOWN),
            line::<9>(self.data, w, at_row, RIGHT),
        );
        let (low_down, low_right) = (
            line::<5>(self.low_pass, w, at_row, DOWN),
            line::<5>(self.low_pass, w, at_row, RIGHT),
        );
        let vh = line::<1>(self.vh, w, at_row, DOWN)[0];
        let vh_around = diagonals(self.vh, w, at_row);
        for (j, out) in out.iter_mut().enumerate() {
            let vertical = ratio_blend(at(&down, j), at(&low_down, j), eps);
            let horizontal = ratio_blend(at(&right, j), at(&low_right, j), eps);
            let vh = refine(vh[j], at(&vh_around, j));
            *out = vertical + vh * (horizontal - vertical);
        }
        let row = &self.data[y * w..(y + 1) * w];
        let first = x0 + (x0 + self.green_column[y % 2]) % 2;
        for x in (first..x0 + out.len()).step_by(2) {
            out[x - x0] = row[x];
        }
    }
}

/// Steps 4 and 5: `base + A + stat · (B − A)`, where A and B are the colour differences read
/// along two lines (each from its own chroma plane) and blended, and `stat` the refined
/// step-1 statistic that chooses between them.
///
/// - Step 4, at sites: chroma the mosaic along P and Q, `pq`, base the step-3 green.
/// - Step 5, at green pixels: chroma along the column and along the row (the mosaic for one,
///   step 4's plane for the other), `vh`, base the mosaic (the green measured there).
struct ColourDifference<'a> {
    lines: [(&'a [f32], Dir); 2],
    green: &'a [f32],
    statistic: &'a [f32],
    base: &'a [f32],
    w: usize,
    eps: f32,
}

impl Step for ColourDifference<'_> {
    #[inline(always)]
    fn row(&self, y: usize, x0: usize, out: &mut [f32]) {
        let (w, eps) = (self.w, self.eps);
        let at_row = (y, x0, out.len());
        let [(chroma_a, a), (chroma_b, b)] = self.lines;
        let (chroma_a, chroma_b) = (
            line::<7>(chroma_a, w, at_row, a),
            line::<7>(chroma_b, w, at_row, b),
        );
        let (green_a, green_b) = (
            line::<5>(self.green, w, at_row, a),
            line::<5>(self.green, w, at_row, b),
        );
        let base = line::<1>(self.base, w, at_row, DOWN)[0];
        let statistic = line::<1>(self.statistic, w, at_row, DOWN)[0];
        let around = diagonals(self.statistic, w, at_row);
        for (j, out) in out.iter_mut().enumerate() {
            let a = difference_blend(at(&chroma_a, j), at(&green_a, j), eps);
            let b = difference_blend(at(&chroma_b, j), at(&green_b, j), eps);
            *out = base[j] + a + refine(statistic[j], at(&around, j)) * (b - a);
        }
    }
}

// The formulas, on values. Offsets are in steps along the line of the direction t.

/// Step 1: `(HP / s)²` from the values at −3..=3 along a line; `unit` = 1 / s.
#[inline(always)]
fn squared_high_pass(v: [f32; 7], unit: f32) -> f32 {
    let mut high_pass = RCD_HIGH_PASS[0] * v[0];
    for k in 1..7 {
        high_pass += RCD_HIGH_PASS[k] * v[k];
    }
    (high_pass * unit) * (high_pass * unit)
}

/// Step 1: `stat_a / (stat_a + stat_b)` from the squared high-pass responses at −1, 0, 1 along
/// each statistic's line.
#[inline(always)]
fn discrimination(a: [f32; 3], b: [f32; 3]) -> f32 {
    let statistic = |s: [f32; 3]| (s[0] + s[1] + s[2]).max(RCD_EPS * RCD_EPS);
    let (a, b) = (statistic(a), statistic(b));
    a / (a + b)
}

/// Step 2: `[1 2 1; 2 4 2; 1 2 1] / 16` from the centre, its cross (N, S, W, E) and diagonal
/// (NW, NE, SW, SE) neighbours.
#[inline(always)]
fn low_pass(centre: f32, [n, s, w, e]: [f32; 4], [nw, ne, sw, se]: [f32; 4]) -> f32 {
    0.25 * centre + 0.125 * (n + s + w + e) + 0.0625 * (nw + ne + sw + se)
}

/// A step-1 statistic refined by its diagonal neighbours (NW, NE, SW, SE): their mean when
/// that is further from ½, else its own value.
#[inline(always)]
fn refine(own: f32, [nw, ne, sw, se]: [f32; 4]) -> f32 {
    let around = 0.25 * (nw + ne + sw + se);
    if (0.5 - own).abs() < (0.5 - around).abs() {
        around
    } else {
        own
    }
}

/// Step 3 in direction t: the ratio-corrected green estimate and its gradient, from the mosaic
/// at −1..=4 steps, and the low-pass here and 2 steps ahead.
#[inline(always)]
fn ratio_side(v: [f32; 6], here: f32, there: f32, eps: f32) -> (f32, f32) {
    let [back, own, v1, v2, v3, v4] = v;
    let estimate = v1 * (1.0 + (here - there) / (eps + here.abs() + there.abs()));
    let gradient = eps + (v1 - back).abs() + (own - v2).abs() + (v1 - v3).abs() + (v2 - v4).abs();
    (estimate, gradient)
}

/// Step 3 along a line: the estimates of both directions blended, from the mosaic at −4..=4
/// steps and the low-pass at −2..=2 (read at −2, 0, 2).
#[inline(always)]
fn ratio_blend(v: [f32; 9], l: [f32; 5], eps: f32) -> f32 {
    let (before, here, after) = (l[0], l[2], l[4]);
    let behind = ratio_side([v[5], v[4], v[3], v[2], v[1], v[0]], here, before, eps);
    let ahead = ratio_side([v[3], v[4], v[5], v[6], v[7], v[8]], here, after, eps);
    blend(behind, ahead)
}

/// Steps 4 and 5 in direction t: the colour difference `c(t) − G(t)` and its gradient, from
/// c at −1, 1, 3 steps and G at 0, 1, 2.
#[inline(always)]
fn difference_side([back, c1, c3]: [f32; 3], [g0, g1, g2]: [f32; 3], eps: f32) -> (f32, f32) {
    let gradient = eps + (c1 - back).abs() + (c1 - c3).abs() + (g0 - g2).abs();
    (c1 - g1, gradient)
}

/// Steps 4 and 5 along a line: the colour differences of both directions blended, from c at
/// −3..=3 steps and G at −2..=2.
#[inline(always)]
fn difference_blend(c: [f32; 7], g: [f32; 5], eps: f32) -> f32 {
    let behind = difference_side([c[4], c[2], c[0]], [g[2], g[1], g[0]], eps);
    let ahead = difference_side([c[2], c[4], c[6]], [g[2], g[3], g[4]], eps);
    blend(behind, ahead)
}

/// Blends the `(estimate, gradient)` of two opposite directions with weights inversely
/// proportional to the gradients, written so that equal estimates come out exactly.
#[inline(always)]
fn blend((a, gradient_a): (f32, f32), (b, gradient_b): (f32, f32)) -> f32 {
    a + gradient_a / (gradient_a + gradient_b) * (b - a)
}

/// The largest finite |value| of `data` (0 when none), and whether all are finite. (A loop
/// that vectorises.)
fn largest_finite(data: &[f32]) -> (f32, bool) {
    let (mut largest, mut all_finite) = (0.0f32, true);
    for v in data {
        let magnitude = v.abs();
        let finite = magnitude < f32::INFINITY;
        largest = if finite && magnitude > largest {
            magnitude
        } else {
            largest
        };
        all_finite &= finite;
    }
    (largest, all_finite)
}

/// For each pixel, whether a non-finite value lies within `radius` of it (Chebyshev
/// distance). A row pass then a column pass.
fn near_nonfinite(m: &Mosaic, radius: usize) -> Vec<bool> {
    let (w, h) = (m.width, m.height);
    let mut in_row = vec![false; w * h];
    in_row
        .par_chunks_mut(w)
        .zip(m.data.par_chunks(w))
        .for_each(|(out, row)| {
            // count[x] = number of non-finite values before column x.
            let count: Vec<usize> = std::iter::once(0)
                .chain(row.iter().scan(0, |n, v| {
                    *n += usize::from(!v.is_finite());
                    Some(*n)
                }))
                .collect();
            for (x, near) in out.iter_mut().enumerate() {
                *near = count[(x + radius + 1).min(w)] > count[x.saturating_sub(radius)];
            }
        });
    let mut near = vec![false; w * h];
    near.par_chunks_mut(w).enumerate().for_each(|(y, out)| {
        for row in in_row[y.saturating_sub(radius) * w..(y + radius + 1).min(h) * w].chunks(w) {
            for (near, &here) in out.iter_mut().zip(row) {
                *near |= here;
            }
        }
    });
    near
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::science::cfa::{DebayerMethod, debayer};
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// RCD pixel by pixel, each step a plane indexed by signed offsets from the pixel: the
    /// oracle of the row-wise [`rcd`]. It shares only the scalar formulas.
    struct Oracle {
        vh: Vec<f32>,
        green: Vec<f32>,
        opposite: Vec<f32>,
        eps: f32,
        near_nonfinite: Option<Vec<bool>>,
        bilinear: BilinearKernel,
    }

    /// The K values of `plane` centred on index i, `step` apart.
    fn around<const K: usize>(plane: &[f32], i: usize, step: isize) -> [f32; K] {
        std::array::from_fn(|k| {
            plane[i.wrapping_add_signed((k as isize - (K / 2) as isize) * step)]
        })
    }

    /// The four diagonal neighbours of index i (NW, NE, SW, SE).
    fn diagonal(plane: &[f32], i: usize, w: isize) -> [f32; 4] {
        [-w - 1, -w + 1, w - 1, w + 1].map(|o| plane[i.wrapping_add_signed(o)])
    }

    /// A plane computed pixel by pixel: `value(x, y, index)` at least `margin` from every
    /// edge, NaN elsewhere.
    fn oracle_plane(
        m: &Mosaic,
        margin: usize,
        value: impl Fn(usize, usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut plane = vec![f32::NAN; m.width * m.height];
        for y in margin..m.height.saturating_sub(margin) {
            for x in margin..m.width.saturating_sub(margin) {
                plane[y * m.width + x] = value(x, y, y * m.width + x);
            }
        }
        plane
    }

    /// `ratio_side` in direction t from index i.
    fn ratio_at(data: &[f32], low_pass: &[f32], i: usize, t: isize, eps: f32) -> (f32, f32) {
        let v = std::array::from_fn(|k| data[i.wrapping_add_signed((k as isize - 1) * t)]);
        ratio_side(v, low_pass[i], low_pass[i.wrapping_add_signed(2 * t)], eps)
    }

    /// `difference_side` in direction t from index i.
    fn difference_at(chroma: &[f32], green: &[f32], i: usize, t: isize, eps: f32) -> (f32, f32) {
        let c = [-1, 1, 3].map(|k| chroma[i.wrapping_add_signed(k * t)]);
        let g = [0, 1, 2].map(|k| green[i.wrapping_add_signed(k * t)]);
        difference_side(c, g, eps)
    }

    impl Oracle {
        fn new(m: &Mosaic, pattern: BayerPattern) -> Self {
            let (data, w) = (m.data, m.width as isize);
            let scale = data
                .iter()
                .filter(|v| v.is_finite())
                .fold(0.0f32, |s, v| s.max(v.abs()))
                .max(f32::MIN_POSITIVE);
            let (eps, unit) = (RCD_EPS * scale, scale.recip());
            let is_site = |x, y| m.color(x, y) != Color::Green;
            let high_pass = |step| {
                oracle_plane(m, 3, |_, _, i| {
                    squared_high_pass(around(data, i, step), unit)
                })
            };
            let vh = {
                let (v, h) = (high_pass(w), high_pass(1));
                oracle_plane(m, 4, |_, _, i| {
                    discrimination(around(&v, i, w), around(&h, i, 1))
                })
            };
            let low_pass = oracle_plane(m, 1, |x, y, i| {
                let cross = [-w, w, -1, 1].map(|o| data[i.wrapping_add_signed(o)]);
                if is_site(x, y) {
                    low_pass(data[i], cross, diagonal(data, i, w))
                } else {
                    f32::NAN
                }
            });
            let green = oracle_plane(m, 5, |x, y, i| {
                if !is_site(x, y) {
                    return data[i];
                }
                let side = |t| ratio_at(data, &low_pass, i, t, eps);
                let vertical = blend(side(-w), side(w));
                let horizontal = blend(side(-1), side(1));
                vertical + refine(vh[i], diagonal(&vh, i, w)) * (horizontal - vertical)
            });
            let pq = {
                let (p, q) = (high_pass(w + 1), high_pass(w - 1));
                oracle_plane(m, 4, |_, _, i| {
                    discrimination(around(&p, i, w + 1), around(&q, i, w - 1))
                })
            };
            let opposite = oracle_plane(m, 7, |x, y, i| {
                if !is_site(x, y) {
                    return f32::NAN;
                }
                let side = |t| difference_at(data, &green, i, t, eps);
                let p = blend(side(-(w + 1)), side(w + 1));
                let q = blend(side(-(w - 1)), side(w - 1));
                green[i] + p + refine(pq[i], diagonal(&pq, i, w)) * (q - p)
            });
            Oracle {
                vh,
                green,
                opposite,
                eps,
                near_nonfinite: data
                    .iter()
                    .any(|v| !v.is_finite())
                    .then(|| near_nonfinite(m, RCD_RADIUS)),
                bilinear: BilinearKernel::new(pattern, m.width),
            }
        }

        fn pixel(&self, m: &Mosaic, x: usize, y: usize) -> [f32; 3] {
            let r = RCD_RADIUS;
            let i = y * m.width + x;
            let inside = x >= r && y >= r && x + r < m.width && y + r < m.height;
            if !inside || self.near_nonfinite.as_ref().is_some_and(|near| near[i]) {
                return self.bilinear.pixel(m, x, y);
            }
            let value = m.data[i];
            match m.color(x, y) {
                Color::Red => [value, self.green[i], self.opposite[i]],
                Color::Blue => [self.opposite[i], self.green[i], value],
                Color::Green => {
                    let w = m.width as isize;
                    let vh = refine(self.vh[i], diagonal(&self.vh, i, w));
                    let estimate = |along_column: &[f32], along_row: &[f32]| {
                        let side = |plane, t| difference_at(plane, &self.green, i, t, self.eps);
                        let vertical = blend(side(along_column, -w), side(along_column, w));
                        let horizontal = blend(side(along_row, -1), side(along_row, 1));
                        value + vertical + vh * (horizontal - vertical)
                    };
                    let in_row = estimate(&self.opposite, m.data);
                    let in_column = estimate(m.data, &self.opposite);
                    if m.color(x + 1, y) == Color::Red {
                        [in_row, value, in_column]
                    } else {
                        [in_column, value, in_row]
                    }
                }
            }
        }
    }

    fn oracle(mosaic: &Array2<f32>, pattern: BayerPattern) -> Array3<f32> {
        let (height, width) = mosaic.dim();
        let m = Mosaic {
            data: mosaic.as_slice().unwrap(),
            width,
            height,
            colors: pattern.colors(),
        };
        let kernel = Oracle::new(&m, pattern);
        m.interpolate(|m, x, y| kernel.pixel(m, x, y))
    }

    #[test]
    fn rows_give_the_same_bits_as_the_per_pixel_oracle() {
        // Noise on a smooth background with sharp peaks (stars, hot pixels), negative values
        // and, in some, non-finite pixels; sizes with and without an interior, in one strip
        // and in several.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let sizes = [
            (40, 46),
            (33, 27),
            (21, 22),
            (25, 21),
            (9, 12),
            (1, 5),
            (30, 3),
        ];
        for (n, &(h, w)) in sizes.iter().enumerate() {
            for pattern in BayerPattern::ALL {
                let mut mosaic = Array2::from_shape_fn((h, w), |(y, x)| {
                    let peak = if rng.random_bool(0.02) { 5000.0 } else { 0.0 };
                    300.0 + 2.0 * x as f32 - y as f32 + rng.random_range(-40.0f32..40.0) + peak
                });
                if n % 2 == 1 && h * w > 1 {
                    for _ in 0..3 {
                        let (y, x) = (rng.random_range(0..h), rng.random_range(0..w));
                        mosaic[[y, x]] = [f32::NAN, f32::INFINITY][rng.random_range(0..2)];
                    }
                }
                let expected = oracle(&mosaic, pattern);
                let got = debayer(mosaic.view(), pattern, DebayerMethod::Rcd);
                let differ = expected
                    .iter()
                    .zip(&got)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(differ, 0, "{h}×{w} {pattern:?}: {differ} values differ");
            }
        }
    }
}
