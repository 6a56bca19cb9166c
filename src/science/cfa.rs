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
//!   default of Siril and RawTherapee; the algorithm as implemented is described on
//!   `RcdKernel` below.
//! - [`DebayerMethod::Superpixel`]: one RGB pixel per 2×2 cell, half size.
//!
//! Borders use only the neighbours that exist (no replicated or mirrored edges), and NaN pixels
//! count as missing, so a flat mosaic gives exactly the same flat value in every channel,
//! corners included. VNG and RCD need a neighbourhood around each pixel (2 and 10 pixels);
//! closer to the border, or next to a NaN, they fall back to bilinear. The output is
//! `(3, H, W)` in R, G, B order, computed in parallel by rows (RCD: one plane per step, each
//! by rows), and each output pixel depends only on the input (deterministic, no accumulation order
//! across threads): the reference for a GPU port.

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
        DebayerMethod::Rcd => {
            let kernel = RcdKernel::new(&m, pattern);
            m.interpolate(|m, x, y| kernel.pixel(m, x, y))
        }
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
    let plane = height * width;
    let mut out = vec![0.0f32; 3 * plane];
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    // Chunks of at least 1 so that an empty image has no rows rather than a panic.
    let rows = width.max(1);
    red.par_chunks_mut(rows)
        .zip(green.par_chunks_mut(rows))
        .zip(blue.par_chunks_mut(rows))
        .enumerate()
        .for_each(|(y, ((r, g), b))| fill(y, r, g, b));
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

/// How far RCD reaches: the RCD value of a pixel depends on the mosaic within this Chebyshev
/// distance of it. The red and blue of a green pixel (step 5 of [`RcdKernel`]) read the
/// step-4 values of sites up to 3 pixels away, each of which reads the mosaic up to 7 pixels
/// further (the step-3 greens 2 pixels away diagonally, 5 more).
pub(crate) const RCD_RADIUS: usize = 10;

/// RCD's tolerance against division by zero, relative to the largest magnitude in the mosaic:
/// the reference's `1e-5` for data normalised to [0, 1].
const RCD_EPS: f32 = 1e-5;

/// The colour-difference high-pass filter of RCD's directional statistics: taps at −3..=3
/// steps along a row, column or diagonal. Colours alternate along such a line, and the taps of
/// each colour (at 0, ±2 and at ±1, ±3) sum to zero: a constant added to one colour (a colour
/// cast) does not change the response, only structure does.
const RCD_HIGH_PASS: [f32; 7] = [1.0, -3.0, -1.0, 6.0, -1.0, -3.0, 1.0];

