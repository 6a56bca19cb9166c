//! Star detection for registration: a background mesh and its noise, peaks above k·σ, and for
//! each star a sub-pixel windowed centroid (SExtractor's `XWIN`), FWHM and roundness from
//! second moments, with hot pixels, saturated stars and elongated blobs rejected.
//!
//! Coordinates are pixel centres at integers (x = column, y = row), as in [`super::warp`].
//! CFA frames are measured on their 2×2 superpixel sums ([`luminance`]), whose positions are
//! mapped back to full-resolution pixels.

use ndarray::{Array2, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use super::cfa::BayerPattern;
use super::stats::median_in_place;

/// One detected star.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Star {
    pub x: f64,
    pub y: f64,
    /// Background-subtracted flux inside the measuring aperture.
    pub flux: f64,
    /// Background-subtracted peak value.
    pub peak: f64,
    pub fwhm: f64,
    /// Minor/major axis ratio of the second moments (1 = round).
    pub roundness: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct DetectParams {
    /// Detection threshold in background noise σ.
    pub k_sigma: f64,
    /// At most this many stars (the brightest) are returned.
    pub max_stars: usize,
    /// Peaks at or above this raw value are saturated and skipped.
    pub saturation: f64,
    /// Blobs rounder than this are kept.
    pub min_roundness: f64,
    /// Background mesh cell size in pixels.
    pub mesh: usize,
}

impl Default for DetectParams {
    fn default() -> Self {
        Self {
            k_sigma: 5.0,
            max_stars: 400,
            saturation: 60000.0,
            min_roundness: 0.5,
            mesh: 64,
        }
    }
}

/// The image stars are measured on, with how its coordinates map to the frame's:
/// `frame = scale · image + offset`.
pub struct Luminance {
    pub image: Array2<f32>,
    pub scale: f64,
    pub offset: f64,
}

/// A mono plane as is; a CFA mosaic as 2×2 superpixel sums (one value per Bayer cell, so
/// colours do not bias positions); a colour cube as the sum of its planes.
pub fn luminance(data: ArrayView3<f32>, pattern: Option<BayerPattern>) -> Luminance {
    let (c, h, w) = data.dim();
    if c == 1 && pattern.is_some() {
        let (hh, hw) = (h / 2, w / 2);
        let plane = data.index_axis(Axis(0), 0);
        let image = Array2::from_shape_fn((hh, hw), |(y, x)| {
            plane[(2 * y, 2 * x)]
                + plane[(2 * y, 2 * x + 1)]
                + plane[(2 * y + 1, 2 * x)]
                + plane[(2 * y + 1, 2 * x + 1)]
        });
        return Luminance {
            image,
            scale: 2.0,
            offset: 0.5,
        };
    }
    Luminance {
        image: data.sum_axis(Axis(0)),
        scale: 1.0,
        offset: 0.0,
    }
}

/// The background at every pixel (bilinear between the medians of mesh cells, each clipped at
/// 3 MAD once) and the noise σ (median of the cells' 1.4826·MAD).
pub fn background(img: ArrayView2<f32>, mesh: usize) -> (Array2<f32>, f64) {
    let (h, w) = img.dim();
    let mesh = mesh.max(8);
    let (ny, nx) = (h.div_ceil(mesh), w.div_ceil(mesh));
    let cells: Vec<(f32, f32)> = (0..ny * nx)
        .into_par_iter()
        .map(|i| {
            let (cy, cx) = (i / nx, i % nx);
            let (y0, x0) = (cy * mesh, cx * mesh);
            let block = img.slice(ndarray::s![y0..(y0 + mesh).min(h), x0..(x0 + mesh).min(w)]);
            let mut v: Vec<f32> = block.iter().copied().filter(|v| v.is_finite()).collect();
            if v.is_empty() {
                return (f32::NAN, f32::NAN);
            }
            let med = median_in_place(&mut v);
            let mut dev: Vec<f32> = v.iter().map(|x| (x - med).abs()).collect();
            let mad = median_in_place(&mut dev);
            // One clip at 3 σ drops the stars from the cell.
            let mut kept: Vec<f32> = v
                .into_iter()
                .filter(|x| (x - med).abs() <= 3.0 * 1.4826 * mad.max(1e-6))
                .collect();
            let med = median_in_place(&mut kept);
            let mut dev: Vec<f32> = kept.iter().map(|x| (x - med).abs()).collect();
            (med, 1.4826 * median_in_place(&mut dev))
        })
        .collect();
    let level = Array2::from_shape_fn((ny, nx), |(y, x)| cells[y * nx + x].0);
    let mut sigmas: Vec<f32> = cells
        .iter()
        .map(|c| c.1)
        .filter(|s| s.is_finite())
        .collect();
    let noise = if sigmas.is_empty() {
        0.0
    } else {
        f64::from(median_in_place(&mut sigmas))
    };
    let fill = {
        let mut v: Vec<f32> = level.iter().copied().filter(|v| v.is_finite()).collect();
        if v.is_empty() {
            0.0
        } else {
            median_in_place(&mut v)
        }
    };
    let level = level.mapv(|v| if v.is_finite() { v } else { fill });
    // Bilinear between cell centres.
    let centre = |i: usize, total: usize| {
        let start = i * mesh;
        (start + (mesh.min(total - start)) / 2) as f64 - 0.5
    };
    let xs: Vec<f64> = (0..nx).map(|i| centre(i, w)).collect();
    let ys: Vec<f64> = (0..ny).map(|i| centre(i, h)).collect();
    let locate = |c: &[f64], v: f64| -> (usize, usize, f64) {
        if c.len() == 1 || v <= c[0] {
            return (0, 0, 0.0);
        }
        let last = c.len() - 1;
        if v >= c[last] {
            return (last, last, 0.0);
        }
        let i = c.partition_point(|&p| p <= v) - 1;
        (i, i + 1, (v - c[i]) / (c[i + 1] - c[i]))
    };
    let mut bg = Array2::<f32>::zeros((h, w));
    bg.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(y, mut row)| {
            let (y0, y1, fy) = locate(&ys, y as f64);
            for (x, out) in row.iter_mut().enumerate() {
                let (x0, x1, fx) = locate(&xs, x as f64);
                let top = f64::from(level[(y0, x0)]) * (1.0 - fx) + f64::from(level[(y0, x1)]) * fx;
                let bottom =
                    f64::from(level[(y1, x0)]) * (1.0 - fx) + f64::from(level[(y1, x1)]) * fx;
                *out = (top * (1.0 - fy) + bottom * fy) as f32;
            }
        });
    (bg, noise)
}

