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

/// [`sample`] for every plane of `src` (`(planes, H, W)`) at one output pixel, with the
/// source position and the Lanczos weights computed once for all planes.
pub fn sample_planes(
    src: ndarray::ArrayView3<f32>,
    m: &Transform,
    interpolation: Interpolation,
    x: f64,
    y: f64,
    out: &mut [f32],
) {
    if interpolation != Interpolation::Lanczos3 {
        for (c, o) in out.iter_mut().enumerate() {
            *o = sample(src.index_axis(Axis(0), c), m, interpolation, x, y);
        }
        return;
    }
    let w = m[2][0] * x + m[2][1] * y + m[2][2];
    let sx = (m[0][0] * x + m[0][1] * y + m[0][2]) / w;
    let sy = (m[1][0] * x + m[1][1] * y + m[1][2]) / w;
    let (_, h, wd) = src.dim();
    if !(sx >= 0.0 && sy >= 0.0 && sx <= (wd - 1) as f64 && sy <= (h - 1) as f64) {
        out.fill(f32::NAN);
        return;
    }
    let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
    let (wx, wy) = (lanczos3_taps(sx - x0 as f64), lanczos3_taps(sy - y0 as f64));
    let norm: f64 = wx.iter().sum::<f64>() * wy.iter().sum::<f64>();
    let inside = x0 >= 2 && y0 >= 2 && x0 + 3 < wd as i64 && y0 + 3 < h as i64;
    for (c, o) in out.iter_mut().enumerate() {
        let plane = src.index_axis(Axis(0), c);
        let mut acc = 0.0;
        match (inside, plane.as_slice()) {
            // The whole 6×6 window in the image: straight rows of a contiguous plane.
            (true, Some(data)) => {
                let (xs, ys) = ((x0 - 2) as usize, (y0 - 2) as usize);
                for (j, wyj) in wy.iter().enumerate() {
                    let row = &data[(ys + j) * wd + xs..][..6];
                    let r: f64 = row
                        .iter()
                        .zip(&wx)
                        .map(|(v, wxi)| wxi * f64::from(*v))
                        .sum();
                    acc += wyj * r;
                }
            }
            _ => {
                for (j, wyj) in wy.iter().enumerate() {
                    let yy = y0 - 2 + j as i64;
                    let row: f64 = wx
                        .iter()
                        .enumerate()
                        .map(|(i, wxi)| wxi * at(plane, x0 - 2 + i as i64, yy))
                        .sum();
                    acc += wyj * row;
                }
            }
        }
        let mut v = acc / norm;
        if v.is_finite() {
            let n = [
                at(plane, x0, y0),
                at(plane, x0 + 1, y0),
                at(plane, x0, y0 + 1),
                at(plane, x0 + 1, y0 + 1),
            ];
            let lo = n.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = n.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            v = v.clamp(lo, hi);
        }
        *o = v as f32;
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

/// `(sin, cos)` of π·n/3 for n = 2, 1, 0, −1, −2, −3.
const SIN_COS_THIRDS: [(f64, f64); 6] = {
    const S: f64 = 0.866_025_403_784_438_6; // sin(π/3) = √3/2
    [
        (S, -0.5),
        (S, 0.5),
        (0.0, 1.0),
        (-S, 0.5),
        (-S, -0.5),
        (0.0, -1.0),
    ]
};

/// The six Lanczos-3 weights of taps at distances `f + 2, f + 1, f, f − 1, f − 2, f − 3`
/// (`f` in [0, 1)), without a sine per tap: sin(π(f + n)) = (−1)ⁿ sin(πf), and
/// sin(π(f + n)/3) by the angle-addition formula.
pub fn lanczos3_taps(f: f64) -> [f64; 6] {
    use std::f64::consts::PI;
    let (s1, a) = ((PI * f).sin(), PI * f / 3.0);
    let (sa, ca) = a.sin_cos();
    let mut w = [0.0; 6];
    for (i, wi) in w.iter_mut().enumerate() {
        let n = 2 - i as i64;
        let d = f + n as f64;
        if d == 0.0 {
            *wi = 1.0;
            continue;
        }
        let (sb, cb) = SIN_COS_THIRDS[i];
        let sign = if n.rem_euclid(2) == 0 { 1.0 } else { -1.0 };
        *wi = 3.0 * sign * s1 * (sa * cb + ca * sb) / (PI * PI * d * d);
    }
    w
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
    if radius == 3 {
        // Lanczos-3: all six weights from one sine and cosine per axis.
        wx = lanczos3_taps(sx - x0 as f64);
        wy = lanczos3_taps(sy - y0 as f64);
    } else {
        for i in 0..taps {
            let dx = (x0 - radius + 1 + i as i64) as f64;
            let dy = (y0 - radius + 1 + i as i64) as f64;
            wx[i] = kernel(sx - dx);
            wy[i] = kernel(sy - dy);
        }
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

    #[test]
    fn planes_sample_like_single_planes() {
        let src = ndarray::Array3::from_shape_fn((3, 20, 30), |(c, y, x)| {
            ((x * 7 + y * 13 + c * 5) % 17) as f32 + if x == 9 && y == 9 { 50.0 } else { 0.0 }
        });
        let m = similarity(1.3, -0.7, 0.05, 1.01, (15.0, 10.0));
        for interp in [
            Interpolation::Bilinear,
            Interpolation::Bicubic,
            Interpolation::Lanczos3,
        ] {
            for (x, y) in [
                (3.2, 4.7),
                (9.5, 9.1),
                (0.0, 0.0),
                (29.9, 19.9),
                (15.0, 10.0),
            ] {
                let mut out = [0.0f32; 3];
                sample_planes(src.view(), &m, interp, x, y, &mut out);
                for (c, o) in out.iter().enumerate() {
                    let one = sample(src.index_axis(Axis(0), c), &m, interp, x, y);
                    assert!(
                        o.to_bits() == one.to_bits() || (o - one).abs() < 1e-4,
                        "{interp:?} {x},{y} c{c}: {o} vs {one}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_lanczos_taps_equal_the_kernel() {
        for f in [0.0, 0.1, 0.25, 0.5, 0.77, 0.999] {
            let fast = lanczos3_taps(f);
            for (i, w) in fast.iter().enumerate() {
                let d = f + 2.0 - i as f64;
                assert!(
                    (w - lanczos3(d)).abs() < 1e-12,
                    "f {f} tap {i}: {w} vs {}",
                    lanczos3(d)
                );
            }
        }
    }

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
