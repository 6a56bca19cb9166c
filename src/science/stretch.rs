//! Display stretches: auto (midtones transfer with shadow clipping), asinh, linear.
//!
//! [`stretch`] maps an image `(channels, H, W)` in data units to display values in [0, 1]
//! (NaN → 0), for previews. Every channel is stretched on its own statistics ("unlinked"):
//! for a colour preview of raw one-shot-colour data this also neutralises the background's
//! colour cast (green-heavy Bayer data, light pollution), which is what a quick look wants;
//! colour ratios of the objects are not preserved.
//!
//! # Normalisation to [0, 1]
//!
//! [`Stretch::Auto`] and [`Stretch::Asinh`] work on data normalised to [0, 1] first, the same
//! way for all channels: `x_n = (x − lo) / (hi − lo)` with `lo = min(0, minimum)` (calibrated
//! data can go negative; positive data are not shifted) and
//! - `hi = 1` when the maximum is ≤ 1 (float data already normalised),
//! - `hi = 65535` when the maximum is ≤ 65535 (16-bit ADU, the common case): the absolute
//!   scale is kept, so saturation is white and the previews of a sequence are comparable
//!   (dividing by each frame's maximum would make them depend on its brightest hot pixel),
//! - `hi = maximum` otherwise (sums, 32-bit data).
//!
//! Only the highlights depend on this choice: the shadows and midtones follow the median/MAD.
//!
//! # Auto
//!
//! The usual "screen transfer function" autostretch (PixInsight STF, Siril's autostretch),
//! per channel, with m = median and σ = 1.4826 · MAD of the normalised channel:
//! 1. shadows clip `c0 = clamp(m − 2.8 σ, 0, 1)`; values are rescaled `x' = (x − c0)/(1 − c0)`,
//!    clipped to [0, 1];
//! 2. the midtones balance `mb` is chosen so the background `b = (m − c0)/(1 − c0)` maps to
//!    0.25: `mb = MTF(0.25, b)`;
//! 3. output `MTF(mb, x')`, with `MTF(m, x) = (m − 1) x / ((2m − 1) x − m)`.
//!
//! # Asinh
//!
//! Per channel: the same black point `c0` (just below the background, so the noise floor is
//! not clipped to black) and rescale, then `asinh(β x') / asinh(β)`, with β chosen (by
//! bisection) so the background lands at 0.25 too. Compared with Auto the highlights are
//! compressed more gently.
//!
//! # Linear
//!
//! Per channel: `(x − p_low) / (p_high − p_low)` clipped to [0, 1], where p are the 0.5th and
//! 99.5th percentiles (nearest rank) of the finite values.

use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

use super::stats::{self, MAD_TO_SIGMA};

/// Shadows clipping point of Auto and Asinh, in σ from the median.
pub const SHADOWS_CLIP_SIGMA: f32 = -2.8;
/// Where Auto and Asinh put the background (the median).
pub const TARGET_BACKGROUND: f32 = 0.25;
/// Percentiles clipped by Linear.
pub const LINEAR_LOW_PERCENTILE: f32 = 0.5;
pub const LINEAR_HIGH_PERCENTILE: f32 = 99.5;

/// Display stretches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stretch {
    /// Midtones transfer function with shadow clipping, from the median and MAD.
    #[default]
    Auto,
    /// asinh(β·x)/asinh(β) above the background's black point.
    Asinh,
    /// Linear between the low and high percentiles.
    Linear,
}

impl Stretch {
    /// Parses "auto", "asinh" or "linear" (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "asinh" => Some(Self::Asinh),
            "linear" => Some(Self::Linear),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Asinh => "asinh",
            Self::Linear => "linear",
        }
    }
}

/// Stretches `(channels, H, W)` data to display values in [0, 1]; NaN → 0. See the module
/// docs for each method.
pub fn stretch(image: ArrayView3<f32>, method: Stretch) -> Array3<f32> {
    let (lo, hi) = normalisation(image);
    let (_, height, width) = image.dim();
    // Logical order: channel planes one after the other.
    let mut values: Vec<f32> = image.iter().map(|&v| (v - lo) / (hi - lo)).collect();
    for plane in values.chunks_mut((height * width).max(1)) {
        let mut finite: Vec<f32> = plane.iter().copied().filter(|v| v.is_finite()).collect();
        let curve = Curve::new(method, &mut finite);
        plane
            .par_iter_mut()
            .for_each(|v| *v = if v.is_finite() { curve.apply(*v) } else { 0.0 });
    }
    Array3::from_shape_vec(image.dim(), values).expect("same number of values")
}

