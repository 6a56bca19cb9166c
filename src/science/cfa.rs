//! Colour filter arrays: Bayer patterns from headers, and debayering (demosaicing).
//!
//! A one-shot colour camera records one colour per pixel through a 2×2 Bayer cell repeated over
//! the sensor. [`BayerPattern`] names that cell for the image **as stored** (row 0 = the first
//! row stored in the file, the array convention of `crate::fits`), and [`debayer`] rebuilds the
//! two missing colours of every pixel:
//!
//! - [`DebayerMethod::Bilinear`]: each missing colour is the mean of the pixels of that colour
//!   in the 3×3 neighbourhood (2 or 4 of them).
//! - [`DebayerMethod::Vng`]: Variable Number of Gradients (Chang, Cheung & Pang, 1999), edge-aware;
//!   the algorithm as implemented is described on `VngKernel` below.
//! - [`DebayerMethod::Rcd`]: Ratio Corrected Demosaicing (Luis Sanz Rodríguez, 2017), the
//!   default of Siril and RawTherapee; the algorithm as implemented is described in the
//!   `rcd` module.
//! - [`DebayerMethod::Superpixel`]: one RGB pixel per 2×2 cell, half size.
//!
//! Borders use only the neighbours that exist (no replicated or mirrored edges), and NaN pixels
//! count as missing, so a flat mosaic gives exactly the same flat value in every channel,
//! corners included. VNG and RCD need a neighbourhood around each pixel (2 and 10 pixels);
//! closer to the border, or next to a NaN, they fall back to bilinear. The output is
//! `(3, H, W)` in R, G, B order, computed in parallel by rows (RCD: by strips of rows, one
//! plane per step within each strip), and each output pixel depends only on the input
//! (deterministic, no accumulation order across threads): the reference for a GPU port.

mod rcd;

pub(crate) use rcd::RCD_RADIUS;

use ndarray::{Array3, ArrayView2};
use rayon::prelude::*;

/// A 2×2 Bayer cell, named by its colours in reading order (row 0: first two, row 1: last
/// two), with row 0 = the first row stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BayerPattern {
    Rggb,
    Bggr,
    Grbg,
    Gbrg,
}

/// A colour channel index into RGB planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Red = 0,
    Green = 1,
    Blue = 2,
}

impl BayerPattern {
    const ALL: [BayerPattern; 4] = [Self::Rggb, Self::Bggr, Self::Grbg, Self::Gbrg];

    /// Parses "RGGB", "GRBG", … (case-insensitive, surrounding spaces ignored).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Rggb => "RGGB",
            Self::Bggr => "BGGR",
            Self::Grbg => "GRBG",
            Self::Gbrg => "GBRG",
        }
    }

    /// The colours of the cell in reading order: (0,0), (1,0), (0,1), (1,1) as (x, y), i.e.
    /// indexed by [`BayerPattern::channel_index`].
    pub fn colors(&self) -> [Color; 4] {
        use Color::{Blue as B, Green as G, Red as R};
        match self {
            Self::Rggb => [R, G, G, B],
            Self::Bggr => [B, G, G, R],
            Self::Grbg => [G, R, B, G],
            Self::Gbrg => [G, B, R, G],
        }
    }

    fn from_colors(colors: [Color; 4]) -> Self {
        Self::ALL
            .into_iter()
            .find(|p| p.colors() == colors)
            .expect("every permutation of a Bayer cell is a Bayer cell")
    }

    /// The position of pixel (x = column, y = row) in its 2×2 cell, 0..4 in reading order
    /// (`(y % 2) * 2 + x % 2`). The same for every pattern: use it to keep statistics per CFA
    /// channel (the two greens apart).
    pub fn channel_index(x: usize, y: usize) -> usize {
        (y % 2) * 2 + x % 2
    }

    /// The pattern of the image as stored, from the header values: BAYERPAT (pass COLORTYP
    /// when BAYERPAT is absent), XBAYROFF/YBAYROFF and ROWORDER. `None` when the pattern is
    /// absent or not one of the four Bayer cells (e.g. "MONO", X-Trans).
    ///
    /// - The pattern applies to the image as stored (row 0 first) unless ROWORDER says
    ///   otherwise (no ROWORDER, `TOP-DOWN`, or any other value).
    /// - An odd XBAYROFF (YBAYROFF) means the cell starts one column (row) later: pixel (x, y)
    ///   has the colour of (x + XBAYROFF, y + YBAYROFF) in the named cell. Even offsets change
    ///   nothing; negative ones are taken modulo 2.
    /// - `ROWORDER = 'BOTTOM-UP'`: the file stores the sensor's rows bottom-up, while the
    ///   pattern names the cell as read top-down. Stored row r is then sensor row
    ///   `height − 1 − r`, whose parity is that of `r + 1` for an even height (the two rows
    ///   of the cell swap: the pattern is flipped vertically) and that of `r` for an odd
    ///   height (the pattern is unchanged). Siril does the same (`debayer.top_down = false`).
    ///
    /// Real Seestar S50 subs say `BAYERPAT = 'GRBG'` without ROWORDER and are GRBG in file
    /// order: their greens sit on the (0,0)/(1,1) diagonal of the stored array.
    pub fn from_header_values(
        bayerpat: Option<&str>,
        xoff: i64,
        yoff: i64,
        roworder: Option<&str>,
        height: usize,
    ) -> Option<Self> {
        let named = Self::parse(bayerpat?)?;
        let shifted = named.shifted(xoff.rem_euclid(2) as usize, yoff.rem_euclid(2) as usize);
        let bottom_up = roworder.is_some_and(|r| r.trim().eq_ignore_ascii_case("BOTTOM-UP"));
        // Swapping the two rows of a 2-row pattern is the same as shifting it by one row.
        if bottom_up && height.is_multiple_of(2) {
            Some(shifted.shifted(0, 1))
        } else {
            Some(shifted)
        }
    }

    /// The colour at pixel (x = column, y = row).
    pub fn color_at(&self, x: usize, y: usize) -> Color {
        self.colors()[Self::channel_index(x, y)]
    }

    /// The pattern seen from an origin shifted by (dx, dy) pixels: pixel (x, y) of the result
    /// has the colour of pixel (x + dx, y + dy) of `self` (e.g. the pattern of a crop starting
    /// at column dx, row dy).
    pub fn shifted(&self, dx: usize, dy: usize) -> Self {
        let old = self.colors();
        let mut new = old;
        for y in 0..2 {
            for x in 0..2 {
                new[Self::channel_index(x, y)] = old[Self::channel_index(x + dx, y + dy)];
            }
        }
        Self::from_colors(new)
    }
}