/// Detects stars, brightest first.
pub fn detect(img: ArrayView2<f32>, p: &DetectParams) -> Vec<Star> {
    detect_with_noise(img, p).0
}

/// [`detect`], with the image's background noise σ (the median of the mesh cells' robust σ).
pub fn detect_with_noise(img: ArrayView2<f32>, p: &DetectParams) -> (Vec<Star>, f64) {
    let (h, w) = img.dim();
    let (bg, noise) = background(img, p.mesh);
    let threshold = p.k_sigma * noise.max(1e-9);
    let residual = without_hot_pixels(&(&img - &bg), threshold);
    let border = 4usize;
    if h <= 2 * border || w <= 2 * border {
        return (Vec::new(), noise);
    }
    let peaks: Vec<(usize, usize)> = (border..h - border)
        .into_par_iter()
        .flat_map_iter(|y| {
            let residual = &residual;
            (border..w - border).filter_map(move |x| {
                let v = f64::from(residual[(y, x)]);
                if v.is_nan() || v <= threshold {
                    return None;
                }
                // A local maximum (ties broken in scan order) ...
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        if dy == 0 && dx == 0 {
                            continue;
                        }
                        let n = f64::from(
                            residual[((y as i64 + dy) as usize, (x as i64 + dx) as usize)],
                        );
                        let earlier = dy < 0 || (dy == 0 && dx < 0);
                        if n > v || (earlier && n == v) {
                            return None;
                        }
                    }
                }
                // ... with at least two 4-neighbours above half the threshold (not a hot pixel).
                let lit = [(0i64, 1i64), (0, -1), (1, 0), (-1, 0)]
                    .iter()
                    .filter(|(dy, dx)| {
                        f64::from(residual[((y as i64 + dy) as usize, (x as i64 + dx) as usize)])
                            > 0.5 * threshold
                    })
                    .count();
                (lit >= 2).then_some((y, x))
            })
        })
        .collect();
    let mut stars: Vec<Star> = peaks
        .par_iter()
        .filter_map(|&(y, x)| {
            if f64::from(img[(y, x)]) >= p.saturation {
                return None;
            }
            measure(residual.view(), x as f64, y as f64)
        })
        .filter(|s| s.roundness >= p.min_roundness && s.fwhm >= 1.0 && s.fwhm < 30.0)
        // A star cut by the image edge has a biased centroid.
        .filter(|s| {
            let m = 1.5 * s.fwhm;
            s.x >= m && s.y >= m && s.x <= (w - 1) as f64 - m && s.y <= (h - 1) as f64 - m
        })
        .collect();
    stars.sort_by(|a, b| b.flux.total_cmp(&a.flux));
    // Two peaks of one star (a saturated core, a double): keep the brighter.
    let mut kept: Vec<Star> = Vec::with_capacity(stars.len().min(p.max_stars));
    for s in stars {
        let min_sep = 0.75 * s.fwhm.max(2.0);
        if kept.iter().all(|k| {
            let sep = min_sep.max(0.75 * k.fwhm);
            (k.x - s.x).powi(2) + (k.y - s.y).powi(2) > sep * sep
        }) {
            kept.push(s);
            if kept.len() == p.max_stars {
                break;
            }
        }
    }
    (kept, noise)
}

