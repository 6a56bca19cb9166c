//! Known-truth tests on the synthetic set (`astroworker::fixtures`): calibrated and stacked
//! frames reproduce the noiseless truth to within the noise expected for N frames, and the
//! satellite trail, cosmic rays and hot pixels do not survive.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis};

use astroworker::compute::cpu::Cpu;
use astroworker::fits::{FitsReader, OutputType};
use astroworker::fixtures::{self, FixtureSet, FixtureSpec};
use astroworker::pipeline::NoProgress;
use astroworker::pipeline::jobs::{self, MasterFiles, MasterKind, MasterMethod, MasterParams};
use astroworker::pipeline::stack::{self, DebayerChoice, StackParams, Weights};
use astroworker::science::calibrate::DarkScaling;
use astroworker::science::normalize::Normalization;
use astroworker::science::stack::Method;

const LIGHTS: usize = 12;

fn read_plane(path: &Path) -> Array2<f32> {
    FitsReader::open(path)
        .unwrap()
        .read_all()
        .unwrap()
        .index_axis_move(Axis(0), 0)
}

struct Setup {
    _dir: tempfile::TempDir,
    set: FixtureSet,
    masters: MasterFiles,
    out: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spec = FixtureSpec {
        width: 320,
        height: 480,
        lights: LIGHTS,
        biases: 16,
        darks: 16,
        flats: 16,
        stars: 60,
        ..FixtureSpec::default()
    };
    let set = fixtures::generate(dir.path(), &spec, &|_, _| {}).unwrap();
    let master = |kind, inputs: &[PathBuf], name: &str, bias: Option<PathBuf>| {
        let output = dir.path().join(name);
        jobs::master(
            &MasterParams {
                kind,
                inputs: inputs.to_vec(),
                output: output.clone(),
                method: MasterMethod::SigmaClip,
                bias,
                dark: None,
            },
            &NoProgress,
        )
        .unwrap();
        output
    };
    let bias = master(MasterKind::Bias, &set.biases, "bias.fits", None);
    let dark = master(MasterKind::Dark, &set.darks, "dark.fits", None);
    let flat = master(
        MasterKind::Flat,
        &set.flats,
        "flat.fits",
        Some(bias.clone()),
    );
    let masters = MasterFiles {
        bias: Some(bias),
        dark: Some(dark),
        flat: Some(flat),
        dark_scaling: DarkScaling::Exposure,
        cosmetic: true,
    };
    let out = dir.path().join("out");
    Setup {
        _dir: dir,
        set,
        masters,
        out,
    }
}