/// Debayer methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebayerMethod {
    Bilinear,
    /// Variable Number of Gradients (edge-aware).
    Vng,
    /// One RGB pixel per 2×2 cell (half size; greens averaged).
    Superpixel,
    /// Ratio Corrected Demosaicing (edge-aware; Siril's and RawTherapee's default).
    Rcd,
}

impl DebayerMethod {
    /// Parses "bilinear", "vng", "rcd", "superpixel" (also "super-pixel", "super_pixel");
    /// case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bilinear" => Some(Self::Bilinear),
            "vng" => Some(Self::Vng),
            "rcd" => Some(Self::Rcd),
            "superpixel" | "super-pixel" | "super_pixel" => Some(Self::Superpixel),
            _ => None,
        }
    }
}

/// Debayers a mosaic into `(3, H, W)` RGB planes (`(3, H/2, W/2)` for superpixel).
/// Borders are interpolated from the neighbours that exist (no replicated edges).
pub fn debayer(
    mosaic: ArrayView2<f32>,
    pattern: BayerPattern,
    method: DebayerMethod,
) -> Array3<f32> {
    let data = mosaic.as_standard_layout();
    let (height, width) = mosaic.dim();
    let m = Mosaic {
        data: data.as_slice().expect("standard layout is contiguous"),
        width,
        height,
        colors: pattern.colors(),
    };
    match method {
        DebayerMethod::Bilinear => {
            let kernel = BilinearKernel::new(pattern, width);
            if width < 3 || height < 3 {
                return m.interpolate(|m, x, y| kernel.pixel(m, x, y));
            }
            rgb_by_rows(height, width, |y, r, g, b| {
                if y == 0 || y + 1 == height {
                    for x in 0..width {
                        [r[x], g[x], b[x]] = kernel.pixel(&m, x, y);
                    }
                } else {
                    kernel.row(&m, y, [r, g, b]);
                }
            })
        }
        DebayerMethod::Vng => {
            let kernel = VngKernel::new(pattern, width);
            m.interpolate(|m, x, y| kernel.pixel(m, x, y))
        }
        DebayerMethod::Rcd => rcd::rcd(&m, pattern),
        DebayerMethod::Superpixel => m.superpixel(),
    }
}

/// A read-only mosaic with its Bayer cell: the input of every debayer kernel.
struct Mosaic<'a> {
    data: &'a [f32],
    width: usize,
    height: usize,
    colors: [Color; 4],
}

impl Mosaic<'_> {
    fn color(&self, x: usize, y: usize) -> Color {
        self.colors[BayerPattern::channel_index(x, y)]
    }

    fn value(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }

    /// The pixel at (x + dx, y + dy) when it is inside the image.
    fn neighbor(&self, x: usize, y: usize, dx: isize, dy: isize) -> Option<(usize, usize)> {
        let nx = x.checked_add_signed(dx).filter(|&v| v < self.width)?;
        let ny = y.checked_add_signed(dy).filter(|&v| v < self.height)?;
        Some((nx, ny))
    }

    /// Runs a per-pixel kernel over the full-size output.
    fn interpolate<F>(&self, kernel: F) -> Array3<f32>
    where
        F: Fn(&Self, usize, usize) -> [f32; 3] + Sync,
    {
        rgb_by_rows(self.height, self.width, |y, r, g, b| {
            for x in 0..self.width {
                [r[x], g[x], b[x]] = kernel(self, x, y);
            }
        })
    }

    /// Bilinear: the pixel's own colour is its value; each other colour is the mean of the
    /// finite pixels of that colour among the 8 neighbours that exist (2 or 4 inside the
    /// image, fewer on borders; NaN when there are none).
    fn bilinear_pixel(&self, x: usize, y: usize) -> [f32; 3] {
        let mut sum = [0.0f32; 3];
        let mut count = [0u32; 3];
        for dy in -1..=1 {
            for dx in -1..=1 {
                if let Some((nx, ny)) = self.neighbor(x, y, dx, dy) {
                    let v = self.value(nx, ny);
                    if v.is_finite() && (dx, dy) != (0, 0) {
                        let c = self.color(nx, ny) as usize;
                        sum[c] += v;
                        count[c] += 1;
                    }
                }
            }
        }
        let own = self.color(x, y) as usize;
        std::array::from_fn(|c| match (c == own, count[c]) {
            (true, _) => self.value(x, y),
            (false, 0) => f32::NAN,
            (false, n) => sum[c] / n as f32,
        })
    }

    /// Superpixel: `(3, H/2, W/2)`, one RGB pixel per complete 2×2 cell (an odd last row or
    /// column is dropped): R and B are the cell's red and blue pixels, G the mean of its finite
    /// greens (NaN when both are missing).
    fn superpixel(&self) -> Array3<f32> {
        rgb_by_rows(self.height / 2, self.width / 2, |cy, r, g, b| {
            for cx in 0..self.width / 2 {
                let mut greens = (0.0f32, 0u32);
                for (x, y) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let (x, y) = (2 * cx + x, 2 * cy + y);
                    let v = self.value(x, y);
                    match self.color(x, y) {
                        Color::Red => r[cx] = v,
                        Color::Blue => b[cx] = v,
                        Color::Green if v.is_finite() => greens = (greens.0 + v, greens.1 + 1),
                        Color::Green => {}
                    }
                }
                g[cx] = if greens.1 == 0 {
                    f32::NAN
                } else {
                    greens.0 / greens.1 as f32
                };
            }
        })
    }
}

