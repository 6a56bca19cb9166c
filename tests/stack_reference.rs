//! The stacking kernels against an independent numpy/astropy implementation
//! (`tests/reference/stack_ref.py`): every method, with and without weights, on random stacks
//! with noise, outliers, NaN borders and degenerate pixels; the location/scale estimators; the
//! normalisation coefficients. Values must agree within 1e-4 relative and rejected counts
//! exactly.

mod common;

use std::path::Path;

use astroworker::science::normalize::{Normalization, coefficients};
use astroworker::science::stack::{Method, reduce, stack_band};
use astroworker::science::stats::{Estimator, estimate};
use ndarray::{Array2, Array3, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn methods() -> Vec<Method> {
    vec![
        Method::Sum,
        Method::Mean,
        Method::Median,
        Method::SigmaClip {
            low: 2.5,
            high: 3.0,
            iterations: 5,
        },
        Method::SigmaClip {
            low: 2.0,
            high: 2.0,
            iterations: 1,
        },
        Method::Winsorized {
            low: 2.5,
            high: 3.0,
            iterations: 5,
        },
        Method::MadClip {
            low: 3.0,
            high: 3.0,
            iterations: 5,
        },
        Method::MadClip {
            low: 2.0,
            high: 2.5,
            iterations: 10,
        },
        Method::Percentile {
            low: 0.05,
            high: 0.04,
        },
        Method::LinearFit {
            low: 2.0,
            high: 2.5,
            iterations: 5,
        },
    ]
}

/// The method as `stack_ref.py` reads it: NAME[:LOW:HIGH[:ITERATIONS]].
fn spec(method: &Method) -> String {
    let name = method.name();
    match *method {
        Method::Sum | Method::Mean | Method::Median => name.to_string(),
        Method::Percentile { low, high } => format!("{name}:{low}:{high}"),
        Method::SigmaClip {
            low,
            high,
            iterations,
        }
        | Method::Winsorized {
            low,
            high,
            iterations,
        }
        | Method::MadClip {
            low,
            high,
            iterations,
        }
        | Method::LinearFit {
            low,
            high,
            iterations,
        } => {
            format!("{name}:{low}:{high}:{iterations}")
        }
    }
}

/// A `(n, rows, width)` stack: N(1000, 25) noise, 2 % hot and 1 % cold outliers, 3 % NaN,
/// NaN borders (frame f misses its first f mod 4 rows), and in row 8 degenerate pixels (no
/// sample, one sample, constant, two values); row 9 is rounded to integers (many ties) and
/// row 10 is shifted to negative values.
/// Returns the frames and random weights in [0.5, 2).
fn random_stack(n: usize, rows: usize, width: usize, seed: u64) -> (Array3<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(1000.0, 25.0).expect("valid normal");
    let mut frames =
        Array3::from_shape_simple_fn((n, rows, width), || noise.sample(&mut rng) as f32);
    for v in frames.iter_mut() {
        let u: f64 = rng.random();
        if u < 0.02 {
            *v = (1000.0 + rng.random_range(150.0..3000.0)) as f32;
        } else if u < 0.03 {
            *v = (1000.0 - rng.random_range(150.0..900.0)) as f32;
        } else if u < 0.06 {
            *v = f32::NAN;
        }
    }
    for f in 0..n {
        frames.slice_mut(s![f, ..f % 4, ..]).fill(f32::NAN);
        frames[(f, 8, 3)] = if f % 2 == 0 { 990.0 } else { 1010.0 };
    }
    frames.slice_mut(s![.., 8, 0]).fill(f32::NAN);
    frames.slice_mut(s![1.., 8, 1]).fill(f32::NAN);
    frames.slice_mut(s![.., 8, 2]).fill(1000.0);
    frames.slice_mut(s![.., 9, ..]).mapv_inplace(f32::round);
    frames
        .slice_mut(s![.., 10, ..])
        .mapv_inplace(|v| v - 2000.0);
    let weights = (0..n).map(|_| rng.random_range(0.5..2.0)).collect();
    (frames, weights)
}

fn write_f32(path: &Path, values: impl IntoIterator<Item = f32>) {
    let bytes: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
    std::fs::write(path, bytes).expect("write test data");
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN) // null is NaN
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= TOLERANCE * a.abs().max(b.abs())
}

