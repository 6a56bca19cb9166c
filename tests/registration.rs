//! Registration on synthetic frames with known transforms: 20 frames shifted by up to ±60 px,
//! rotated by up to ±3° and scaled by ±1 %, with noise and hot pixels. The recovered transforms
//! must be within 0.05 px RMS of the truth over the frame, every frame must match, and the
//! registered stack's star FWHM must be within 10 % of the noiseless reference's.

use std::path::PathBuf;

use astroworker::compute::Devices;
use astroworker::fits::{Header, OutputType, write_image};
use astroworker::fixtures::{mono_star_frame, stars_in_frame};
use astroworker::pipeline::NoProgress;
use astroworker::pipeline::register::{self, Framing, RegisterParams};
use astroworker::pipeline::stack::{DebayerChoice, StackParams, Weights};
use astroworker::science::align::{Model, distance};
use astroworker::science::normalize::Normalization;
use astroworker::science::stack::Method;
use astroworker::science::stars::{self, DetectParams};
use astroworker::science::warp::{Interpolation, Transform, similarity};
use ndarray::Axis;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const H: usize = 320;
const W: usize = 480;
const FWHM: f64 = 3.0;

fn render(stars: &[(f64, f64, f64)], noise: f64, seed: u64) -> ndarray::Array2<f32> {
    mono_star_frame((H, W), stars, FWHM, 300.0, noise, seed)
}

fn grid_rms(a: &Transform, b: &Transform) -> f64 {
    distance(a, b, (H, W), 16)
}

/// A star of the sky: x, y (reference pixels) and flux.
type SkyStar = (f64, f64, f64);

/// Twenty frames of one sky (50 stars, wider than a frame), each with its true frame →
/// reference transform (the first is the identity), written into `dir`.
fn synthetic_frames(dir: &std::path::Path) -> (Vec<PathBuf>, Vec<Transform>, Vec<SkyStar>) {
    synthetic_frames_with_noise(dir, |_| 8.0)
}

/// [`synthetic_frames`] with the read noise of frame k given by `noise(k)`.
fn synthetic_frames_with_noise(
    dir: &std::path::Path,
    noise: impl Fn(u64) -> f64,
) -> (Vec<PathBuf>, Vec<Transform>, Vec<SkyStar>) {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    // The sky in reference pixels, wider than the frame so shifted frames keep their stars.
    let sky: Vec<(f64, f64, f64)> = (0..50)
        .map(|_| {
            (
                rng.random_range(-70.0..W as f64 + 70.0),
                rng.random_range(-70.0..H as f64 + 70.0),
                rng.random_range(5000.0..60000.0),
            )
        })
        .collect();
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut truths: Vec<Transform> = Vec::new();
    for k in 0..20 {
        let truth = if k == 0 {
            astroworker::science::warp::IDENTITY
        } else {
            similarity(
                rng.random_range(-60.0..60.0),
                rng.random_range(-60.0..60.0),
                rng.random_range(-3.0f64..3.0).to_radians(),
                rng.random_range(0.99..1.01),
                (W as f64 / 2.0, H as f64 / 2.0),
            )
        };
        let stars = stars_in_frame(&sky, &truth).unwrap();
        let mut img = render(&stars, noise(k), 100 + k);
        for _ in 0..5 {
            let (y, x) = (rng.random_range(0..H), rng.random_range(0..W));
            img[(y, x)] = 20000.0;
        }
        let path = dir.join(format!("frame_{k:02}.fits"));
        write_image(
            &path,
            img.insert_axis(Axis(0)).view(),
            OutputType::Float32,
            &Header::new(),
        )
        .unwrap();
        paths.push(path);
        truths.push(truth);
    }

    (paths, truths, sky)
}

fn registration_params(paths: &[PathBuf], framing: Framing) -> RegisterParams {
    RegisterParams {
        inputs: paths.to_vec(),
        output_dir: None,
        reference: Some(paths[0].clone()),
        model: Model::Similarity,
        interpolation: Interpolation::Lanczos3,
        reject_worst: 0.0,
        framing,
    }
}

