//! Deterministic synthetic Seestar-like data with known truth (`astroworker fixtures`).
//!
//! The model, in ADU (gain 1 e⁻/ADU):
//!
//! ```text
//! light(x, y) = bias(x, y) + dark(x, y)·t + flat(x, y)·truth(x, y) + noise
//! truth(x, y) = sky_c(x, y) + Σ stars_c(x, y)        (c = the GRBG colour of pixel x, y)
//! ```
//!
//! - `bias`: 512 ADU pedestal plus a fixed column pattern (±2 ADU).
//! - `dark`: 0.5 ADU/s thermal signal plus hot pixels (20–400 ADU/s).
//! - `flat`: radial vignetting (−30 % in the corners), 1 % pixel response non-uniformity and a
//!   per-colour sensitivity, scaled so that its median over each colour is exactly 1 — so a
//!   perfectly calibrated light equals `truth`.
//! - `truth`: a sky gradient (colour-tinted) and Gaussian stars (FWHM 3 px) whose pixel values
//!   are integrated over the pixel area (erf), with known positions and fluxes (`stars.json`).
//! - noise: shot noise (Gaussian approximation of Poisson) plus 3 ADU read noise.
//! - artefacts: a satellite trail in light 3, cosmic-ray hits in every second light.
//!
//! Every frame is seeded from (seed, kind, index) and rows from (frame seed, row), so output is
//! identical whatever the thread count. Frames are written as 16-bit FITS (BITPIX 16, BZERO
//! 32768) with `BAYERPAT = 'GRBG'` like the Seestar S50; `truth.fits` is float32.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use rayon::prelude::*;
use serde::Serialize;

use crate::fits::{self, CardValue, FitsError, Header, OutputType};

pub const BIAS_LEVEL: f32 = 512.0;
pub const DARK_CURRENT: f32 = 0.5;
pub const READ_NOISE: f32 = 3.0;
pub const FLAT_LEVEL: f32 = 20_000.0;
pub const STAR_FWHM: f64 = 3.0;

/// What to generate.
#[derive(Debug, Clone)]
pub struct FixtureSpec {
    pub width: usize,
    pub height: usize,
    pub lights: usize,
    pub biases: usize,
    pub darks: usize,
    pub flats: usize,
    pub stars: usize,
    pub exposure: f64,
    pub seed: u64,
}

impl Default for FixtureSpec {
    /// Seestar S50 geometry: 1080 × 1920 portrait, 10 s subs.
    fn default() -> Self {
        Self {
            width: 1080,
            height: 1920,
            lights: 10,
            biases: 10,
            darks: 10,
            flats: 10,
            stars: 300,
            exposure: 10.0,
            seed: 2025,
        }
    }
}

/// A star of the truth image.
#[derive(Debug, Clone, Serialize)]
pub struct Star {
    /// Centre, pixel coordinates (x = column, y = row; pixel centres at integers).
    pub x: f64,
    pub y: f64,
    /// Total flux in ADU per exposure, per colour (R, G, B).
    pub flux: [f64; 3],
}

/// The generated files.
#[derive(Debug, Clone, Serialize)]
pub struct FixtureSet {
    pub lights: Vec<PathBuf>,
    pub biases: Vec<PathBuf>,
    pub darks: Vec<PathBuf>,
    pub flats: Vec<PathBuf>,
    /// Noiseless calibrated scene (CFA mosaic, float32).
    pub truth: PathBuf,
    pub stars: PathBuf,
    /// Hot pixels of the dark current, (x, y).
    pub hot_pixels: Vec<(usize, usize)>,
    /// Pixels a cosmic ray or the satellite trail touched, per light.
    pub artefacts: Vec<Vec<(usize, usize)>>,
}

/// GRBG colour of pixel (x, y) with row 0 first: 0 = R, 1 = G, 2 = B.
pub fn grbg_color(x: usize, y: usize) -> usize {
    match (y % 2, x % 2) {
        (0, 0) | (1, 1) => 1,
        (0, 1) => 0,
        _ => 2,
    }
}