#[test]
fn every_method_matches_numpy() {
    let (rows, width) = (64, 64);
    let mut failures = Vec::new();
    let mut checked = 0;
    for n in [5, 12, 40] {
        let (frames, weights) = random_stack(n, rows, width, n as u64);
        let dir = tempfile::tempdir().expect("temp dir");
        write_f32(&dir.path().join("frames.f32"), frames.iter().copied());
        write_f32(&dir.path().join("weights.f32"), weights.iter().copied());
        let methods = methods();
        let mut args: Vec<String> = vec![
            "stack".into(),
            dir.path().display().to_string(),
            n.to_string(),
            rows.to_string(),
            width.to_string(),
        ];
        args.extend(methods.iter().map(spec));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reference: Vec<Value> =
            serde_json::from_str(&common::run_reference("stack_ref.py", &args)).expect("JSON");
        assert_eq!(reference.len(), 2 * methods.len());
        for (method, expected) in methods.iter().flat_map(|m| [m, m]).zip(&reference) {
            let weighted = expected["weighted"].as_bool().expect("weighted flag");
            let w = weighted.then_some(&weights[..]);
            let label = format!("N={n} {} weighted={weighted}", spec(method));
            let mut out = Array2::zeros((rows, width));
            let total = stack_band(method, frames.view(), w, out.view_mut());
            let values = expected["value"].as_array().expect("values");
            let rejected = expected["rejected"].as_array().expect("rejected counts");
            let mut expected_total = 0;
            for (i, (value, rejected)) in values.iter().zip(rejected).enumerate() {
                let (r, x) = (i / width, i % width);
                let expected_rejected = rejected.as_u64().expect("count");
                expected_total += expected_rejected;
                let got = f64::from(out[(r, x)]);
                if !close(got, number(value)) {
                    failures.push(format!(
                        "{label} pixel ({r}, {x}): {got} vs {}",
                        number(value)
                    ));
                }
                let mut column = frames.slice(s![.., r, x]).to_vec();
                let (_, got_rejected) = reduce(method, &mut column, w);
                if u64::from(got_rejected) != expected_rejected {
                    failures.push(format!(
                        "{label} pixel ({r}, {x}): rejected {got_rejected} vs {expected_rejected}"
                    ));
                }
                checked += 1;
            }
            if total != expected_total {
                failures.push(format!(
                    "{label}: total rejected {total} vs {expected_total}"
                ));
            }
            eprintln!("{label}: {total} rejected");
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches over {checked} pixels, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// Frames with different levels and spreads: (location, spread, fraction of NaN).
fn random_images(k: usize, rows: usize, width: usize) -> Array3<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let levels = [
        (1000.0, 20.0),
        (1200.0, 25.0),
        (800.0, 12.0),
        (-50.0, 5.0),
        (500.0, 10.0),
    ];
    let mut images = Array3::zeros((k, rows, width));
    for (i, &(level, spread)) in levels.iter().enumerate().take(k) {
        let noise = Normal::new(level, spread).expect("valid normal");
        for v in images.slice_mut(s![i, .., ..]).iter_mut() {
            let u: f64 = rng.random();
            *v = if u < 0.01 {
                (level + rng.random_range(10.0..100.0) * spread) as f32 // stars
            } else if u < 0.03 {
                f32::NAN
            } else {
                noise.sample(&mut rng) as f32
            };
        }
    }
    // The last frame is mostly flat: MAD 0, so both estimators give scale 0.
    for (j, v) in images.slice_mut(s![k - 1, .., ..]).iter_mut().enumerate() {
        if j % 5 != 0 {
            *v = 500.0;
        }
    }
    images
}

#[test]
fn estimators_and_coefficients_match_numpy() {
    let (k, rows, width) = (5, 150, 200);
    let images = random_images(k, rows, width);
    let dir = tempfile::tempdir().expect("temp dir");
    write_f32(&dir.path().join("images.f32"), images.iter().copied());
    let args = [
        "estimate",
        &dir.path().display().to_string(),
        &k.to_string(),
        &rows.to_string(),
        &width.to_string(),
    ];
    let reference: Value =
        serde_json::from_str(&common::run_reference("stack_ref.py", &args)).expect("JSON");
    let normalizations = [
        Normalization::None,
        Normalization::Additive,
        Normalization::Multiplicative,
        Normalization::AdditiveScale,
        Normalization::MultiplicativeScale,
    ];
    let mut failures = Vec::new();
    for (name, estimator) in [
        ("median_mad", Estimator::MedianMad),
        ("ikss", Estimator::Ikss),
    ] {
        let expected = &reference[name];
        let estimates: Vec<_> = images
            .outer_iter()
            .map(|image| estimate(image.as_slice().expect("contiguous"), estimator))
            .collect();
        for (i, e) in estimates.iter().enumerate() {
            let want = &expected["estimates"][i];
            let (location, scale) = (number(&want[0]), number(&want[1]));
            if !close(e.location, location) || !close(e.scale, scale) {
                failures.push(format!("{name} image {i}: {e:?} vs ({location}, {scale})"));
            }
        }
        assert_eq!(
            estimates[k - 1].scale,
            0.0,
            "{name}: the flat frame has scale 0"
        );
        for method in normalizations {
            for (i, e) in estimates.iter().enumerate() {
                let c = coefficients(method, *e, estimates[0]);
                let want = &expected["coefficients"][method.name()][i];
                let (factor, offset) = (number(&want[0]), number(&want[1]));
                if !close(f64::from(c.factor), factor) || !close(f64::from(c.offset), offset) {
                    failures.push(format!(
                        "{name} {} image {i}: {c:?} vs ({factor}, {offset})",
                        method.name()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}
