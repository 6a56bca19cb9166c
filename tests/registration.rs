//! Registration on synthetic frames with known transforms: 20 frames shifted by up to ±60 px,
//! rotated by up to ±3° and scaled by ±1 %, with noise and hot pixels. The recovered transforms
//! must be within 0.05 px RMS of the truth over the frame, every frame must match, and the
//! registered stack's star FWHM must be within 10 % of the noiseless reference's.

use std::path::PathBuf;

use astroworker::compute::Devices;
use astroworker::fits::{Header, OutputType, write_image};
use astroworker::pipeline::NoProgress;
use astroworker::pipeline::register::{self, RegisterParams};
use astroworker::pipeline::stack::{DebayerChoice, StackParams, Weights};
use astroworker::science::align::{Model, apply, invert};
use astroworker::science::normalize::Normalization;
use astroworker::science::stack::Method;
use astroworker::science::stars::{self, DetectParams};
use astroworker::science::warp::{Interpolation, Transform, similarity};
use ndarray::{Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

const H: usize = 320;
const W: usize = 480;
const FWHM: f64 = 3.0;

/// Gaussian stars integrated over each pixel (5×5 samples), on a flat background.
fn render(stars: &[(f64, f64, f64)], noise: f64, seed: u64) -> Array2<f32> {
    let sigma = FWHM / 2.354_82;
    let mut img = Array2::<f64>::from_elem((H, W), 300.0);
    let r = (4.0 * sigma).ceil() as i64;
    for &(sx, sy, flux) in stars {
        let amp = flux / (2.0 * std::f64::consts::PI * sigma * sigma);
        for y in (sy as i64 - r).max(0)..=(sy as i64 + r).min(H as i64 - 1) {
            for x in (sx as i64 - r).max(0)..=(sx as i64 + r).min(W as i64 - 1) {
                let mut acc = 0.0;
                for j in 0..5 {
                    for i in 0..5 {
                        let (px, py) = (
                            x as f64 - 0.4 + 0.2 * i as f64,
                            y as f64 - 0.4 + 0.2 * j as f64,
                        );
                        acc += (-((px - sx).powi(2) + (py - sy).powi(2)) / (2.0 * sigma * sigma))
                            .exp();
                    }
                }
                img[(y as usize, x as usize)] += amp * acc / 25.0;
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = Normal::new(0.0, noise.max(1e-9)).unwrap();
    img.mapv(|v| (v + if noise > 0.0 { n.sample(&mut rng) } else { 0.0 }) as f32)
}

fn grid_rms(a: &Transform, b: &Transform) -> f64 {
    let mut sq = 0.0;
    let mut n = 0.0;
    for y in (0..H).step_by(16) {
        for x in (0..W).step_by(16) {
            let (pa, pb) = (apply(a, x as f64, y as f64), apply(b, x as f64, y as f64));
            sq += (pa.0 - pb.0).powi(2) + (pa.1 - pb.1).powi(2);
            n += 1.0;
        }
    }
    (sq / n).sqrt()
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
