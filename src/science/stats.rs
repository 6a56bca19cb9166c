//! Robust statistics: median, MAD, location/scale estimators (median/MAD and IKSS), image
//! statistics.
//!
//! Conventions shared by every function here:
//!
//! * Only finite samples count: NaN (a missing pixel) and ±inf are ignored. A sample with no
//!   finite value gives NaN results.
//! * Statistics are computed in `f64` from the `f32` inputs, sequentially (one image per call;
//!   callers parallelise over images or channels), so results are deterministic.
//! * Medians are exact (selection, not a histogram): for an even count the median is the mean
//!   of the two middle values, numpy's convention.
//! * The MAD is the raw median absolute deviation from the median, `median(|x − median(x)|)`;
//!   `1.4826 · MAD` estimates σ for Gaussian data.
//!
//! # IKSS
//!
//! [`Estimator::Ikss`] follows Siril's `IKSSlite` (`src/algos/statistics_float.c` in
//! github.com/free-astro/siril, the estimator Siril's stacking normalisation uses; the
//! original iterative `IKSS` there is compiled out):
//!
//! 1. m = median, d = MAD of all finite samples;
//! 2. keep the samples in `[m − 6·d, m + 6·d]` (inclusive);
//! 3. location = median of the kept samples, d' = their MAD around it;
//! 4. scale = 0.991 · √BWMV, where BWMV is the biweight midvariance of the kept samples
//!    around the location with tuning constant 9:
//!    `u = (x − location) / (9·d')`, sums over `|u| < 1`,
//!    `BWMV = n · Σ (x − location)² (1 − u²)⁴ / (Σ (1 − u²)(1 − 5u²))²`, `n` = number of kept
//!    samples (astropy's `biweight_midvariance(c=9, modify_sample_size=False)`). The 0.991
//!    factor is Siril's, for consistency with the original IKSS scale.
//!
//! Differences from Siril: Siril also drops exact zeros (its "no data" marker; NaN here), uses
//! a histogram median for large images and `f32` sums. Where Siril fails (d' = 0, a flat
//! sample), this returns the location with scale 0 (and a zero BWMV denominator also gives
//! scale 0); normalisation then ignores the scale (see `normalize`).

use std::cmp::Ordering;

/// Factor turning a MAD into a Gaussian-consistent σ estimate.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// `fits.info` statistics of the finite values; `nan_count` counts the others (NaN, and ±inf
/// if any). With no finite value every statistic is NaN. `std` is the population standard
/// deviation (ddof 0).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ImageStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub nan_count: u64,
}

pub fn image_stats(data: &[f32]) -> ImageStats {
    let mut finite: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    let nan_count = (data.len() - finite.len()) as u64;
    if finite.is_empty() {
        return ImageStats {
            min: f64::NAN,
            max: f64::NAN,
            mean: f64::NAN,
            median: f64::NAN,
            std: f64::NAN,
            nan_count,
        };
    }
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in &finite {
        min = min.min(x);
        max = max.max(x);
    }
    let (mean, std) = mean_and_std(&finite);
    ImageStats {
        min: f64::from(min),
        max: f64::from(max),
        mean,
        median: median_of(&mut finite),
        std,
        nan_count,
    }
}

/// Median of the finite values (NaN ignored; NaN when none). Reorders `v`: the finite values
/// are moved to the front.
pub fn median_in_place(v: &mut [f32]) -> f32 {
    let mut n = 0;
    for i in 0..v.len() {
        if v[i].is_finite() {
            v.swap(n, i);
            n += 1;
        }
    }
    if n == 0 {
        f32::NAN
    } else {
        median_of(&mut v[..n]) as f32
    }
}

/// Location and scale of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub location: f64,
    pub scale: f64,
}

/// Estimators for normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Estimator {
    /// location = median, scale = 1.4826 · MAD.
    #[default]
    MedianMad,
    /// Siril's IKSS (`IKSSlite`): location = median and scale = 0.991 · √BWMV of the samples
    /// within 6 MAD of the median (see the module docs).
    Ikss,
}

/// Location and scale of the finite values of `data` (NaN ignored; both NaN when there is no
/// finite value). Exact (selection-based medians), about 2 copies of `data` of extra memory.
pub fn estimate(data: &[f32], estimator: Estimator) -> Estimate {
    let mut values: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    if values.is_empty() {
        return Estimate {
            location: f64::NAN,
            scale: f64::NAN,
        };
    }
    let mut deviations = Vec::with_capacity(values.len());
    let median = median_of(&mut values);
    let mad = mad_around(&values, median, &mut deviations);
    match estimator {
        Estimator::MedianMad => Estimate {
            location: median,
            scale: MAD_TO_SIGMA * mad,
        },
        Estimator::Ikss => {
            let (low, high) = (median - 6.0 * mad, median + 6.0 * mad);
            // Never empty: at least the middle sample(s) lie within 6 MAD of the median.
            values.retain(|&x| (low..=high).contains(&f64::from(x)));
            let location = median_of(&mut values);
            let mad = mad_around(&values, location, &mut deviations);
            let scale = if mad > 0.0 {
                0.991 * biweight_midvariance(&values, location, mad).sqrt()
            } else {
                0.0
            };
            Estimate { location, scale }
        }
    }
}