/// The fixed sensor and scene of a spec (everything but the per-frame noise).
struct Model {
    spec: FixtureSpec,
    bias: Array2<f32>,
    dark: Array2<f32>,
    flat: Array2<f32>,
    truth: Array2<f32>,
    stars: Vec<Star>,
    hot: Vec<(usize, usize)>,
}

impl Model {
    fn new(spec: &FixtureSpec) -> Self {
        let (w, h) = (spec.width, spec.height);
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);

        let columns: Vec<f32> = (0..w).map(|_| rng.random_range(-2.0..2.0)).collect();
        let bias = Array2::from_shape_fn((h, w), |(_, x)| BIAS_LEVEL + columns[x]);

        let mut dark = Array2::from_elem((h, w), DARK_CURRENT);
        let hot: Vec<(usize, usize)> = (0..(w * h / 5000).max(5))
            .map(|_| (rng.random_range(2..w - 2), rng.random_range(2..h - 2)))
            .collect();
        for &(x, y) in &hot {
            dark[(y, x)] = rng.random_range(20.0..400.0);
        }

        let sensitivity = [0.92f32, 1.0, 0.85];
        let prnu: Vec<f32> = (0..w * h)
            .map(|_| 1.0 + 0.01 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        let r2max = cx * cx + cy * cy;
        let mut flat = Array2::from_shape_fn((h, w), |(y, x)| {
            let r2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
            (1.0 - 0.3 * r2 / r2max) * prnu[y * w + x] * sensitivity[grbg_color(x, y)]
        });
        normalize_per_color(&mut flat);

        let stars: Vec<Star> = (0..spec.stars)
            .map(|_| {
                let total = 10f64.powf(rng.random_range(2.7..5.3));
                let tint = [rng.random_range(0.6..1.2), 1.0, rng.random_range(0.6..1.2)];
                Star {
                    x: rng.random_range(8.0..w as f64 - 8.0),
                    y: rng.random_range(8.0..h as f64 - 8.0),
                    flux: tint.map(|t| total * t),
                }
            })
            .collect();
        let sky_tint = [0.9f32, 1.0, 0.8];
        let mut truth = Array2::from_shape_fn((h, w), |(y, x)| {
            let sky = 250.0 + 60.0 * x as f32 / w as f32 + 40.0 * y as f32 / h as f32;
            sky * sky_tint[grbg_color(x, y)]
        });
        render_stars(&mut truth, &stars);
        Self {
            spec: spec.clone(),
            bias,
            dark,
            flat,
            truth,
            stars,
            hot,
        }
    }

    /// One noisy frame: `signal` (electrons above bias) with shot and read noise added.
    fn noisy(&self, seed: u64, signal: impl Fn(usize, usize) -> f32 + Sync) -> Array2<f32> {
        let (w, h) = (self.spec.width, self.spec.height);
        let mut out = Array2::<f32>::zeros((h, w));
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(y, mut row)| {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed ^ (y as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                for (x, v) in row.iter_mut().enumerate() {
                    let s = signal(x, y).max(0.0);
                    let shot: f32 = rng.sample(StandardNormal);
                    let read: f32 = rng.sample(StandardNormal);
                    *v = self.bias[(y, x)] + s + shot * s.sqrt() + read * READ_NOISE;
                }
            });
        out
    }
}

/// Divides a mosaic by the median of each GRBG colour, so each colour's median is 1.
fn normalize_per_color(flat: &mut Array2<f32>) {
    let mut per_color: [Vec<f32>; 3] = Default::default();
    for ((y, x), v) in flat.indexed_iter() {
        per_color[grbg_color(x, y)].push(*v);
    }
    let medians = per_color.map(|mut v| {
        let mid = v.len() / 2;
        *v.select_nth_unstable_by(mid, f32::total_cmp).1
    });
    for ((y, x), v) in flat.indexed_iter_mut() {
        *v /= medians[grbg_color(x, y)];
    }
}