fn stack_params(paths: &[PathBuf], output: PathBuf) -> StackParams {
    StackParams {
        inputs: paths.to_vec(),
        output,
        method: Method::SigmaClip {
            low: 3.0,
            high: 3.0,
            iterations: 5,
        },
        normalize: Normalization::None,
        weights: Weights::None,
        masters: Default::default(),
        debayer: DebayerChoice::None,
        dtype: OutputType::Float32,
        preview: None,
        memory_budget: 4 << 20,
    }
}

/// Registers and stacks `paths` with `framing`; returns the stacked image and the result.
fn registered_stack(
    paths: &[PathBuf],
    framing: Framing,
    output: PathBuf,
) -> (ndarray::Array3<f32>, serde_json::Value) {
    registered_stack_with(stack_params(paths, output), framing)
}

fn registered_stack_with(
    params: StackParams,
    framing: Framing,
) -> (ndarray::Array3<f32>, serde_json::Value) {
    let (paths, output) = (params.inputs.clone(), params.output.clone());
    let devices = Devices::cpu_only();
    let compute = devices.select("cpu").unwrap();
    let result = register::registered_stack(
        &params,
        &registration_params(&paths, framing),
        compute.as_ref(),
        &NoProgress,
    )
    .unwrap();
    let image = astroworker::fits::FitsReader::open(&output)
        .unwrap()
        .read_all()
        .unwrap();
    (image, result)
}

#[test]
fn twenty_rotated_frames_register_and_stack_sharp() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, truths, sky) = synthetic_frames(dir.path());
    let registration = registration_params(&paths, Framing::Reference);
    let report = register::register(&registration, &NoProgress).unwrap();
    assert!(report.dropped().is_empty(), "{:?}", report.dropped());
    for (f, truth) in report.frames.iter().zip(&truths) {
        let t = f.transform.expect("matched");
        let err = grid_rms(&t, truth);
        assert!(
            err <= 0.05,
            "{}: transform error {err:.4} px",
            f.input.display()
        );
    }

    let (stacked, result) =
        registered_stack(&paths, Framing::Reference, dir.path().join("stack.fits"));
    assert_eq!(result["frames_used"], 20);
    let stacked_fwhm = register::image_fwhm(stacked.view());
    let truth_img = render(&sky, 0.0, 0);
    let truth_fwhm = stars::median_fwhm(&stars::detect(truth_img.view(), &DetectParams::default()));
    assert!(
        (stacked_fwhm - truth_fwhm).abs() / truth_fwhm <= 0.10,
        "stack FWHM {stacked_fwhm:.3} vs truth {truth_fwhm:.3}"
    );
}

