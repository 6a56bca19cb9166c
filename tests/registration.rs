//! Registration on synthetic frames with known transforms: 20 frames shifted by up to ±60 px,
//! rotated by up to ±3° and scaled by ±1 %, with noise and hot pixels. The recovered transforms
//! must be within 0.05 px RMS of the truth over the frame, every frame must match, and the
//! registered stack's star FWHM must be within 10 % of the noiseless reference's.

use std::path::PathBuf;

use astroworker::compute::Devices;
use astroworker::fits::{Header, OutputType, write_image};
use astroworker::fixtures::mono_star_frame;
use astroworker::pipeline::NoProgress;
use astroworker::pipeline::register::{self, RegisterParams};
use astroworker::pipeline::stack::{DebayerChoice, StackParams, Weights};
use astroworker::science::align::{Model, apply, distance, invert};
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

#[test]
fn twenty_rotated_frames_register_and_stack_sharp() {
    let dir = tempfile::tempdir().unwrap();
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
        let to_frame = invert(&truth).unwrap();
        let stars: Vec<(f64, f64, f64)> = sky
            .iter()
            .map(|&(x, y, f)| {
                let (fx, fy) = apply(&to_frame, x, y);
                (fx, fy, f)
            })
            .collect();
        let mut img = render(&stars, 8.0, 100 + k);
        for _ in 0..5 {
            let (y, x) = (rng.random_range(0..H), rng.random_range(0..W));
            img[(y, x)] = 20000.0;
        }
        let path = dir.path().join(format!("frame_{k:02}.fits"));
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

    let registration = RegisterParams {
        inputs: paths.clone(),
        output_dir: None,
        reference: Some(paths[0].clone()),
        model: Model::Similarity,
        interpolation: Interpolation::Lanczos3,
        reject_worst: 0.0,
    };
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

    let output = dir.path().join("stack.fits");
    let params = StackParams {
        inputs: paths,
        output: output.clone(),
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
    };
    let devices = Devices::cpu_only();
    let compute = devices.select("cpu").unwrap();
    let result =
        register::registered_stack(&params, &registration, compute.as_ref(), &NoProgress).unwrap();
    assert_eq!(result["frames_used"], 20);
    let stacked = astroworker::fits::FitsReader::open(&output)
        .unwrap()
        .read_all()
        .unwrap();
    let stacked_fwhm = register::image_fwhm(stacked.view());
    let truth_img = render(&sky, 0.0, 0);
    let truth_fwhm = stars::median_fwhm(&stars::detect(truth_img.view(), &DetectParams::default()));
    assert!(
        (stacked_fwhm - truth_fwhm).abs() / truth_fwhm <= 0.10,
        "stack FWHM {stacked_fwhm:.3} vs truth {truth_fwhm:.3}"
    );
}