/// Builds `(3, height, width)` planes in parallel by rows: `fill(y, red, green, blue)` writes
/// row y of each plane.
fn rgb_by_rows<F>(height: usize, width: usize, fill: F) -> Array3<f32>
where
    F: Fn(usize, &mut [f32], &mut [f32], &mut [f32]) + Sync,
{
    rgb_by_strips(height, width, 1, fill)
}

/// Builds `(3, height, width)` planes in parallel by strips of `rows` rows (the last may be
/// shorter): `fill(y0, red, green, blue)` writes the strip starting at row y0 of each plane.
fn rgb_by_strips<F>(height: usize, width: usize, rows: usize, fill: F) -> Array3<f32>
where
    F: Fn(usize, &mut [f32], &mut [f32], &mut [f32]) + Sync,
{
    let plane = height * width;
    let mut out = vec![0.0f32; 3 * plane];
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    // Chunks of at least 1 so that an empty image has no rows rather than a panic.
    let chunk = (rows * width).max(1);
    red.par_chunks_mut(chunk)
        .zip(green.par_chunks_mut(chunk))
        .zip(blue.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(i, ((r, g), b))| fill(i * rows, r, g, b));
    Array3::from_shape_vec((3, height, width), out).expect("3 planes of height × width")
}

/// Bilinear with precomputed stencils: for each position in the 2×2 cell and each colour, the
/// linear offsets (dy·W + dx) of the neighbours of that colour, in the scan order of
/// [`Mosaic::bilinear_pixel`], which it reproduces exactly (same values summed in the same
/// order) without per-pixel colour lookups. Pixels on the border or next to a NaN take the
/// general path.
struct BilinearKernel {
    stencils: [[Vec<isize>; 3]; 4],
}

impl BilinearKernel {
    fn new(pattern: BayerPattern, width: usize) -> Self {
        let stencils = std::array::from_fn(|cell| {
            let (cx, cy) = (cell % 2, cell / 2);
            let mut by_color: [Vec<isize>; 3] = Default::default();
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    if (dx, dy) != (0, 0) {
                        let color = pattern.color_at(
                            (cx as isize + dx + 2) as usize,
                            (cy as isize + dy + 2) as usize,
                        );
                        by_color[color as usize].push(dy * width as isize + dx);
                    }
                }
            }
            by_color
        });
        BilinearKernel { stencils }
    }

    /// Row `y` (neither the first nor the last; the image at least 3 wide) into `out`: the
    /// sums of [`BilinearKernel::pixel`], in the same order, read straight from the three rows.
    fn row(&self, m: &Mosaic, y: usize, out: [&mut [f32]; 3]) {
        let w = m.width;
        let (up, mid, down) = (
            &m.data[(y - 1) * w..y * w],
            &m.data[y * w..(y + 1) * w],
            &m.data[(y + 1) * w..(y + 2) * w],
        );
        let wi = w as isize;
        // The stencil of each colour at even and odd columns of this row.
        let kinds: [[Stencil; 3]; 2] = std::array::from_fn(|parity| {
            let cell = BayerPattern::channel_index(parity, y);
            std::array::from_fn(|c| {
                if m.colors[cell] as usize == c {
                    return Stencil::Own;
                }
                match self.stencils[cell][c].as_slice() {
                    [-1, 1] => Stencil::Horizontal,
                    &[a, b] if (a, b) == (-wi, wi) => Stencil::Vertical,
                    &[a, -1, 1, b] if (a, b) == (-wi, wi) => Stencil::Cross,
                    _ => Stencil::Diagonal,
                }
            })
        });
        let [r, g, b] = out;
        for x in [0, w - 1] {
            [r[x], g[x], b[x]] = self.pixel(m, x, y);
        }
        for (parity, kinds) in kinds.iter().enumerate() {
            for (plane, &kind) in [&mut *r, &mut *g, &mut *b].into_iter().zip(kinds) {
                // Columns of this parity, from 1 to w − 2.
                let columns = (2 - parity..w - 1).step_by(2);
                match kind {
                    Stencil::Own => columns.for_each(|x| plane[x] = mid[x]),
                    Stencil::Horizontal => {
                        columns.for_each(|x| plane[x] = (mid[x - 1] + mid[x + 1]) / 2.0)
                    }
                    Stencil::Vertical => columns.for_each(|x| plane[x] = (up[x] + down[x]) / 2.0),
                    Stencil::Cross => columns
                        .for_each(|x| plane[x] = (up[x] + mid[x - 1] + mid[x + 1] + down[x]) / 4.0),
                    Stencil::Diagonal => columns.for_each(|x| {
                        plane[x] = (up[x - 1] + up[x + 1] + down[x - 1] + down[x + 1]) / 4.0
                    }),
                }
            }
        }
        // A non-finite neighbour: the general path, which skips it. (A finite sum ⇔ all
        // finite; an overflow only sends a pixel down the general path, which agrees.)
        for x in 1..w - 1 {
            if !(r[x] + g[x] + b[x]).is_finite() {
                [r[x], g[x], b[x]] = m.bilinear_pixel(x, y);
            }
        }
    }

    fn pixel(&self, m: &Mosaic, x: usize, y: usize) -> [f32; 3] {
        if x == 0 || y == 0 || x + 1 == m.width || y + 1 == m.height {
            return m.bilinear_pixel(x, y);
        }
        let index = y * m.width + x;
        let own = m.color(x, y) as usize;
        let stencils = &self.stencils[BayerPattern::channel_index(x, y)];
        let rgb: [f32; 3] = std::array::from_fn(|c| {
            if c == own {
                return m.data[index];
            }
            let sum: f32 = stencils[c]
                .iter()
                .map(|&o| m.data[index.wrapping_add_signed(o)])
                .sum();
            sum / stencils[c].len() as f32
        });
        if rgb.iter().all(|v| v.is_finite()) {
            rgb
        } else {
            m.bilinear_pixel(x, y)
        }
    }
}