#[test]
fn union_and_intersection_framing() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _, _) = synthetic_frames(dir.path());
    let (reference, _) = registered_stack(&paths, Framing::Reference, dir.path().join("ref.fits"));
    let (union, result) = registered_stack(&paths, Framing::Union, dir.path().join("union.fits"));
    let origin = &result["registration"]["origin"];
    let (ox, oy) = (origin[0].as_f64().unwrap(), origin[1].as_f64().unwrap());
    let (_, uh, uw) = union.dim();
    // Frames shifted by up to ±60 px: the union reaches beyond the reference on every side.
    assert!(ox <= -30.0 && oy <= -30.0, "origin {ox}, {oy}");
    assert!(uw as f64 + ox >= W as f64 + 30.0 && uh as f64 + oy >= H as f64 + 30.0);
    assert_eq!(result["width"], uw);
    // Within the reference's pixels the union stack is the reference-framed stack.
    let inside = union.slice(ndarray::s![
        ..,
        -oy as usize..-oy as usize + H,
        -ox as usize..-ox as usize + W
    ]);
    for (a, b) in inside.iter().zip(reference.iter()) {
        assert!(
            (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-3 * b.abs().max(1.0),
            "{a} vs {b}"
        );
    }
    // It covers more sky than the reference frame alone, and leaves the corners no frame
    // reaches empty.
    let covered = union.iter().filter(|v| v.is_finite()).count();
    assert!(covered > H * W + H * W / 10, "{covered} covered pixels");
    assert!(union[(0, 0, 0)].is_nan() || union[(0, uh - 1, uw - 1)].is_nan());

    let (common, result) = registered_stack(
        &paths,
        Framing::Intersection,
        dir.path().join("common.fits"),
    );
    let (_, ch, cw) = common.dim();
    let origin = &result["registration"]["origin"];
    let (cx, cy) = (origin[0].as_f64().unwrap(), origin[1].as_f64().unwrap());
    assert!(cx >= 0.0 && cy >= 0.0 && cx as usize + cw <= W && cy as usize + ch <= H);
    assert!(cw > W / 2 && ch > H / 3, "{cw}×{ch}");
    // Every frame covers every pixel of the intersection: registered frames written with this
    // framing have no empty pixel, and have the stack's size.
    let written = RegisterParams {
        output_dir: Some(dir.path().join("registered")),
        ..registration_params(&paths, Framing::Intersection)
    };
    let report = register::register(&written, &NoProgress).unwrap();
    for f in &report.frames {
        let frame = astroworker::fits::FitsReader::open(f.output.as_ref().unwrap())
            .unwrap()
            .read_all()
            .unwrap();
        assert_eq!(frame.dim(), (1, ch, cw));
        assert!(frame.iter().all(|v| v.is_finite()), "{}", f.input.display());
    }
}

#[test]
fn noise_and_quality_weights_favour_the_quiet_frames() {
    // Half the frames five times noisier: weighting by 1/σ² (or 1/(σ²·FWHM²), the FWHM
    // being equal) must bring the stack's noise well below the plain mean's (in theory
    // 2.5 against 6.5 ADU).
    let dir = tempfile::tempdir().unwrap();
    let (paths, _, sky) =
        synthetic_frames_with_noise(dir.path(), |k| if k % 2 == 1 { 40.0 } else { 8.0 });
    let truth = render(&sky, 0.0, 0);
    let residual_noise = |weights: Weights, name: &str| {
        let params = StackParams {
            method: Method::Mean,
            weights,
            ..stack_params(&paths, dir.path().join(format!("{name}.fits")))
        };
        let (image, result) = registered_stack_with(params, Framing::Reference);
        let plane = image.index_axis(Axis(0), 0);
        // Away from the borders some frames don't cover.
        let diffs: Vec<f64> = plane
            .slice(ndarray::s![70..H - 70, 70..W - 70])
            .indexed_iter()
            .map(|((y, x), v)| f64::from(*v) - f64::from(truth[(y + 70, x + 70)]))
            .collect();
        // Robust σ (1.4826·MAD): star cores, where resampling errors dominate, don't count.
        let mut sorted = diffs.clone();
        let median = *sorted
            .select_nth_unstable_by(diffs.len() / 2, f64::total_cmp)
            .1;
        let mut deviations: Vec<f64> = diffs.iter().map(|v| (v - median).abs()).collect();
        let mid = deviations.len() / 2;
        (
            1.4826 * *deviations.select_nth_unstable_by(mid, f64::total_cmp).1,
            result,
        )
    };
    let (plain, result) = residual_noise(Weights::None, "plain");
    let noise: Vec<f64> = result["registration"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["noise"].as_f64().unwrap())
        .collect();
    for (k, pair) in noise.chunks(2).enumerate() {
        assert!(
            pair[1] > 3.0 * pair[0],
            "frames {}/{}: noise {pair:?}",
            2 * k,
            2 * k + 1
        );
    }
    for weights in [Weights::Noise, Weights::Quality] {
        let (weighted, _) = residual_noise(weights, "weighted");
        assert!(
            weighted < 0.6 * plain,
            "{weights:?}: residual noise {weighted:.2} vs {plain:.2} unweighted"
        );
    }
}