/// Replaces isolated spikes (hot pixels, cosmic-ray hits: above the threshold and more than 3×
/// every neighbour) by the median of their 8 neighbours, so they neither count as stars nor
/// pull the centroid of a star next to them. A star's core pixel always has neighbours at a
/// good fraction of its value (FWHM ≥ 1.5 px), so stars are left alone.
fn without_hot_pixels(residual: &Array2<f32>, threshold: f64) -> Array2<f32> {
    let (h, w) = residual.dim();
    let mut out = residual.clone();
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .filter(|(y, _)| *y > 0 && *y + 1 < h)
        .for_each(|(y, mut row)| {
            for x in 1..w - 1 {
                let v = residual[(y, x)];
                if f64::from(v) <= threshold {
                    continue;
                }
                let mut n = [0f32; 8];
                let mut k = 0;
                for dy in 0..3 {
                    for dx in 0..3 {
                        if dy != 1 || dx != 1 {
                            n[k] = residual[(y + dy - 1, x + dx - 1)];
                            k += 1;
                        }
                    }
                }
                let max = n.iter().copied().fold(f32::MIN, f32::max);
                if v > 3.0 * max.max(0.0) {
                    n.sort_by(f32::total_cmp);
                    row[x] = 0.5 * (n[3] + n[4]);
                }
            }
        });
    out
}

/// Measures the star near (x0, y0) on the background-subtracted image.
fn measure(r: ArrayView2<f32>, x0: f64, y0: f64) -> Option<Star> {
    let (h, w) = r.dim();
    let get = |x: i64, y: i64| -> f64 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0.0
        } else {
            let v = f64::from(r[(y as usize, x as usize)]);
            if v.is_finite() { v } else { 0.0 }
        }
    };
    let peak = get(x0 as i64, y0 as i64);
    // First guess of the size: second moments within 4 px.
    let (mut cx, mut cy) = (x0, y0);
    let mut sigma = 1.5f64;
    for _ in 0..3 {
        let radius = (3.0 * sigma).clamp(3.0, 15.0);
        let (m, sx, sy, sxx, syy, sxy) = moments(&get, cx, cy, radius);
        if m <= 0.0 {
            return None;
        }
        cx = sx / m;
        cy = sy / m;
        let (vx, vy) = (sxx / m - (cx * cx), syy / m - (cy * cy));
        let _ = sxy;
        sigma = ((vx + vy) / 2.0).max(0.16).sqrt();
    }
    // Windowed centroid (Gaussian weights of the star's own size), iterated.
    let sw = sigma.max(0.6);
    for _ in 0..10 {
        let radius = (4.0 * sw).clamp(3.0, 20.0);
        let (mut sum, mut dx, mut dy) = (0.0, 0.0, 0.0);
        let (xi0, xi1) = ((cx - radius).floor() as i64, (cx + radius).ceil() as i64);
        let (yi0, yi1) = ((cy - radius).floor() as i64, (cy + radius).ceil() as i64);
        for y in yi0..=yi1 {
            for x in xi0..=xi1 {
                let (ddx, ddy) = (x as f64 - cx, y as f64 - cy);
                let d2 = ddx * ddx + ddy * ddy;
                if d2 > radius * radius {
                    continue;
                }
                let wgt = (-d2 / (2.0 * sw * sw)).exp() * get(x, y);
                sum += wgt;
                dx += wgt * ddx;
                dy += wgt * ddy;
            }
        }
        if sum <= 0.0 {
            return None;
        }
        let (stepx, stepy) = (2.0 * dx / sum, 2.0 * dy / sum);
        cx += stepx;
        cy += stepy;
        if (cx - x0).abs() > 3.0 || (cy - y0).abs() > 3.0 {
            return None;
        }
        if stepx.abs() < 1e-4 && stepy.abs() < 1e-4 {
            break;
        }
    }
    // Size and shape from second moments about the final centre.
    let radius = (3.0 * sigma).clamp(3.0, 15.0);
    let (m, _, _, sxx, syy, sxy) = moments_about(&get, cx, cy, radius);
    if m <= 0.0 {
        return None;
    }
    let (vxx, vyy, vxy) = (sxx / m, syy / m, sxy / m);
    let tr = vxx + vyy;
    let det_term = ((vxx - vyy).powi(2) / 4.0 + vxy * vxy).sqrt();
    let (l1, l2) = (tr / 2.0 + det_term, (tr / 2.0 - det_term).max(1e-6));
    // A Gaussian's second moment inside a 3σ aperture is 0.94·σ²; correct for it.
    let sigma2 = (tr / 2.0) / 0.94;
    let fwhm = 2.354_82 * sigma2.max(0.0).sqrt();
    Some(Star {
        x: cx,
        y: cy,
        flux: m,
        peak,
        fwhm,
        roundness: (l2 / l1).sqrt(),
    })
}

