//! Resampling of a plane by a 3×3 projective transform (registration).
//!
//! The transform maps an **output** pixel to the **source**: `(x', y', w') = M · (x, y, 1)`,
//! source position `(x'/w', y'/w')`, with pixel centres at integer coordinates (x = column,
//! y = row). An output pixel whose source position lies outside the source image
//! (`[0, W−1] × [0, H−1]`) is NaN: no coverage, so that stacking sees it as missing rather than
//! zero. Taps that fall outside the image near its edge are clamped to the edge.
//!
//! - `Bilinear`: the 2×2 neighbours, weighted by distance.
//! - `Bicubic`: Keys' cubic convolution (a = −0.5) on the 4×4 neighbours.
//! - `Lanczos3`: the 6×6 neighbours weighted by `sinc(t)·sinc(t/3)` (weights normalised to
//!   sum 1), then clamped to the range of the 2×2 nearest source pixels, which removes the
//!   ringing (overshoot) around stars and hot pixels.
//!
//! A NaN source tap makes the output NaN. Arithmetic is `f64` per pixel, the result `f32`.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

/// A 3×3 transform, row-major, output → source.
pub type Transform = [[f64; 3]; 3];

pub const IDENTITY: Transform = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interpolation {
    Bilinear,
    Bicubic,
    #[default]
    Lanczos3,
}

impl Interpolation {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bilinear" => Some(Self::Bilinear),
            "bicubic" => Some(Self::Bicubic),
            "lanczos3" | "lanczos" => Some(Self::Lanczos3),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Bilinear => "bilinear",
            Self::Bicubic => "bicubic",
            Self::Lanczos3 => "lanczos3",
        }
    }
}

/// Resamples `src` into an `(height, width)` plane by `transform` (output → source).
pub fn warp(
    src: ArrayView2<f32>,
    transform: &Transform,
    interpolation: Interpolation,
    (height, width): (usize, usize),
) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((height, width));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(y, mut row)| {
            for (x, v) in row.iter_mut().enumerate() {
                *v = sample(src, transform, interpolation, x as f64, y as f64);
            }
        });
    out
}

/// The output value at output pixel (x, y).
pub fn sample(
    src: ArrayView2<f32>,
    m: &Transform,
    interpolation: Interpolation,
    x: f64,
    y: f64,
) -> f32 {
    let w = m[2][0] * x + m[2][1] * y + m[2][2];
    let sx = (m[0][0] * x + m[0][1] * y + m[0][2]) / w;
    let sy = (m[1][0] * x + m[1][1] * y + m[1][2]) / w;
    let (h, wd) = src.dim();
    if !(sx >= 0.0 && sy >= 0.0 && sx <= (wd - 1) as f64 && sy <= (h - 1) as f64) {
        return f32::NAN;
    }
    match interpolation {
        Interpolation::Bilinear => bilinear(src, sx, sy),
        Interpolation::Bicubic => separable(src, sx, sy, 2, keys_cubic, false),
        Interpolation::Lanczos3 => separable(src, sx, sy, 3, lanczos3, true),
    }
}

/// The source pixel at (x, y) with coordinates clamped to the image.
fn at(src: ArrayView2<f32>, x: i64, y: i64) -> f64 {
    let (h, w) = src.dim();
    let cx = x.clamp(0, w as i64 - 1) as usize;
    let cy = y.clamp(0, h as i64 - 1) as usize;
    f64::from(src[(cy, cx)])
}