fn stack_with(s: &Setup, method: Method, name: &str) -> Array2<f32> {
    let output = s.out.join(name);
    let report = stack::stack(
        &StackParams {
            inputs: s.set.lights.clone(),
            output: output.clone(),
            method,
            normalize: Normalization::AdditiveScale,
            weights: Weights::None,
            masters: s.masters.clone(),
            debayer: DebayerChoice::None,
            dtype: OutputType::Float32,
            preview: None,
            memory_budget: 1 << 20, // small bands: exercises the band streaming
        },
        &Cpu,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(report.frames_used, LIGHTS);
    read_plane(&output)
}

/// RMS of `a − b` over the pixels where `keep` is true.
fn rms(a: &Array2<f32>, b: &Array2<f32>, keep: &Array2<bool>) -> f64 {
    let (sum, n) = a
        .iter()
        .zip(b.iter())
        .zip(keep.iter())
        .filter(|(_, k)| **k)
        .fold((0.0f64, 0usize), |(s, n), ((x, y), _)| {
            (s + f64::from(x - y).powi(2), n + 1)
        });
    (sum / n as f64).sqrt()
}

#[test]
fn calibrated_stack_matches_truth_and_rejects_artefacts() {
    let s = setup();
    let truth = read_plane(&s.set.truth);
    let (h, w) = truth.dim();

    // The noise of one calibrated frame, measured where it has no artefacts.
    let single_dir = s.out.join("single");
    jobs::calibrate(
        &jobs::CalibrateParams {
            inputs: vec![s.set.lights[0].clone()],
            output_dir: single_dir.clone(),
            masters: MasterFiles {
                cosmetic: false,
                ..s.masters.clone()
            },
            dtype: OutputType::Float32,
        },
        &NoProgress,
    )
    .unwrap();
    let single = read_plane(&single_dir.join(s.set.lights[0].file_name().unwrap()));
    let mut clean = Array2::from_elem((h, w), true);
    for &(x, y) in &s.set.hot_pixels {
        clean[(y, x)] = false;
    }
    for &(x, y) in &s.set.artefacts[0] {
        clean[(y, x)] = false;
    }
    let sigma = rms(&single, &truth, &clean);
    assert!(
        sigma > 5.0 && sigma < 100.0,
        "implausible single-frame noise {sigma}"
    );

    let stacked = stack_with(
        &s,
        Method::SigmaClip {
            low: 3.0,
            high: 3.0,
            iterations: 5,
        },
        "sigma.fits",
    );
    let everywhere = Array2::from_elem((h, w), true);
    let error = rms(&stacked, &truth, &everywhere);
    let limit = 1.2 * sigma / (LIGHTS as f64).sqrt();
    eprintln!("single-frame σ {sigma:.3}, stack RMS {error:.3}, limit {limit:.3}");
    assert!(
        error <= limit,
        "stack RMS {error:.3} > 1.2 σ/√N = {limit:.3} (σ = {sigma:.3})"
    );

    // Every artefact pixel (trail, cosmic rays) is back near the truth: rejection removed it.
    let artefacts: Vec<(usize, usize)> = s.set.artefacts.iter().flatten().copied().collect();
    assert!(
        artefacts.len() > 100,
        "the fixtures have a trail and cosmic rays"
    );
    let tolerance = 5.0 * sigma as f32;
    for &(x, y) in &artefacts {
        let d = (stacked[(y, x)] - truth[(y, x)]).abs();
        assert!(
            d < tolerance,
            "artefact pixel ({x}, {y}) off by {d} (σ = {sigma})"
        );
    }
    // Hot pixels are gone: each is near the truth, or near what its same-colour neighbours
    // say (the cosmetic correction interpolates; on a star's wing that differs from the truth).
    for &(x, y) in &s.set.hot_pixels {
        let mut around: Vec<f32> = [
            (-2i64, 0i64),
            (2, 0),
            (0, -2),
            (0, 2),
            (-2, -2),
            (2, 2),
            (-2, 2),
            (2, -2),
        ]
        .iter()
        .filter_map(|(dx, dy)| {
            let (nx, ny) = (x as i64 + dx, y as i64 + dy);
            (nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h)
                .then(|| truth[(ny as usize, nx as usize)])
        })
        .collect();
        around.sort_by(f32::total_cmp);
        let interpolated = (around[(around.len() - 1) / 2] + around[around.len() / 2]) / 2.0;
        let v = stacked[(y, x)];
        assert!(
            (v - truth[(y, x)]).abs() < tolerance || (v - interpolated).abs() < tolerance,
            "hot pixel ({x}, {y}) = {v}: truth {}, neighbours {interpolated} (σ = {sigma})",
            truth[(y, x)]
        );
    }

    // Without rejection the trail shows: the mean is pulled up along it.
    let mean = stack_with(&s, Method::Mean, "mean.fits");
    let trail_excess: f64 = s.set.artefacts[2]
        .iter()
        .map(|&(x, y)| f64::from(mean[(y, x)] - truth[(y, x)]))
        .sum::<f64>()
        / s.set.artefacts[2].len() as f64;
    assert!(
        trail_excess > 100.0,
        "the mean stack should show the trail ({trail_excess})"
    );
}

#[test]
fn uncalibrated_debayered_stack_has_the_scene_colours() {
    let s = setup();
    let output = s.out.join("rgb.fits");
    let report = stack::stack(
        &StackParams {
            inputs: s.set.lights.clone(),
            output: output.clone(),
            method: Method::Median,
            normalize: Normalization::None,
            weights: Weights::None,
            masters: s.masters.clone(),
            debayer: DebayerChoice::Auto,
            dtype: OutputType::UInt16,
            preview: Some(s.out.join("rgb.png")),
            memory_budget: 4 << 20,
        },
        &Cpu,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(report.channels, 3);
    let mut reader = FitsReader::open(&output).unwrap();
    assert_eq!(reader.info().bitpix, 16);
    let rgb = reader.read_all().unwrap();
    // The sky of the fixtures is tinted R 0.9, G 1.0, B 0.8: medians keep that order.
    let median = |c: usize| {
        let mut v: Vec<f32> = rgb.index_axis(Axis(0), c).iter().copied().collect();
        let mid = v.len() / 2;
        *v.select_nth_unstable_by(mid, f32::total_cmp).1
    };
    let (r, g, b) = (median(0), median(1), median(2));
    assert!(g > r && r > b, "sky medians R {r} G {g} B {b}");
    assert!(((r / g) - 0.9).abs() < 0.02 && ((b / g) - 0.8).abs() < 0.02);
    let header = &reader.info().header;
    assert_eq!(header.get_i64("STACKCNT"), Some(LIGHTS as i64));
    assert_eq!(header.get_f64("EXPTIME"), Some(10.0 * LIGHTS as f64));
    assert!(
        header.get_str("BAYERPAT").is_none(),
        "BAYERPAT must not stay on RGB data"
    );
    assert!(header.get("EXTNAME").is_none());
    assert!(s.out.join("rgb.png").exists());
}