/// Fraction of a 1-D Gaussian of width `sigma` centred at `c` falling in [i − 0.5, i + 0.5].
fn pixel_fraction(i: i64, c: f64, sigma: f64) -> f64 {
    let s = sigma * std::f64::consts::SQRT_2;
    0.5 * (erf((i as f64 + 0.5 - c) / s) - erf((i as f64 - 0.5 - c) / s))
}

/// Stars `(x, y, flux)` given in reference pixels, where a frame whose frame → reference
/// transform is `to_reference` sees them (`None` when the transform is singular).
pub fn stars_in_frame(
    sky: &[(f64, f64, f64)],
    to_reference: &crate::science::warp::Transform,
) -> Option<Vec<(f64, f64, f64)>> {
    use crate::science::align::{apply, invert};
    let to_frame = invert(to_reference)?;
    Some(
        sky.iter()
            .map(|&(x, y, flux)| {
                let (fx, fy) = apply(&to_frame, x, y);
                (fx, fy, flux)
            })
            .collect(),
    )
}

/// A mono frame of Gaussian stars `(x, y, flux)` of the given FWHM, integrated over pixel
/// areas, on a flat background with Gaussian noise (σ = `noise`, none when 0): frames with
/// known star positions for the registration tests.
pub fn mono_star_frame(
    (h, w): (usize, usize),
    stars: &[(f64, f64, f64)],
    fwhm: f64,
    background: f64,
    noise: f64,
    seed: u64,
) -> Array2<f32> {
    let sigma = fwhm / (2.0 * (2.0 * std::f64::consts::LN_2).sqrt());
    let radius = (5.0 * sigma).ceil() as i64;
    let mut img = Array2::<f64>::from_elem((h, w), background);
    for &(cx, cy, flux) in stars {
        let (sx, sy) = (cx.round() as i64, cy.round() as i64);
        for y in (sy - radius).max(0)..=(sy + radius).min(h as i64 - 1) {
            let fy = pixel_fraction(y, cy, sigma);
            for x in (sx - radius).max(0)..=(sx + radius).min(w as i64 - 1) {
                img[(y as usize, x as usize)] += flux * fy * pixel_fraction(x, cx, sigma);
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match Normal::new(0.0, noise) {
        Ok(n) if noise > 0.0 => img.mapv(|v| (v + n.sample(&mut rng)) as f32),
        _ => img.mapv(|v| v as f32),
    }
}

/// Adds each star, integrated over pixel areas, to the colour its CFA pixel sees.
fn render_stars(truth: &mut Array2<f32>, stars: &[Star]) {
    let sigma = STAR_FWHM / (2.0 * (2.0 * std::f64::consts::LN_2).sqrt());
    let (h, w) = truth.dim();
    let radius = (5.0 * sigma).ceil() as i64;
    let frac = |i: i64, c: f64| pixel_fraction(i, c, sigma);
    for star in stars {
        let (sx, sy) = (star.x.round() as i64, star.y.round() as i64);
        for y in (sy - radius).max(0)..=(sy + radius).min(h as i64 - 1) {
            let fy = frac(y, star.y);
            for x in (sx - radius).max(0)..=(sx + radius).min(w as i64 - 1) {
                let c = grbg_color(x as usize, y as usize);
                truth[(y as usize, x as usize)] += (star.flux[c] * fy * frac(x, star.x)) as f32;
            }
        }
    }
}

/// The error function (Abramowitz–Stegun 7.1.26 refined with one Newton step on erfc is
/// overkill here; this rational approximation has |error| < 1.2e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = 1.0
        - t * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { y } else { -y }
}

fn frame_header(kind: &str, index: usize, spec: &FixtureSpec, exposure: f64) -> Header {
    let mut h = Header::new();
    let s = |v: &str| CardValue::Str(v.to_string());
    h.set("OBJECT", s("Synthetic field"), Some("astroworker fixtures"));
    h.set("INSTRUME", s("Seestar S50 (synthetic)"), None);
    h.set("TELESCOP", s("astroworker-fixtures"), None);
    h.set("IMAGETYP", s(kind), None);
    h.set("FILTER", s("IRCUT"), None);
    h.set("GAIN", CardValue::Int(80), None);
    h.set(
        "EXPTIME",
        CardValue::Float(exposure),
        Some("[s] exposure time"),
    );
    h.set("EXPOSURE", CardValue::Float(exposure), None);
    let start = 5 * 3600 + 45 * 60 + (index as i64) * (spec.exposure as i64 + 1);
    h.set(
        "DATE-OBS",
        s(&format!(
            "2025-03-27T{:02}:{:02}:{:02}.000000",
            start / 3600,
            (start / 60) % 60,
            start % 60
        )),
        None,
    );
    h.set("RA", CardValue::Float(192.7213), None);
    h.set("DEC", CardValue::Float(41.1203), None);
    h.set("BAYERPAT", s("GRBG"), Some("Bayer pattern, top-down"));
    h.set("XBAYROFF", CardValue::Int(0), None);
    h.set("YBAYROFF", CardValue::Int(0), None);
    h.push_history(&format!(
        "astroworker fixtures seed {} {kind} {index}",
        spec.seed
    ));
    h
}

fn write(
    path: &Path,
    data: Array2<f32>,
    dtype: OutputType,
    header: &Header,
) -> Result<(), FitsError> {
    let data: Array3<f32> = data.insert_axis(Axis(0));
    fits::write_image(path, data.view(), dtype, header)
}

/// Writes the whole set into `dir` (created if needed). `progress(done, total)` is called
/// after each file.
pub fn generate(
    dir: &Path,
    spec: &FixtureSpec,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<FixtureSet, FitsError> {
    std::fs::create_dir_all(dir).map_err(|e| FitsError::Io {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let model = Model::new(spec);
    let t = spec.exposure as f32;
    let total = spec.lights + spec.biases + spec.darks + spec.flats + 2;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tick = || {
        progress(
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
            total,
        )
    };
    let seed = |kind: u64, i: usize| spec.seed.wrapping_mul(1_000_003) ^ (kind << 32) ^ i as u64;

    let write_series = |kind: &str,
                        code: u64,
                        n: usize,
                        exposure: f64,
                        signal: &(dyn Fn(usize, usize) -> f32 + Sync)| {
        (0..n)
            .into_par_iter()
            .map(|i| {
                let path = dir.join(format!("{}_{:04}.fit", kind.to_lowercase(), i + 1));
                let frame = model.noisy(seed(code, i), signal);
                write(
                    &path,
                    frame,
                    OutputType::UInt16,
                    &frame_header(kind, i, spec, exposure),
                )?;
                tick();
                Ok(path)
            })
            .collect::<Result<Vec<_>, FitsError>>()
    };

    let biases = write_series("Bias", 1, spec.biases, 0.0, &|_, _| 0.0)?;
    let darks = write_series("Dark", 2, spec.darks, spec.exposure, &|x, y| {
        model.dark[(y, x)] * t
    })?;
    let flats = write_series("Flat", 3, spec.flats, 1.0, &|x, y| {
        model.flat[(y, x)] * FLAT_LEVEL
    })?;

    let artefacts: Vec<Vec<(usize, usize)>> = (0..spec.lights)
        .map(|i| artefact_pixels(&model.spec, i))
        .collect();
    let lights = (0..spec.lights)
        .into_par_iter()
        .map(|i| {
            let path = dir.join(format!("light_{:04}.fit", i + 1));
            let hits = &artefacts[i];
            let mut frame = model.noisy(seed(4, i), |x, y| {
                model.dark[(y, x)] * t + model.flat[(y, x)] * model.truth[(y, x)]
            });
            let mut rng = ChaCha8Rng::seed_from_u64(seed(5, i));
            for &(x, y) in hits {
                frame[(y, x)] += rng.random_range(3000.0..20000.0);
            }
            write(
                &path,
                frame,
                OutputType::UInt16,
                &frame_header("Light", i, spec, spec.exposure),
            )?;
            tick();
            Ok(path)
        })
        .collect::<Result<Vec<_>, FitsError>>()?;

    let truth = dir.join("truth.fits");
    let mut th = Header::new();
    th.set(
        "OBJECT",
        CardValue::Str("Synthetic field (truth)".into()),
        None,
    );
    th.set("BAYERPAT", CardValue::Str("GRBG".into()), None);
    th.push_history("noiseless calibrated scene: sky gradient + stars, ADU per exposure");
    write(&truth, model.truth.clone(), OutputType::Float32, &th)?;
    tick();

    let stars = dir.join("stars.json");
    let stars_json = serde_json::json!({
        "fwhm": STAR_FWHM,
        "stars": model.stars,
        "hot_pixels": model.hot,
        "artefacts": artefacts,
    });
    std::fs::write(
        &stars,
        serde_json::to_vec_pretty(&stars_json).expect("serializable"),
    )
    .map_err(|e| FitsError::Write {
        path: stars.clone(),
        reason: e.to_string(),
    })?;
    tick();

    Ok(FixtureSet {
        lights,
        biases,
        darks,
        flats,
        truth,
        stars,
        hot_pixels: model.hot.clone(),
        artefacts,
    })
}

/// Cosmic rays in every second light (one or two pixels each) and a satellite trail across
/// light 3.
fn artefact_pixels(spec: &FixtureSpec, index: usize) -> Vec<(usize, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0xC05_0000 ^ index as u64);
    let (w, h) = (spec.width, spec.height);
    let mut hits = Vec::new();
    if index % 2 == 1 {
        for _ in 0..30 {
            let (x, y) = (rng.random_range(1..w - 1), rng.random_range(1..h - 1));
            hits.push((x, y));
            if rng.random_bool(0.5) {
                hits.push((x + 1, y));
            }
        }
    }
    if index == 2 {
        // A straight trail two pixels wide from the left edge to the right edge.
        let (y0, y1) = (h as f64 * 0.2, h as f64 * 0.7);
        for x in 0..w {
            let y = (y0 + (y1 - y0) * x as f64 / w as f64) as usize;
            hits.push((x, y));
            hits.push((x, (y + 1).min(h - 1)));
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (-2.0, -0.995_322_265_0),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x})");
        }
    }

    #[test]
    fn model_is_deterministic_and_physical() {
        let spec = FixtureSpec {
            width: 64,
            height: 48,
            stars: 5,
            ..FixtureSpec::default()
        };
        let a = Model::new(&spec);
        let b = Model::new(&spec);
        assert_eq!(a.truth, b.truth);
        assert_eq!(a.noisy(7, |_, _| 100.0), b.noisy(7, |_, _| 100.0));
        // The flat's median per colour is 1, so calibration recovers the truth.
        for c in 0..3 {
            let mut v: Vec<f32> = a
                .flat
                .indexed_iter()
                .filter(|((y, x), _)| grbg_color(*x, *y) == c)
                .map(|(_, v)| *v)
                .collect();
            let mid = v.len() / 2;
            let m = *v.select_nth_unstable_by(mid, f32::total_cmp).1;
            assert!((m - 1.0).abs() < 1e-6);
        }
        // Star flux is conserved by the pixel integration (stars are away from the edges).
        let sky = Model::new(&FixtureSpec {
            stars: 0,
            ..spec.clone()
        })
        .truth;
        let added: f64 = a
            .truth
            .iter()
            .zip(sky.iter())
            .map(|(t, s)| f64::from(t - s))
            .sum();
        let mut expected = 0.0;
        for s in &a.stars {
            // Each CFA pixel sees one colour: on average 1/4 R, 1/2 G, 1/4 B.
            expected += 0.25 * s.flux[0] + 0.5 * s.flux[1] + 0.25 * s.flux[2];
        }
        assert!(
            (added / expected - 1.0).abs() < 0.05,
            "{added} vs {expected}"
        );
        assert_eq!(grbg_color(0, 0), 1);
        assert_eq!(grbg_color(1, 0), 0);
        assert_eq!(grbg_color(0, 1), 2);
    }
}