/// Median of a non-empty slice of finite values, in `f64` (even count: mean of the two middle
/// values). Reorders `v` (a selection, O(n)).
fn median_of(v: &mut [f32]) -> f64 {
    median_by(v, f32::total_cmp)
}

/// Mean and population standard deviation of a non-empty slice of finite values; two passes
/// in `f64`.
fn mean_and_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let squares: f64 = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum();
    (mean, (squares / n).sqrt())
}

/// The MAD of `values` around `center`; `deviations` is scratch space.
pub(crate) fn mad_around<T: Copy + Into<f64>>(
    values: &[T],
    center: f64,
    deviations: &mut Vec<f64>,
) -> f64 {
    deviations.clear();
    deviations.extend(values.iter().map(|&x| (x.into() - center).abs()));
    median_by(deviations, f64::total_cmp)
}

fn median_by<T: Copy + Into<f64>>(v: &mut [T], cmp: impl Fn(&T, &T) -> Ordering + Copy) -> f64 {
    let (len, half) = (v.len(), v.len() / 2);
    let (below, middle, _) = v.select_nth_unstable_by(half, cmp);
    let upper: f64 = (*middle).into();
    if len % 2 == 1 {
        return upper;
    }
    let lower: f64 = below
        .iter()
        .copied()
        .max_by(cmp)
        .expect("an even count ≥ 2")
        .into();
    (lower + upper) / 2.0
}

/// Biweight midvariance of `values` around `location` with tuning constant 9 and the given
/// (non-zero) MAD; 0 when the denominator vanishes.
fn biweight_midvariance(values: &[f32], location: f64, mad: f64) -> f64 {
    let (mut numerator, mut denominator) = (0.0, 0.0);
    for &x in values {
        let d = f64::from(x) - location;
        let u = d / (9.0 * mad);
        if u.abs() < 1.0 {
            let t = 1.0 - u * u;
            numerator += d * d * t.powi(4);
            denominator += t * (1.0 - 5.0 * u * u);
        }
    }
    if denominator == 0.0 {
        0.0
    } else {
        values.len() as f64 * numerator / (denominator * denominator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAN: f32 = f32::NAN;

    #[test]
    fn median_odd_even_and_missing() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_in_place(&mut [NAN, 5.0, NAN, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [f32::INFINITY, 1.0, 2.0]), 1.5);
        assert!(median_in_place(&mut [NAN, NAN]).is_nan());
        assert!(median_in_place(&mut []).is_nan());
    }

    #[test]
    fn image_stats_ignores_nan() {
        let s = image_stats(&[1.0, NAN, 2.0, 3.0, 4.0, NAN]);
        assert_eq!((s.min, s.max, s.mean, s.median), (1.0, 4.0, 2.5, 2.5));
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.nan_count, 2);
        let empty = image_stats(&[NAN]);
        assert!(empty.mean.is_nan() && empty.std.is_nan() && empty.median.is_nan());
        assert_eq!(empty.nan_count, 1);
    }

    #[test]
    fn median_mad_estimate() {
        // median 3, |deviations| = 2 1 0 1 97 → MAD 1.
        let e = estimate(&[1.0, 2.0, 3.0, NAN, 4.0, 100.0], Estimator::MedianMad);
        assert_eq!(
            e,
            Estimate {
                location: 3.0,
                scale: 1.4826
            }
        );
        let none = estimate(&[NAN, NAN], Estimator::Ikss);
        assert!(none.location.is_nan() && none.scale.is_nan());
    }

    #[test]
    fn ikss_drops_far_outliers() {
        // median 6, MAD 3: the 6-MAD window [−12, 24] drops 1000; the rest is symmetric.
        let data = [1.0, 3.0, 5.0, 7.0, 9.0, 1000.0];
        let e = estimate(&data, Estimator::Ikss);
        assert_eq!(e.location, 5.0);
        // Kept 1 3 5 7 9: MAD 2, u = d/18.
        let (num, den) = [-4.0f64, -2.0, 0.0, 2.0, 4.0]
            .iter()
            .fold((0.0, 0.0), |(n, d), &x| {
                let u2 = (x / 18.0) * (x / 18.0);
                (
                    n + x * x * (1.0 - u2).powi(4),
                    d + (1.0 - u2) * (1.0 - 5.0 * u2),
                )
            });
        let expected = 0.991 * (5.0 * num / (den * den)).sqrt();
        assert!(
            (e.scale - expected).abs() < 1e-12,
            "{} vs {expected}",
            e.scale
        );
    }

    #[test]
    fn ikss_flat_sample_has_zero_scale() {
        let e = estimate(&[2.0, 2.0, 2.0, 2.0, 7.0], Estimator::Ikss);
        assert_eq!(
            e,
            Estimate {
                location: 2.0,
                scale: 0.0
            }
        );
    }
}