/// The neighbours a bilinear colour is the mean of, inside a Bayer mosaic.
#[derive(Debug, Clone, Copy)]
enum Stencil {
    /// The pixel's own colour: its value.
    Own,
    /// Left and right.
    Horizontal,
    /// Above and below.
    Vertical,
    /// Above, left, right and below.
    Cross,
    /// The four diagonal neighbours.
    Diagonal,
}

/// An offset (dx, dy) from the pixel being interpolated; y grows downwards (rows).
type Offset = (isize, isize);

/// One direction of the VNG kernel, geometrically: its gradient terms (pairs of same-colour
/// pixels along the direction, with weights) and the pixels whose per-colour means estimate
/// the colours in that direction.
#[derive(Debug, Clone)]
struct Direction {
    gradient: Vec<(Offset, Offset, f32)>,
    region: Vec<Offset>,
}

impl Direction {
    /// The same direction turned 90° clockwise on screen (N → E, NE → SE): (x, y) → (−y, x).
    fn rotated(&self) -> Self {
        let turn = |(x, y): Offset| (-y, x);
        Direction {
            gradient: self
                .gradient
                .iter()
                .map(|&(a, b, w)| (turn(a), turn(b), w))
                .collect(),
            region: self.region.iter().copied().map(turn).collect(),
        }
    }

    /// The direction and its three quarter-turns.
    fn with_rotations(self) -> [Direction; 4] {
        let e = self.rotated();
        let s = e.rotated();
        let w = s.rotated();
        [self, e, s, w]
    }
}

/// The eight VNG directions (N, E, S, W, NE, SE, SW, NW) for a pixel whose own colour is
/// green, and for one that is red or blue: the two cases of Chang, Cheung & Pang. Offsets are
/// geometric; the colour at each offset comes from the pattern.
fn vng_directions(green_center: bool) -> Vec<Direction> {
    let (n, ne) = if green_center {
        // Around a green pixel G at (0, 0): one chroma colour at (±1, 0), the other at
        // (0, ±1), greens at (±1, ±1) and at even offsets.
        (
            Direction {
                gradient: vec![
                    ((0, -1), (0, 1), 1.0),
                    ((0, -2), (0, 0), 1.0),
                    ((-1, -1), (-1, 1), 0.5),
                    ((1, -1), (1, 1), 0.5),
                    ((-1, -2), (-1, 0), 0.5),
                    ((1, -2), (1, 0), 0.5),
                ],
                region: vec![(0, -2), (0, 0), (0, -1), (-1, -2), (1, -2), (-1, 0), (1, 0)],
            },
            Direction {
                gradient: vec![
                    ((1, -1), (-1, 1), 1.0),
                    ((2, -2), (0, 0), 1.0),
                    ((1, -2), (-1, 0), 1.0),
                    ((2, -1), (0, 1), 1.0),
                ],
                region: vec![(1, -2), (1, 0), (1, -1), (0, -1), (2, -1)],
            },
        )
    } else {
        // Around a red (or blue) pixel at (0, 0): greens at (±1, 0) and (0, ±1), the other
        // chroma colour at (±1, ±1), the same colour at even offsets.
        (
            Direction {
                gradient: vec![
                    ((0, -1), (0, 1), 1.0),
                    ((0, -2), (0, 0), 1.0),
                    ((-1, -1), (-1, 1), 0.5),
                    ((1, -1), (1, 1), 0.5),
                    ((-1, -2), (-1, 0), 0.5),
                    ((1, -2), (1, 0), 0.5),
                ],
                region: vec![(0, -2), (0, 0), (0, -1), (-1, -1), (1, -1)],
            },
            Direction {
                gradient: vec![
                    ((1, -1), (-1, 1), 1.0),
                    ((2, -2), (0, 0), 1.0),
                    ((0, -1), (-1, 0), 0.5),
                    ((1, 0), (0, 1), 0.5),
                    ((1, -2), (0, -1), 0.5),
                    ((2, -1), (1, 0), 0.5),
                ],
                region: vec![(2, -2), (0, 0), (1, -2), (0, -1), (2, -1), (1, 0), (1, -1)],
            },
        )
    };
    n.with_rotations()
        .into_iter()
        .chain(ne.with_rotations())
        .collect()
}

/// Threshold constants of VNG: a direction is used when its gradient is at most
/// `K1 · min + K2 · (max − min)` over the eight gradients.
const VNG_K1: f32 = 1.5;
const VNG_K2: f32 = 0.5;

/// The 5×5 neighbourhood of a pixel, row by row: offset (dx, dy) is at `(dy + 2) · 5 + dx + 2`.
type Window = [f32; 25];

fn window_index((dx, dy): Offset) -> u8 {
    ((dy + 2) * 5 + dx + 2) as u8
}

/// Most gradient terms of a direction, and most region pixels of one colour.
const VNG_MAX_TERMS: usize = 6;
const VNG_MAX_REGION: usize = 4;

/// The eight directions compiled for one position in the 2×2 cell, as window indices, in
/// fixed-size tables padded with (centre, weight 0) entries, which add exactly 0: the kernel
/// runs the same straight-line code at every pixel (no data-dependent branches, a GPU-friendly
/// shape).
/// - `terms[t][d]`: the t-th gradient term (pixel pair and weight) of direction d, term-major
///   so the eight gradients accumulate side by side.
/// - `regions[d][c]`: the region pixels of colour c in direction d, each weighted by 1/count
///   (count 1, 2 or 4: the weight is exact, so the weighted sum is exactly the mean).
struct CompiledCell {
    terms: [[(u8, u8, f32); 8]; VNG_MAX_TERMS],
    regions: [[[(u8, f32); VNG_MAX_REGION]; 3]; 8],
}