type Moments = (f64, f64, f64, f64, f64, f64);

/// Positive-flux moments (Σv, Σvx, Σvy, Σvx², Σvy², Σvxy) within `radius` of (cx, cy).
fn moments(get: &impl Fn(i64, i64) -> f64, cx: f64, cy: f64, radius: f64) -> Moments {
    let mut m = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (xi0, xi1) = ((cx - radius).floor() as i64, (cx + radius).ceil() as i64);
    let (yi0, yi1) = ((cy - radius).floor() as i64, (cy + radius).ceil() as i64);
    for y in yi0..=yi1 {
        for x in xi0..=xi1 {
            let (fx, fy) = (x as f64, y as f64);
            if (fx - cx).powi(2) + (fy - cy).powi(2) > radius * radius {
                continue;
            }
            let v = get(x, y).max(0.0);
            m.0 += v;
            m.1 += v * fx;
            m.2 += v * fy;
            m.3 += v * fx * fx;
            m.4 += v * fy * fy;
            m.5 += v * fx * fy;
        }
    }
    m
}

/// Like [`moments`], with second moments about (cx, cy).
fn moments_about(get: &impl Fn(i64, i64) -> f64, cx: f64, cy: f64, radius: f64) -> Moments {
    let mut m = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (xi0, xi1) = ((cx - radius).floor() as i64, (cx + radius).ceil() as i64);
    let (yi0, yi1) = ((cy - radius).floor() as i64, (cy + radius).ceil() as i64);
    for y in yi0..=yi1 {
        for x in xi0..=xi1 {
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            if dx * dx + dy * dy > radius * radius {
                continue;
            }
            let v = get(x, y).max(0.0);
            m.0 += v;
            m.3 += v * dx * dx;
            m.4 += v * dy * dy;
            m.5 += v * dx * dy;
        }
    }
    m
}

/// Maps stars measured on a [`Luminance`] image to frame coordinates (FWHM too).
pub fn to_frame(stars: &mut [Star], lum: &Luminance) {
    for s in stars {
        s.x = lum.scale * s.x + lum.offset;
        s.y = lum.scale * s.y + lum.offset;
        s.fwhm *= lum.scale;
    }
}

/// The median FWHM of the 30 brightest stars of a list sorted by flux (faint stars' moments
/// are inflated by noise). NaN when empty.
pub fn median_fwhm(stars: &[Star]) -> f64 {
    let n = stars.len().min(30);
    let mut v: Vec<f32> = stars[..n].iter().map(|s| s.fwhm as f32).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    f64::from(median_in_place(&mut v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mono_star_frame;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn finds_stars_with_subpixel_positions() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let truth: Vec<(f64, f64, f64)> = (0..40)
            .map(|_| {
                (
                    rng.random_range(20.0..380.0),
                    rng.random_range(20.0..280.0),
                    rng.random_range(3000.0..30000.0),
                )
            })
            .collect();
        let mut img = mono_star_frame((300, 400), &truth, 3.0, 100.0, 5.0, 1);
        // Hot pixels must not be taken for stars.
        for (y, x) in [(50, 50), (150, 333), (222, 17)] {
            img[(y, x)] = 5000.0;
        }
        let stars = detect(img.view(), &DetectParams::default());
        let mut errors = Vec::new();
        for t in &truth {
            let nearest = stars
                .iter()
                .map(|s| (s.x - t.0).hypot(s.y - t.1))
                .fold(f64::INFINITY, f64::min);
            if nearest < 1.5 {
                errors.push(nearest);
            }
        }
        // Close pairs may merge; nearly all are found, and positioned to < 0.1 px.
        assert!(errors.len() >= 36, "found {} of 40", errors.len());
        let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        assert!(rms < 0.1, "rms {rms}");
        for (y, x) in [(50.0, 50.0), (150.0, 333.0), (222.0, 17.0)] {
            assert!(
                stars.iter().all(|s| (s.x - x).hypot(s.y - y) > 1.0),
                "hot pixel at {x},{y}"
            );
        }
        let fwhm = median_fwhm(&stars);
        assert!((fwhm - 3.0).abs() < 0.3, "fwhm {fwhm}");
        assert!(stars.windows(2).all(|p| p[0].flux >= p[1].flux));
    }
}