fn bilinear(src: ArrayView2<f32>, sx: f64, sy: f64) -> f32 {
    let (x0, y0) = (sx.floor(), sy.floor());
    let (fx, fy) = (sx - x0, sy - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let top = at(src, x0, y0) * (1.0 - fx) + at(src, x0 + 1, y0) * fx;
    let bottom = at(src, x0, y0 + 1) * (1.0 - fx) + at(src, x0 + 1, y0 + 1) * fx;
    (top * (1.0 - fy) + bottom * fy) as f32
}

/// Keys' cubic convolution kernel, a = −0.5.
pub fn keys_cubic(t: f64) -> f64 {
    let t = t.abs();
    if t < 1.0 {
        (1.5 * t - 2.5) * t * t + 1.0
    } else if t < 2.0 {
        ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    } else {
        0.0
    }
}

/// `sinc(t)·sinc(t/3)` for |t| < 3, else 0.
pub fn lanczos3(t: f64) -> f64 {
    if t == 0.0 {
        return 1.0;
    }
    if t.abs() >= 3.0 {
        return 0.0;
    }
    let p = std::f64::consts::PI * t;
    3.0 * p.sin() * (p / 3.0).sin() / (p * p)
}

/// A separable filter with `radius` taps on each side; optionally clamped to the 2×2
/// neighbourhood's range.
fn separable(
    src: ArrayView2<f32>,
    sx: f64,
    sy: f64,
    radius: i64,
    kernel: fn(f64) -> f64,
    clamp: bool,
) -> f32 {
    let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
    let mut wx = [0.0f64; 6];
    let mut wy = [0.0f64; 6];
    let taps = (2 * radius) as usize;
    for i in 0..taps {
        let dx = (x0 - radius + 1 + i as i64) as f64;
        let dy = (y0 - radius + 1 + i as i64) as f64;
        wx[i] = kernel(sx - dx);
        wy[i] = kernel(sy - dy);
    }
    let (sum_x, sum_y): (f64, f64) = (wx[..taps].iter().sum(), wy[..taps].iter().sum());
    let mut acc = 0.0;
    for (j, wyj) in wy[..taps].iter().enumerate() {
        let yy = y0 - radius + 1 + j as i64;
        let row: f64 = wx[..taps]
            .iter()
            .enumerate()
            .map(|(i, wxi)| wxi * at(src, x0 - radius + 1 + i as i64, yy))
            .sum();
        acc += wyj * row;
    }
    let mut v = acc / (sum_x * sum_y);
    if clamp && v.is_finite() {
        let n = [
            at(src, x0, y0),
            at(src, x0 + 1, y0),
            at(src, x0, y0 + 1),
            at(src, x0 + 1, y0 + 1),
        ];
        let lo = n.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = n.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        v = v.clamp(lo, hi);
    }
    v as f32
}

/// A transform that shifts by (dx, dy) and rotates by `angle` (radians) about `centre`, as
/// output → source.
pub fn similarity(dx: f64, dy: f64, angle: f64, scale: f64, centre: (f64, f64)) -> Transform {
    let (c, s) = (angle.cos() * scale, angle.sin() * scale);
    let (cx, cy) = centre;
    [
        [c, -s, cx - c * cx + s * cy + dx],
        [s, c, cy - s * cx - c * cy + dy],
        [0.0, 0.0, 1.0],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn ramp(h: usize, w: usize) -> Array2<f32> {
        Array2::from_shape_fn((h, w), |(y, x)| (3 * x + 7 * y) as f32)
    }

    #[test]
    fn identity_reproduces_the_image() {
        let src = ramp(12, 16);
        for interp in [
            Interpolation::Bilinear,
            Interpolation::Bicubic,
            Interpolation::Lanczos3,
        ] {
            let out = warp(src.view(), &IDENTITY, interp, (12, 16));
            for (a, b) in out.iter().zip(src.iter()) {
                assert!((a - b).abs() < 1e-4, "{interp:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn shifts_interpolate_linear_ramps_and_mark_uncovered_pixels() {
        let src = ramp(20, 20);
        let m = similarity(2.5, -1.25, 0.0, 1.0, (0.0, 0.0));
        for interp in [
            Interpolation::Bilinear,
            Interpolation::Bicubic,
            Interpolation::Lanczos3,
        ] {
            let out = warp(src.view(), &m, interp, (20, 20));
            // Interior: the ramp evaluated at the source position (bilinear and Keys' cubic
            // reproduce linear functions exactly; normalised Lanczos-3 nearly).
            let (x, y) = (8usize, 9usize);
            let want = 3.0 * (x as f32 + 2.5) + 7.0 * (y as f32 - 1.25);
            let tolerance = if interp == Interpolation::Lanczos3 {
                0.2
            } else {
                1e-3
            };
            assert!(
                (out[(y, x)] - want).abs() < tolerance,
                "{interp:?}: {} vs {want}",
                out[(y, x)]
            );
            // Source x = 19 + 2.5 is outside: no coverage.
            assert!(out[(10, 19)].is_nan());
            assert!(out[(0, 5)].is_nan());
        }
    }

    #[test]
    fn lanczos_is_clamped_against_ringing() {
        // A single bright pixel: Lanczos would undershoot below 0 around it; clamping keeps
        // every output within the local range.
        let mut src = Array2::<f32>::zeros((16, 16));
        src[(8, 8)] = 1000.0;
        let out = warp(
            src.view(),
            &similarity(0.5, 0.3, 0.0, 1.0, (0.0, 0.0)),
            Interpolation::Lanczos3,
            (16, 16),
        );
        assert!(
            out.iter()
                .filter(|v| v.is_finite())
                .all(|&v| (0.0..=1000.0).contains(&v))
        );
        let total: f32 = out.iter().filter(|v| v.is_finite()).sum();
        assert!(total > 500.0);
    }

    #[test]
    fn nan_sources_propagate() {
        let mut src = ramp(10, 10);
        src[(5, 5)] = f32::NAN;
        let out = warp(
            src.view(),
            &similarity(0.5, 0.5, 0.0, 1.0, (0.0, 0.0)),
            Interpolation::Bilinear,
            (10, 10),
        );
        assert!(out[(4, 4)].is_nan() && out[(5, 5)].is_nan());
        assert!(out[(2, 2)].is_finite());
    }

    #[test]
    fn kernels() {
        assert_eq!(lanczos3(0.0), 1.0);
        assert!(lanczos3(1.0).abs() < 1e-12 && lanczos3(3.0) == 0.0);
        assert_eq!(keys_cubic(0.0), 1.0);
        assert!(keys_cubic(1.0).abs() < 1e-12 && keys_cubic(2.0) == 0.0);
        assert_eq!(
            Interpolation::parse("Lanczos3"),
            Some(Interpolation::Lanczos3)
        );
    }
}