impl CompiledCell {
    fn new(pattern: BayerPattern, cell: usize) -> Self {
        let (cx, cy) = (cell % 2, cell / 2);
        let color_at = |(dx, dy): Offset| {
            pattern.color_at(
                (cx as isize + dx + 2) as usize,
                (cy as isize + dy + 2) as usize,
            )
        };
        let directions = vng_directions(pattern.colors()[cell] == Color::Green);
        let centre = window_index((0, 0));
        let terms = std::array::from_fn(|t| {
            std::array::from_fn(|d| match directions[d].gradient.get(t) {
                Some(&(a, b, w)) => (window_index(a), window_index(b), w),
                None => (centre, centre, 0.0),
            })
        });
        let regions = std::array::from_fn(|d| {
            let mut indices: [Vec<u8>; 3] = Default::default();
            for &offset in &directions[d].region {
                indices[color_at(offset) as usize].push(window_index(offset));
            }
            indices.map(|i| {
                let weight = 1.0 / i.len() as f32;
                std::array::from_fn(|k| i.get(k).map_or((centre, 0.0), |&index| (index, weight)))
            })
        });
        CompiledCell { terms, regions }
    }
}

/// Variable Number of Gradients (Chang, Cheung & Pang, "Color filter array recovery using a
/// threshold-based variable number of gradients", 1999), compiled for one pattern: the eight
/// directions of [`vng_directions`] for each of the four positions in the 2×2 cell
/// ([`CompiledCell`]). At each
/// pixel ([`VngKernel::pixel`]), from its 5×5 neighbourhood:
///
/// 1. Compute a gradient for each of the eight directions N, E, S, W, NE, SE, SW, NW: a
///    weighted sum of absolute differences between pairs of same-colour pixels lying along
///    that direction.
/// 2. Threshold `T = 1.5 · min + 0.5 · (max − min)`; keep the directions whose gradient is
///    ≤ T (at least one: the smoothest).
/// 3. For each kept direction, estimate each colour as the mean of the pixels of that colour
///    in the direction's region (the pixels between the centre and two pixels out); sum these
///    estimates per colour over the kept directions.
/// 4. A missing colour c at a pixel of colour k is `value + (sum_c − sum_k) / n`: the pixel's
///    own value plus the mean colour difference of the n smooth directions.
///
/// Pixels closer than 2 to the border, or with a non-finite value in their 5×5 neighbourhood,
/// fall back to bilinear (which uses the neighbours that exist), so the image keeps its full
/// size and flat regions stay exactly flat.
struct VngKernel {
    cells: [CompiledCell; 4],
    bilinear: BilinearKernel,
}

impl VngKernel {
    fn new(pattern: BayerPattern, width: usize) -> Self {
        VngKernel {
            cells: std::array::from_fn(|cell| CompiledCell::new(pattern, cell)),
            bilinear: BilinearKernel::new(pattern, width),
        }
    }

    fn pixel(&self, m: &Mosaic, x: usize, y: usize) -> [f32; 3] {
        let inside = x >= 2 && y >= 2 && x + 2 < m.width && y + 2 < m.height;
        let Some(window) = inside.then(|| finite_window(m, x, y)).flatten() else {
            return self.bilinear.pixel(m, x, y);
        };
        let at = |i: u8| window[usize::from(i)];
        let cell = &self.cells[BayerPattern::channel_index(x, y)];

        let mut gradients = [0.0f32; 8];
        for terms in &cell.terms {
            for (gradient, &(a, b, w)) in gradients.iter_mut().zip(terms) {
                *gradient += w * (at(a) - at(b)).abs();
            }
        }
        let min = gradients.iter().copied().fold(f32::INFINITY, f32::min);
        let max = gradients.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let threshold = VNG_K1 * min + VNG_K2 * (max - min);

        // Selected directions count 1, the others 0 (a multiplication, not a branch).
        let mut sums = [0.0f32; 3];
        let mut used = 0.0f32;
        for (region, &gradient) in cell.regions.iter().zip(&gradients) {
            let selected = if gradient <= threshold { 1.0 } else { 0.0 };
            for (sum, pixels) in sums.iter_mut().zip(region) {
                let mean: f32 = pixels.iter().map(|&(i, weight)| weight * at(i)).sum();
                *sum += selected * mean;
            }
            used += selected;
        }
        let value = window[12];
        let own = m.color(x, y) as usize;
        std::array::from_fn(|c| {
            if c == own {
                value
            } else {
                value + (sums[c] - sums[own]) / used
            }
        })
    }
}