/// Ratio Corrected Demosaicing (Luis Sanz Rodríguez, RCD release 2.3, 2017), Siril's and
/// RawTherapee's default, written from the published description. Offsets t are directions
/// between neighbouring pixels (N, S, W, E or the diagonals); `v(t)` is the mosaic at that
/// offset from the pixel p being computed, 0 being p itself; "sites" are the red and blue
/// pixels; `ε = RCD_EPS · s`, s the largest finite |value| of the mosaic. Each step is a plane
/// of the image's size, computed in parallel by rows from the planes before it.
///
/// 1. **Directional statistics** at every pixel: along a line with step d,
///    `stat_d = Σ_{j=−1..1} (HP_d(p + j·d) / s)²` (at least ε²/s²), where `HP_d` is
///    [`RCD_HIGH_PASS`] along the line. `vh = stat_V / (stat_V + stat_H)` is close to 1 across
///    a horizontal edge (interpolate horizontally) and to 0 across a vertical one; at sites,
///    `pq = stat_P / (stat_P + stat_Q)` does the same for the diagonals (P: NW–SE, Q: NE–SW).
///    Where used, each is *refined*: replaced by the mean of its four diagonal neighbours when
///    that mean is further from ½ (more decided).
/// 2. **Low-pass filter** at sites: `L = [1 2 1; 2 4 2; 1 2 1] / 16` over the mosaic, a grey
///    level mixing the three colours.
/// 3. **Green at sites.** In each cardinal direction t, the green neighbour corrected by the
///    ratio of grey levels, `v(t) · (1 + (L(0) − L(2t)) / (ε + |L(0)| + |L(2t)|))`, with the
///    gradient `ε + |v(t) − v(−t)| + |v(0) − v(2t)| + |v(t) − v(3t)| + |v(2t) − v(4t)|`.
///    Opposite directions are blended with weights inversely proportional to their gradients
///    into a vertical and a horizontal estimate V and H; green is `V + vh · (H − V)`.
/// 4. **Blue at red sites, red at blue sites** (the colour c measured at the diagonal
///    neighbours): in each diagonal direction t the colour difference `c(t) − G(t)`, with the
///    gradient `ε + |c(t) − c(−t)| + |c(t) − c(3t)| + |G(0) − G(2t)|` (G from step 3); blended
///    as in step 3 into P and Q; the value is `G + P + pq · (Q − P)`.
/// 5. **Red and blue at green pixels**: the same colour differences and gradients in the
///    cardinal directions, reading red and blue at the neighbouring sites (measured, or from
///    step 4), blended by `vh`.
///
/// Measured values are kept. ε and the statistics follow the data's scale, so that scaling the
/// mosaic scales the result (up to rounding), like the reference on 16-bit data in [0, 1].
/// Pixels closer than [`RCD_RADIUS`] to the border, or with a non-finite value within that
/// distance, take the bilinear value (Siril takes bilinear for its outer 9 pixels).
///
/// Where it differs from the reference code Siril 1.0.6 runs (librtprocess' tiled RCD):
/// - The ratio's denominator takes |L|, so that dark-subtracted data with negative values
///   keeps it bounded (correction factor in [0, 2], as for non-negative data); the reference
///   clamps its input to [0, 1] (×65536) and its output at 0 instead.
/// - The ratio correction is release 2.3's `1 + ΔL / (ε + ΣL)`, exact on flat data; the
///   reference now computes `2·L(0) / (ε + L(0) + L(2t))` with L four times larger.
/// - The diagonal statistics sum the high-pass at the three sites on the diagonal through p.
///   The reference stores its diagonal high-pass at half resolution, evaluated at odd columns
///   only, and reads it back as if at the sites: depending on the row, the centre or the two
///   outer terms come from the green pixels beside them. On the Seestar subs this is the whole
///   difference in red and blue (correlation 0.992–0.998 with it, 0.99999 when emulated).
/// - No 16-bit rounding, no tiles (the reference's tile edges leave a trace 9 pixels in).
struct RcdKernel {
    /// `vh` of step 1 at every pixel at least 4 from the edges.
    vh: Vec<f32>,
    /// Green at every pixel at least 5 from the edges: measured, or step 3 at sites.
    green: Vec<f32>,
    /// At sites at least 7 from the edges: step 4, the one of red and blue not measured there.
    opposite: Vec<f32>,
    eps: f32,
    /// Whether a non-finite value lies within [`RCD_RADIUS`] of each pixel; `None` when the
    /// mosaic has none.
    near_nonfinite: Option<Vec<bool>>,
    bilinear: BilinearKernel,
}

