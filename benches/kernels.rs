//! Criterion benchmarks of the CPU science kernels on Seestar-size data (1080 × 1920 pixels):
//! each debayer method on a full frame, the Lanczos-3 resampling of a band of 200 rows (the
//! registered stack's unit of work), and the rejection stack of such a band over 100 frames.
//!
//! `cargo bench --bench kernels`; figures in benches/README.md.

use astroworker::science::cfa::{BayerPattern, DebayerMethod, debayer};
use astroworker::science::stack::{Method, stack_band};
use astroworker::science::warp::{Interpolation, similarity, warp_band};
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use std::hint::black_box;

const WIDTH: usize = 1080;
const HEIGHT: usize = 1920;
const BAND: usize = 200;

/// Sky with a gradient, read noise and a few bright pixels, in whole ADU.
fn sky(height: usize, width: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((height, width), |(y, x)| {
        let star = if rng.random_bool(0.001) { 3000.0 } else { 0.0 };
        (600.0 + 0.02 * x as f32 + 0.03 * y as f32 + rng.random_range(-30.0f32..30.0) + star)
            .round()
    })
}

fn debayering(c: &mut Criterion) {
    let mosaic = sky(HEIGHT, WIDTH, 1);
    let mut group = c.benchmark_group("debayer 1080x1920");
    group.sample_size(20);
    for method in [
        DebayerMethod::Bilinear,
        DebayerMethod::Rcd,
        DebayerMethod::Vng,
    ] {
        group.bench_function(format!("{method:?}"), |b| {
            b.iter(|| debayer(black_box(mosaic.view()), BayerPattern::Grbg, method))
        });
    }
    group.finish();
    // One band's source rows, as the registered stack debayers them.
    let band = sky(BAND + 30, WIDTH, 3);
    c.bench_function("debayer rcd 1080x230", |b| {
        b.iter(|| {
            debayer(
                black_box(band.view()),
                BayerPattern::Grbg,
                DebayerMethod::Rcd,
            )
        })
    });
}

fn resampling(c: &mut Criterion) {
    // Source rows around the band, three colour planes, as the registered stack reads them.
    let rows = BAND + 60;
    let plane = sky(rows, WIDTH, 2);
    let src = Array3::from_shape_fn((3, rows, WIDTH), |(_, y, x)| plane[[y, x]]);
    let transform = similarity(12.3, 7.6, 0.4f64.to_radians(), 1.0, (540.0, 960.0));
    let mut out = Array3::<f32>::zeros((3, BAND, WIDTH));
    c.bench_function("lanczos3 warp 3x200x1080", |b| {
        b.iter(|| {
            warp_band(
                black_box(src.view()),
                880,
                &transform,
                Interpolation::Lanczos3,
                900,
                out.view_mut(),
            )
        })
    });
}

fn stacking(c: &mut Criterion) {
    let frames = 100;
    let band = Array3::from_shape_fn((frames, BAND, WIDTH), {
        let planes: Vec<_> = (0..frames)
            .map(|i| sky(BAND, WIDTH, 10 + i as u64))
            .collect();
        move |(i, y, x)| planes[i][[y, x]]
    });
    let mut out = Array2::<f32>::zeros((BAND, WIDTH));
    let mut group = c.benchmark_group("stack 100x200x1080");
    group.sample_size(10);
    for name in ["mean", "median", "sigma_clip", "winsorized"] {
        let method = Method::parse(name, 3.0, 3.0, 5).expect("a method name");
        group.bench_function(name, |b| {
            b.iter(|| stack_band(&method, black_box(band.view()), None, out.view_mut()))
        });
    }
    group.finish();
}

criterion_group!(kernels, debayering, resampling, stacking);
criterion_main!(kernels);