/// The 5×5 neighbourhood of (x, y), which must lie inside the image, when all its values are
/// finite.
fn finite_window(m: &Mosaic, x: usize, y: usize) -> Option<Window> {
    let mut window = [0.0f32; 25];
    for (row, chunk) in window.chunks_exact_mut(5).enumerate() {
        let start = (y + row - 2) * m.width + x - 2;
        chunk.copy_from_slice(&m.data[start..start + 5]);
    }
    window.iter().all(|v| v.is_finite()).then_some(window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    const PATTERNS: [BayerPattern; 4] = BayerPattern::ALL;

    /// A mosaic sampled from an RGB image with a pattern.
    fn mosaic_of(rgb: &Array3<f32>, pattern: BayerPattern) -> Array2<f32> {
        let (_, h, w) = rgb.dim();
        Array2::from_shape_fn((h, w), |(y, x)| {
            rgb[[pattern.color_at(x, y) as usize, y, x]]
        })
    }

    /// A smooth RGB image: a different linear ramp per channel (exact in f32: small integers).
    fn ramp(h: usize, w: usize) -> Array3<f32> {
        Array3::from_shape_fn((3, h, w), |(c, y, x)| {
            let (x, y) = (x as f32, y as f32);
            match c {
                0 => 100.0 + 3.0 * x + 2.0 * y,
                1 => 500.0 - 1.0 * x + 4.0 * y,
                _ => 50.0 + 5.0 * x - 1.0 * y,
            }
        })
    }

    #[test]
    fn parse_and_names() {
        for p in PATTERNS {
            assert_eq!(BayerPattern::parse(p.name()), Some(p));
            assert_eq!(
                BayerPattern::parse(&format!(" {} ", p.name().to_lowercase())),
                Some(p)
            );
        }
        assert_eq!(BayerPattern::parse("MONO"), None);
        assert_eq!(BayerPattern::parse("GRBGX"), None);
        assert_eq!(DebayerMethod::parse("VNG"), Some(DebayerMethod::Vng));
        assert_eq!(
            DebayerMethod::parse("bilinear"),
            Some(DebayerMethod::Bilinear)
        );
        assert_eq!(
            DebayerMethod::parse("Super-Pixel"),
            Some(DebayerMethod::Superpixel)
        );
        assert_eq!(DebayerMethod::parse(" RCD"), Some(DebayerMethod::Rcd));
        assert_eq!(DebayerMethod::parse("ahd"), None);
    }

    #[test]
    fn colour_maps() {
        use Color::*;
        let p = BayerPattern::Grbg;
        assert_eq!(
            [
                p.color_at(0, 0),
                p.color_at(1, 0),
                p.color_at(0, 1),
                p.color_at(1, 1)
            ],
            [Green, Red, Blue, Green]
        );
        assert_eq!(p.color_at(3, 2), Red);
        assert_eq!(BayerPattern::Rggb.color_at(0, 0), Red);
        assert_eq!(BayerPattern::Bggr.color_at(1, 1), Red);
        assert_eq!(BayerPattern::Gbrg.color_at(1, 0), Blue);
        assert_eq!(BayerPattern::channel_index(5, 3), 3);
        assert_eq!(BayerPattern::channel_index(4, 3), 2);
    }

    #[test]
    fn shifts() {
        use BayerPattern::*;
        assert_eq!(Rggb.shifted(1, 0), Grbg);
        assert_eq!(Rggb.shifted(0, 1), Gbrg);
        assert_eq!(Rggb.shifted(1, 1), Bggr);
        assert_eq!(Grbg.shifted(1, 1), Gbrg);
        for p in PATTERNS {
            assert_eq!(p.shifted(2, 4), p);
            for (dx, dy) in [(0, 1), (1, 0), (1, 1), (3, 2)] {
                let s = p.shifted(dx, dy);
                for (x, y) in [(0, 0), (1, 0), (0, 1), (1, 1), (4, 7)] {
                    assert_eq!(s.color_at(x, y), p.color_at(x + dx, y + dy));
                }
            }
        }
    }

    #[test]
    fn header_values() {
        use BayerPattern::*;
        let f = BayerPattern::from_header_values;
        // The Seestar S50 case: GRBG, no offsets, no ROWORDER → GRBG as stored.
        assert_eq!(f(Some("GRBG"), 0, 0, None, 1920), Some(Grbg));
        assert_eq!(f(Some("GRBG"), 0, 0, Some("TOP-DOWN"), 1920), Some(Grbg));
        assert_eq!(f(None, 0, 0, None, 1920), None);
        assert_eq!(f(Some("MONO"), 0, 0, None, 1920), None);
        // Offsets: odd values shift, even ones don't, negatives modulo 2.
        assert_eq!(f(Some("RGGB"), 1, 0, None, 10), Some(Grbg));
        assert_eq!(f(Some("RGGB"), 0, 1, None, 10), Some(Gbrg));
        assert_eq!(f(Some("RGGB"), 1, 1, None, 10), Some(Bggr));
        assert_eq!(f(Some("RGGB"), 2, -2, None, 10), Some(Rggb));
        assert_eq!(f(Some("RGGB"), -1, 0, None, 10), Some(Grbg));
        // BOTTOM-UP: flipped vertically for an even height, unchanged for an odd one.
        assert_eq!(f(Some("RGGB"), 0, 0, Some("BOTTOM-UP"), 1920), Some(Gbrg));
        assert_eq!(f(Some("grbg"), 0, 0, Some(" bottom-up "), 1920), Some(Bggr));
        assert_eq!(f(Some("RGGB"), 0, 0, Some("BOTTOM-UP"), 1921), Some(Rggb));
        // Offset and flip combine (both are row/column swaps).
        assert_eq!(f(Some("RGGB"), 0, 1, Some("BOTTOM-UP"), 1920), Some(Rggb));
    }

    /// The flip rule equals reading the pattern through a vertically flipped image.
    #[test]
    fn bottom_up_matches_a_flipped_image() {
        for p in PATTERNS {
            for h in [6usize, 7] {
                let stored =
                    BayerPattern::from_header_values(Some(p.name()), 0, 0, Some("BOTTOM-UP"), h)
                        .unwrap();
                for r in 0..h {
                    for x in 0..2 {
                        // Stored row r is sensor row h − 1 − r, where `p` applies.
                        assert_eq!(
                            stored.color_at(x, r),
                            p.color_at(x, h - 1 - r),
                            "{p:?} h={h} r={r}"
                        );
                    }
                }
            }
        }
    }

    const METHODS: [DebayerMethod; 4] = [
        DebayerMethod::Bilinear,
        DebayerMethod::Vng,
        DebayerMethod::Rcd,
        DebayerMethod::Superpixel,
    ];

    /// The full-size methods.
    const INTERPOLATING: [DebayerMethod; 3] = [
        DebayerMethod::Bilinear,
        DebayerMethod::Vng,
        DebayerMethod::Rcd,
    ];

    /// Root-mean-square difference of two RGB images over the pixels at least `border` from
    /// every edge, per channel.
    fn rms(a: &Array3<f32>, b: &Array3<f32>, border: usize) -> [f32; 3] {
        let (_, h, w) = a.dim();
        let inner = ndarray::s![border..h - border, border..w - border];
        std::array::from_fn(|c| {
            let d = &a.index_axis(ndarray::Axis(0), c).slice(inner)
                - &b.index_axis(ndarray::Axis(0), c).slice(inner);
            (d.mapv(|v| v * v).mean().unwrap()).sqrt()
        })
    }

    #[test]
    fn flat_mosaic_is_exact_everywhere() {
        // Small sizes exercise the fallbacks; 21×21 and more, RCD proper in the middle.
        for (h, w) in [(8, 10), (7, 9), (5, 5), (2, 2), (3, 1), (21, 21), (30, 27)] {
            let flat = Array2::from_elem((h, w), 100.0f32);
            for p in PATTERNS {
                for method in METHODS {
                    let rgb = debayer(flat.view(), p, method);
                    let bad: Vec<_> = rgb.indexed_iter().filter(|(_, v)| **v != 100.0).collect();
                    // A 3×1 mosaic has colours with no neighbour at all: NaN, never a wrong value.
                    if (h, w) == (3, 1) && method != DebayerMethod::Superpixel {
                        assert!(bad.iter().all(|(_, v)| v.is_nan()), "{p:?} {method:?}");
                    } else {
                        assert!(bad.is_empty(), "{p:?} {method:?} {h}×{w}: {bad:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn ramps_are_exact_in_the_interior() {
        let (h, w) = (12, 14);
        let rgb = ramp(h, w);
        for p in PATTERNS {
            let mosaic = mosaic_of(&rgb, p);
            for (method, border) in [(DebayerMethod::Bilinear, 1), (DebayerMethod::Vng, 2)] {
                let out = debayer(mosaic.view(), p, method);
                for c in 0..3 {
                    for y in border..h - border {
                        for x in border..w - border {
                            let (got, want) = (out[[c, y, x]], rgb[[c, y, x]]);
                            assert!(
                                (got - want).abs() < 1e-3,
                                "{p:?} {method:?} c{c} ({x},{y}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn constant_colour_is_exact_everywhere() {
        // Each channel constant but different: bilinear is exact everywhere (it only averages one
        // colour), and so are VNG and RCD (colour differences and grey-level ratios are
        // constant).
        let rgb = Array3::from_shape_fn((3, 25, 28), |(c, _, _)| [300.0, 1000.0, 70.0][c]);
        for p in PATTERNS {
            let mosaic = mosaic_of(&rgb, p);
            for method in INTERPOLATING {
                assert_eq!(debayer(mosaic.view(), p, method), rgb, "{p:?} {method:?}");
            }
        }
    }

    #[test]
    fn keeps_measured_values() {
        let rgb = ramp(24, 25);
        let p = BayerPattern::Gbrg;
        let mosaic = mosaic_of(&rgb, p).mapv(|v| v + (v * 7.0).sin() * 30.0);
        for method in INTERPOLATING {
            let out = debayer(mosaic.view(), p, method);
            for ((y, x), v) in mosaic.indexed_iter() {
                assert_eq!(out[[p.color_at(x, y) as usize, y, x]], *v);
            }
        }
    }

    #[test]
    fn superpixel_is_exact() {
        let rgb = ramp(8, 6);
        for p in PATTERNS {
            let mosaic = mosaic_of(&rgb, p);
            let out = debayer(mosaic.view(), p, DebayerMethod::Superpixel);
            assert_eq!(out.dim(), (3, 4, 3));
            for cy in 0..4 {
                for cx in 0..3 {
                    let cell: Vec<(usize, usize)> = vec![
                        (2 * cx, 2 * cy),
                        (2 * cx + 1, 2 * cy),
                        (2 * cx, 2 * cy + 1),
                        (2 * cx + 1, 2 * cy + 1),
                    ];
                    let of = |c: Color| {
                        cell.iter()
                            .filter(|&&(x, y)| p.color_at(x, y) == c)
                            .map(|&(x, y)| mosaic[[y, x]])
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(out[[0, cy, cx]], of(Color::Red)[0]);
                    assert_eq!(out[[2, cy, cx]], of(Color::Blue)[0]);
                    let g = of(Color::Green);
                    assert_eq!(out[[1, cy, cx]], (g[0] + g[1]) / 2.0);
                }
            }
        }
        // Odd sizes drop the incomplete last row/column.
        let odd = Array2::from_elem((7, 5), 1.0f32);
        assert_eq!(
            debayer(odd.view(), BayerPattern::Rggb, DebayerMethod::Superpixel).dim(),
            (3, 3, 2)
        );
    }

    #[test]
    fn nan_pixels_are_missing_neighbours() {
        let mut flat = Array2::from_elem((30, 32), 50.0f32);
        flat[[14, 15]] = f32::NAN;
        for method in INTERPOLATING {
            let out = debayer(flat.view(), BayerPattern::Rggb, method);
            let own = BayerPattern::Rggb.color_at(15, 14) as usize;
            for ((c, y, x), v) in out.indexed_iter() {
                if (c, y, x) == (own, 14, 15) {
                    assert!(v.is_nan());
                } else {
                    assert_eq!(*v, 50.0, "{method:?} c{c} ({x},{y})");
                }
            }
        }
    }

    #[test]
    fn bilinear_rows_equal_the_general_pixel_path() {
        // Irregular values (odd width, a NaN inside and one on the border): the row path must
        // give the general per-pixel means bit for bit, for every pattern.
        let mut data =
            Array2::from_shape_fn((9, 11), |(y, x)| ((x * 37 + y * 101) % 53) as f32 * 1.37);
        data[(4, 5)] = f32::NAN;
        data[(0, 3)] = f32::NAN;
        for pattern in PATTERNS {
            let fast = debayer(data.view(), pattern, DebayerMethod::Bilinear);
            let m = Mosaic {
                data: data.as_slice().unwrap(),
                width: 11,
                height: 9,
                colors: pattern.colors(),
            };
            for ((y, x), _) in data.indexed_iter() {
                let want = m.bilinear_pixel(x, y);
                for (c, w) in want.iter().enumerate() {
                    let got = fast[[c, y, x]];
                    assert!(
                        got.to_bits() == w.to_bits() || (got.is_nan() && w.is_nan()),
                        "{pattern:?} ({x}, {y}) colour {c}: {got} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn vng_follows_edges_better_than_bilinear() {
        // A sharp vertical edge in a grey image: VNG interpolates along it, bilinear across it.
        let rgb =
            Array3::from_shape_fn((3, 16, 16), |(_, _, x)| if x < 8 { 100.0 } else { 1000.0 });
        let p = BayerPattern::Rggb;
        let mosaic = mosaic_of(&rgb, p);
        let error = |method| {
            let out = debayer(mosaic.view(), p, method);
            (&out - &rgb)
                .slice(ndarray::s![.., 2..14, 2..14])
                .mapv(f32::abs)
                .sum()
        };
        let (bilinear, vng) = (error(DebayerMethod::Bilinear), error(DebayerMethod::Vng));
        assert!(vng < 0.5 * bilinear, "vng {vng} vs bilinear {bilinear}");
    }

    #[test]
    fn rcd_reproduces_ramps_closely_in_the_interior() {
        // RCD corrects by ratios of grey levels, not differences: not exact on linear ramps,
        // but within 0.01 on these (values 50–700, gradients of 1–5 per pixel).
        let (h, w) = (32, 34);
        let rgb = ramp(h, w);
        for p in PATTERNS {
            let out = debayer(mosaic_of(&rgb, p).view(), p, DebayerMethod::Rcd);
            let inner = ndarray::s![.., RCD_RADIUS..h - RCD_RADIUS, RCD_RADIUS..w - RCD_RADIUS];
            let worst = (&out - &rgb)
                .slice(inner)
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(worst < 0.02, "{p:?}: worst error {worst}");
        }
    }

    /// A smooth colour scene: grey structure (waves of periods 12–40 pixels and a star-like
    /// Gaussian) times slowly varying colours, so that the channels are correlated as in real
    /// images.
    fn scene(h: usize, w: usize) -> Array3<f32> {
        Array3::from_shape_fn((3, h, w), |(c, y, x)| {
            let (x, y) = (x as f32, y as f32);
            let star = (-((x - 23.0).powi(2) + (y - 19.0).powi(2)) / 6.0).exp();
            let grey = 1000.0
                + 400.0 * (x / 2.0).sin() * (y / 3.0).cos()
                + 300.0 * ((x + 2.0 * y) / 6.0).sin()
                + 3000.0 * star;
            let tint = [0.8 + 0.004 * x, 1.0, 0.6 + 0.005 * y][c];
            tint * grey + [30.0, 50.0, 20.0][c]
        })
    }

    #[test]
    fn rcd_beats_bilinear_on_a_smooth_scene() {
        // RMS errors in the interior: bilinear 28–47 per channel, RCD 11–18.
        let rgb = scene(44, 48);
        for p in PATTERNS {
            let mosaic = mosaic_of(&rgb, p);
            let error = |method| rms(&debayer(mosaic.view(), p, method), &rgb, RCD_RADIUS);
            let (bilinear, rcd) = (error(DebayerMethod::Bilinear), error(DebayerMethod::Rcd));
            for c in 0..3 {
                assert!(
                    rcd[c] < bilinear[c],
                    "{p:?} c{c}: RCD {rcd:?} vs bilinear {bilinear:?}"
                );
            }
        }
    }

    #[test]
    fn rcd_follows_edges_better_than_bilinear() {
        // A sharp vertical edge in a grey image, as for VNG.
        let rgb =
            Array3::from_shape_fn((3, 28, 28), |(_, _, x)| if x < 14 { 100.0 } else { 1000.0 });
        let p = BayerPattern::Grbg;
        let mosaic = mosaic_of(&rgb, p);
        let error = |method| rms(&debayer(mosaic.view(), p, method), &rgb, RCD_RADIUS);
        let (bilinear, rcd) = (error(DebayerMethod::Bilinear), error(DebayerMethod::Rcd));
        for c in 0..3 {
            assert!(
                rcd[c] < 0.1 * bilinear[c],
                "c{c}: RCD {rcd:?} vs bilinear {bilinear:?}"
            );
        }
    }

    #[test]
    fn rcd_scales_with_the_data() {
        // ε and the statistics follow the data's scale: a power-of-two factor scales every
        // intermediate value exactly, so the result scales exactly.
        let mosaic = mosaic_of(&scene(30, 32), BayerPattern::Rggb);
        let rcd = |m: &Array2<f32>| debayer(m.view(), BayerPattern::Rggb, DebayerMethod::Rcd);
        assert_eq!(rcd(&mosaic.mapv(|v| v / 1024.0)), rcd(&mosaic) / 1024.0);
    }

    #[test]
    fn rcd_stays_bounded_on_negative_data() {
        // Dark-subtracted noise in [−5, 5]: with |L| in the ratio's denominator each green
        // estimate is the neighbour times a factor in [0, 2] (|green| ≤ 10), so red and blue are
        // at most 10 + 15 at sites and 5 + 35 at green pixels. (Without it: up to 283 here.)
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mosaic = Array2::from_shape_fn((64, 64), |_| rng.random_range(-5.0f32..5.0));
        let out = debayer(mosaic.view(), BayerPattern::Grbg, DebayerMethod::Rcd);
        let worst = out.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(worst <= 40.0, "{worst}");
    }

    #[test]
    fn rcd_does_not_depend_on_the_thread_count() {
        let mosaic = mosaic_of(&scene(40, 36), BayerPattern::Bggr);
        let run = || debayer(mosaic.view(), BayerPattern::Bggr, DebayerMethod::Rcd);
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(run);
        assert_eq!(one_thread, run());
    }

    #[test]
    fn strided_input_is_accepted() {
        let rgb = ramp(10, 12);
        let mosaic = mosaic_of(&rgb, BayerPattern::Rggb);
        let transposed_twice = mosaic.t().to_owned();
        let view = transposed_twice.t();
        assert_eq!(
            debayer(view, BayerPattern::Rggb, DebayerMethod::Vng),
            debayer(mosaic.view(), BayerPattern::Rggb, DebayerMethod::Vng)
        );
    }
}