/// `(lo, hi)` of the normalisation to [0, 1] (module docs).
fn normalisation(image: ArrayView3<f32>) -> (f32, f32) {
    let (min, max) = image
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let lo = min.min(0.0);
    let hi = if max <= 1.0 {
        1.0
    } else if max <= 65535.0 {
        65535.0
    } else {
        max
    };
    // No finite value at all: any range will do, everything becomes 0.
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// The transfer curve of one channel, from its normalised finite values. Evaluated in f64 so
/// that the f32 output stays monotonic where the curve is very flat.
#[derive(Debug, Clone, Copy)]
enum Curve {
    /// MTF(m, rescale(x)), m = midtones balance.
    Mtf { black: f64, midtones: f64 },
    /// asinh(β rescale(x)) / asinh(β); β = 0 means the identity.
    Asinh { black: f64, beta: f64 },
    /// Linear between two values.
    Linear { low: f64, high: f64 },
}

impl Curve {
    fn new(method: Stretch, finite: &mut [f32]) -> Self {
        if method == Stretch::Linear {
            let low = percentile(finite, LINEAR_LOW_PERCENTILE);
            let high = percentile(finite, LINEAR_HIGH_PERCENTILE);
            return Curve::Linear {
                low: low.into(),
                high: high.into(),
            };
        }
        let (median, sigma) = median_and_sigma(finite);
        let black = (median + f64::from(SHADOWS_CLIP_SIGMA) * sigma).clamp(0.0, 1.0);
        let background = rescale(median, black, 1.0);
        let target = f64::from(TARGET_BACKGROUND);
        match method {
            Stretch::Auto => {
                // Degenerate channels (constant, or background at the black point) keep the
                // identity, m = 0.5.
                let usable = background > 0.0 && background < 1.0;
                let midtones = if usable { mtf(target, background) } else { 0.5 };
                Curve::Mtf { black, midtones }
            }
            _ => Curve::Asinh {
                black,
                beta: asinh_beta(background, target),
            },
        }
    }

    fn apply(&self, x: f32) -> f32 {
        let x = f64::from(x);
        let y = match *self {
            Curve::Mtf { black, midtones } => mtf(midtones, rescale(x, black, 1.0)),
            Curve::Asinh { black, beta } => {
                let x = rescale(x, black, 1.0);
                if beta > 0.0 {
                    (beta * x).asinh() / beta.asinh()
                } else {
                    x
                }
            }
            Curve::Linear { low, high } => rescale(x, low, high),
        };
        y.clamp(0.0, 1.0) as f32
    }
}

/// `(x − low) / (high − low)` clipped to [0, 1]; 0 when the range is empty.
fn rescale(x: f64, low: f64, high: f64) -> f64 {
    if high > low {
        ((x - low) / (high - low)).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The midtones transfer function: MTF(m, 0) = 0, MTF(m, m) = 0.5, MTF(m, 1) = 1.
fn mtf(m: f64, x: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else if x >= 1.0 {
        1.0
    } else {
        (m - 1.0) * x / ((2.0 * m - 1.0) * x - m)
    }
}

/// The β for which asinh(β b)/asinh(β) = `target`, by bisection on ln β (the ratio grows from
/// b at β → 0 to 1 at β → ∞). 0 (identity) when b is already ≥ the target; the largest β
/// tried (e^25) when b is 0.
fn asinh_beta(background: f64, target: f64) -> f64 {
    if background >= target {
        return 0.0;
    }
    let ratio = |beta: f64| (beta * background).asinh() / beta.asinh();
    let (mut lo, mut hi) = (-10.0f64, 25.0f64); // ln β
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if ratio(mid.exp()) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// Median and robust σ (1.4826 · MAD) of finite values (0, 0 for none).
fn median_and_sigma(finite: &mut [f32]) -> (f64, f64) {
    if finite.is_empty() {
        return (0.0, 0.0);
    }
    let median = stats::median_in_place(finite);
    let mut deviations: Vec<f32> = finite.iter().map(|v| (v - median).abs()).collect();
    (
        median.into(),
        MAD_TO_SIGMA * f64::from(stats::median_in_place(&mut deviations)),
    )
}

/// The `p`-th percentile (nearest rank: index round(p/100 · (n − 1)) of the sorted values);
/// 0 for no values. Reorders `finite`.
fn percentile(finite: &mut [f32], p: f32) -> f32 {
    if finite.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (finite.len() - 1) as f32).round() as usize;
    *finite.select_nth_unstable_by(rank, f32::total_cmp).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, Axis};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    /// A noisy flat field in 16-bit ADU, with a few bright stars.
    fn field(channels: usize, seed: u64) -> Array3<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 15.0).unwrap();
        Array3::from_shape_fn((channels, 64, 80), |(c, y, x)| {
            let star = if (x % 20, y % 16) == (10, 8) {
                30000.0
            } else {
                0.0
            };
            600.0 + 50.0 * c as f32 + normal.sample(&mut rng) + star
        })
    }

    fn median(a: &Array3<f32>, c: usize) -> f32 {
        let mut v: Vec<f32> = a.index_axis(Axis(0), c).iter().copied().collect();
        stats::median_in_place(&mut v)
    }

    #[test]
    fn parse_and_names() {
        for s in [Stretch::Auto, Stretch::Asinh, Stretch::Linear] {
            assert_eq!(Stretch::parse(s.name()), Some(s));
        }
        assert_eq!(Stretch::parse(" AUTO "), Some(Stretch::Auto));
        assert_eq!(Stretch::parse("log"), None);
    }

    #[test]
    fn outputs_are_in_unit_range_and_monotonic() {
        let mut image = field(3, 1);
        image[[1, 3, 3]] = f32::NAN;
        image[[0, 5, 5]] = -200.0;
        for method in [Stretch::Auto, Stretch::Asinh, Stretch::Linear] {
            let out = stretch(image.view(), method);
            assert_eq!(out.dim(), image.dim());
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)), "{method:?}");
            assert_eq!(out[[1, 3, 3]], 0.0, "NaN → 0");
            for c in 0..3 {
                let mut pairs: Vec<(f32, f32)> = image
                    .index_axis(Axis(0), c)
                    .iter()
                    .zip(out.index_axis(Axis(0), c).iter())
                    .filter(|(x, _)| x.is_finite())
                    .map(|(&x, &y)| (x, y))
                    .collect();
                pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(
                    pairs.windows(2).all(|w| w[1].1 >= w[0].1),
                    "{method:?} c{c} not monotonic"
                );
            }
        }
    }

    #[test]
    fn auto_and_asinh_put_the_background_at_a_quarter() {
        let image = field(3, 2);
        for method in [Stretch::Auto, Stretch::Asinh] {
            let out = stretch(image.view(), method);
            for c in 0..3 {
                let m = median(&out, c);
                assert!((m - TARGET_BACKGROUND).abs() < 0.01, "{method:?} c{c}: {m}");
            }
            // Stars are much brighter than the background.
            assert!(out[[0, 8, 10]] > 0.9, "{method:?} star {}", out[[0, 8, 10]]);
        }
    }

    #[test]
    fn linear_clips_percentiles() {
        let image = Array3::from_shape_fn((1, 10, 100), |(_, y, x)| (y * 100 + x) as f32);
        let out = stretch(image.view(), Stretch::Linear);
        // 1000 values 0..999: p0.5 = 5, p99.5 = 994.
        assert_eq!(out[[0, 0, 5]], 0.0);
        assert_eq!(out[[0, 0, 0]], 0.0);
        assert_eq!(out[[0, 9, 94]], 1.0);
        assert!((out[[0, 4, 99]] - (499.0 - 5.0) / 989.0).abs() < 1e-6);
    }

    #[test]
    fn normalisation_rules() {
        let of =
            |v: Vec<f32>| normalisation(Array3::from_shape_vec((1, 1, v.len()), v).unwrap().view());
        assert_eq!(of(vec![0.1, 0.9]), (0.0, 1.0));
        assert_eq!(of(vec![10.0, 4000.0]), (0.0, 65535.0));
        assert_eq!(of(vec![-50.0, 4000.0]), (-50.0, 65535.0));
        assert_eq!(of(vec![0.0, 1e6]), (0.0, 1e6));
        assert_eq!(of(vec![f32::NAN]), (0.0, 1.0));
    }

    #[test]
    fn degenerate_images() {
        let constant = Array3::from_elem((1, 4, 4), 1000.0f32);
        let empty = Array3::from_elem((3, 2, 2), f32::NAN);
        for method in [Stretch::Auto, Stretch::Asinh, Stretch::Linear] {
            assert!(
                stretch(constant.view(), method)
                    .iter()
                    .all(|v| (0.0..=1.0).contains(v))
            );
            assert!(stretch(empty.view(), method).iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn mtf_properties() {
        for m in [0.01, 0.2, 0.5, 0.9] {
            assert_eq!(mtf(m, 0.0), 0.0);
            assert_eq!(mtf(m, 1.0), 1.0);
            assert!((mtf(m, m) - 0.5).abs() < 1e-12);
        }
        let (b, target) = (0.01, 0.25);
        assert!((mtf(mtf(target, b), b) - target).abs() < 1e-12);
        let beta = asinh_beta(b, target);
        assert!(((beta * b).asinh() / beta.asinh() - target).abs() < 1e-9);
        assert_eq!(asinh_beta(0.5, target), 0.0);
    }
}