impl RcdKernel {
    /// Runs steps 1 to 4 over the mosaic; [`RcdKernel::pixel`] does step 5.
    fn new(m: &Mosaic, pattern: BayerPattern) -> Self {
        let (data, w) = (m.data, m.width as isize);
        let scale = data
            .par_iter()
            .filter(|v| v.is_finite())
            .map(|v| v.abs())
            .reduce(|| 0.0, f32::max)
            .max(f32::MIN_POSITIVE);
        let (eps, unit) = (RCD_EPS * scale, scale.recip());
        let is_site = |x, y| m.color(x, y) != Color::Green;

        // Step 1, vertical/horizontal.
        let vh = {
            let vertical = rcd_plane(m, 3, |_, _, i| squared_high_pass(data, i, w, unit));
            let horizontal = rcd_plane(m, 3, |_, _, i| squared_high_pass(data, i, 1, unit));
            rcd_plane(m, 4, |_, _, i| {
                discrimination(&vertical, &horizontal, i, w, 1)
            })
        };
        // Steps 2 and 3.
        let low_pass = rcd_plane(m, 1, |x, y, i| {
            if is_site(x, y) {
                low_pass(data, i, w)
            } else {
                f32::NAN
            }
        });
        let green = rcd_plane(m, 5, |x, y, i| {
            if !is_site(x, y) {
                return data[i];
            }
            let side = |t| ratio_side(data, &low_pass, i, t, eps);
            let vertical = blend(side(-w), side(w));
            let horizontal = blend(side(-1), side(1));
            vertical + refined(&vh, i, w) * (horizontal - vertical)
        });
        drop(low_pass);
        // Step 1, diagonals (at sites: their diagonal neighbours are sites too), and step 4.
        let pq = {
            let at_sites = |step| {
                rcd_plane(m, 3, |x, y, i| {
                    if is_site(x, y) {
                        squared_high_pass(data, i, step, unit)
                    } else {
                        f32::NAN
                    }
                })
            };
            let (p, q) = (at_sites(w + 1), at_sites(w - 1));
            rcd_plane(m, 4, |x, y, i| {
                if is_site(x, y) {
                    discrimination(&p, &q, i, w + 1, w - 1)
                } else {
                    f32::NAN
                }
            })
        };
        let opposite = rcd_plane(m, 7, |x, y, i| {
            if !is_site(x, y) {
                return f32::NAN;
            }
            let side = |t| difference_side(data, &green, i, t, eps);
            let p = blend(side(-(w + 1)), side(w + 1));
            let q = blend(side(-(w - 1)), side(w - 1));
            green[i] + p + refined(&pq, i, w) * (q - p)
        });
        RcdKernel {
            vh,
            green,
            opposite,
            eps,
            near_nonfinite: near_nonfinite(m, RCD_RADIUS),
            bilinear: BilinearKernel::new(pattern, m.width),
        }
    }

    /// The output pixel: step 5 at green pixels, the planes of steps 3 and 4 at sites,
    /// bilinear near the border and near non-finite values.
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
                let vh = refined(&self.vh, i, w);
                // The colour measured in the pixel's row, given where it is read from along
                // the column (the other sites: `opposite`) and along the row (the mosaic), or
                // the colour measured in its column, the other way round.
                let estimate = |along_column: &[f32], along_row: &[f32]| {
                    let side = |plane, t| difference_side(plane, &self.green, i, t, self.eps);
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

/// A plane of the mosaic's size, computed in parallel by rows: `value(x, y, index)` at the
/// pixels at least `margin` from every edge, NaN (not computed) elsewhere.
fn rcd_plane<F>(m: &Mosaic, margin: usize, value: F) -> Vec<f32>
where
    F: Fn(usize, usize, usize) -> f32 + Sync,
{
    let mut plane = vec![f32::NAN; m.width * m.height];
    let columns = margin..m.width.saturating_sub(margin);
    // Chunks of at least 1 so that an empty image has no rows rather than a panic.
    plane
        .par_chunks_mut(m.width.max(1))
        .enumerate()
        .filter(|(y, _)| *y >= margin && y + margin < m.height)
        .for_each(|(y, row)| {
            for x in columns.clone() {
                row[x] = value(x, y, y * m.width + x);
            }
        });
    plane
}

/// The index `offset` elements away from `i` (an offset `dy · width + dx`).
fn shifted(i: usize, offset: isize) -> usize {
    i.wrapping_add_signed(offset)
}

/// RCD step 1: `(HP / s)²` at index i along the line with the given index step (V: width,
/// H: 1, P: width + 1, Q: width − 1); `unit` = 1 / s, the data's scale.
fn squared_high_pass(data: &[f32], i: usize, step: isize, unit: f32) -> f32 {
    let high_pass: f32 = RCD_HIGH_PASS
        .iter()
        .zip(-3isize..)
        .map(|(&tap, k)| tap * data[shifted(i, k * step)])
        .sum();
    (high_pass * unit).powi(2)
}

/// RCD step 1: `stat_a / (stat_a + stat_b)` at index i, from the planes of squared high-pass
/// responses along two lines and their index steps.
fn discrimination(a: &[f32], b: &[f32], i: usize, step_a: isize, step_b: isize) -> f32 {
    let statistic = |squares: &[f32], step: isize| {
        let sum = squares[shifted(i, -step)] + squares[i] + squares[shifted(i, step)];
        sum.max(RCD_EPS * RCD_EPS)
    };
    let (a, b) = (statistic(a, step_a), statistic(b, step_b));
    a / (a + b)
}

/// RCD step 2: the 3×3 low-pass `[1 2 1; 2 4 2; 1 2 1] / 16` at index i.
fn low_pass(data: &[f32], i: usize, w: isize) -> f32 {
    let v = |offset| data[shifted(i, offset)];
    0.25 * v(0)
        + 0.125 * (v(-w) + v(w) + v(-1) + v(1))
        + 0.0625 * (v(-w - 1) + v(-w + 1) + v(w - 1) + v(w + 1))
}

/// A step-1 statistic at index i refined by its neighbourhood: the mean of its four diagonal
/// neighbours when that is further from ½, else its own value.
fn refined(statistic: &[f32], i: usize, w: isize) -> f32 {
    let own = statistic[i];
    let around = 0.25
        * (statistic[shifted(i, -w - 1)]
            + statistic[shifted(i, -w + 1)]
            + statistic[shifted(i, w - 1)]
            + statistic[shifted(i, w + 1)]);
    if (0.5 - own).abs() < (0.5 - around).abs() {
        around
    } else {
        own
    }
}

/// RCD step 3 in direction t (an index step) from the site at index i: the ratio-corrected
/// green estimate and its gradient.
fn ratio_side(data: &[f32], low_pass: &[f32], i: usize, t: isize, eps: f32) -> (f32, f32) {
    let v = |k: isize| data[shifted(i, k * t)];
    let (here, there) = (low_pass[i], low_pass[shifted(i, 2 * t)]);
    let estimate = v(1) * (1.0 + (here - there) / (eps + here.abs() + there.abs()));
    let gradient = eps
        + (v(1) - v(-1)).abs()
        + (v(0) - v(2)).abs()
        + (v(1) - v(3)).abs()
        + (v(2) - v(4)).abs();
    (estimate, gradient)
}

/// RCD steps 4 and 5 in direction t (an index step) from index i: the colour difference
/// `c(t) − G(t)` and its gradient, with c read from `chroma` at the odd multiples of t.
fn difference_side(chroma: &[f32], green: &[f32], i: usize, t: isize, eps: f32) -> (f32, f32) {
    let c = |k: isize| chroma[shifted(i, k * t)];
    let g = |k: isize| green[shifted(i, k * t)];
    let gradient = eps + (c(1) - c(-1)).abs() + (c(1) - c(3)).abs() + (g(0) - g(2)).abs();
    (c(1) - g(1), gradient)
}

/// Blends the `(estimate, gradient)` of two opposite directions with weights inversely
/// proportional to the gradients, written so that equal estimates come out exactly.
fn blend((a, gradient_a): (f32, f32), (b, gradient_b): (f32, f32)) -> f32 {
    a + gradient_a / (gradient_a + gradient_b) * (b - a)
}

/// For each pixel, whether a non-finite value lies within `radius` of it (Chebyshev
/// distance); `None` when the mosaic has none. A row pass then a column pass.
fn near_nonfinite(m: &Mosaic, radius: usize) -> Option<Vec<bool>> {
    if m.data.par_iter().all(|v| v.is_finite()) {
        return None;
    }
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
    Some(near)
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
