//! Matching a frame's stars to a reference's: triangle asterisms (the invariants of astroalign:
//! ratios of sorted side lengths) for candidate correspondences, RANSAC-style voting over all
//! stars, then least-squares fits of the chosen model on the inliers.
//!
//! Transforms are 3×3 matrices mapping **frame** pixel coordinates to **reference** ones
//! (x = column, y = row); [`super::warp`] takes the inverse (output → source).

use super::stars::Star;
use super::warp::Transform;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Model {
    Shift,
    #[default]
    Similarity,
    Affine,
    Homography,
}

impl Model {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "shift" | "translation" => Some(Self::Shift),
            "similarity" => Some(Self::Similarity),
            "affine" => Some(Self::Affine),
            "homography" | "projective" => Some(Self::Homography),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Shift => "shift",
            Self::Similarity => "similarity",
            Self::Affine => "affine",
            Self::Homography => "homography",
        }
    }

    fn min_points(&self) -> usize {
        match self {
            Self::Shift => 1,
            Self::Similarity => 2,
            Self::Affine => 3,
            Self::Homography => 4,
        }
    }
}

/// A frame matched to the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Alignment {
    pub transform: Transform,
    /// Star pairs used in the final fit.
    pub matched: usize,
    /// RMS distance of those pairs after the fit, in pixels.
    pub rms_px: f64,
}

/// How many of the brightest stars form triangles.
const TRIANGLE_STARS: usize = 40;
/// Neighbours per star that triangles are built with.
const NEIGHBOURS: usize = 5;
/// Distance in invariant space under which two triangles are candidates.
const INVARIANT_TOLERANCE: f64 = 0.01;
/// How many of the brightest stars vote for a candidate transform.
const VOTING_STARS: usize = 60;
/// Fewest inlier pairs that make a match.
pub const MIN_MATCHES: usize = 6;

pub fn apply(t: &Transform, x: f64, y: f64) -> (f64, f64) {
    let w = t[2][0] * x + t[2][1] * y + t[2][2];
    (
        (t[0][0] * x + t[0][1] * y + t[0][2]) / w,
        (t[1][0] * x + t[1][1] * y + t[1][2]) / w,
    )
}

/// How far apart two transforms put the pixels of an `(h, w)` frame: the RMS distance of their
/// images of a grid of points every `step` pixels.
pub fn distance(a: &Transform, b: &Transform, (h, w): (usize, usize), step: usize) -> f64 {
    let (mut sq, mut n) = (0.0, 0.0);
    for y in (0..h).step_by(step.max(1)) {
        for x in (0..w).step_by(step.max(1)) {
            let (pa, pb) = (apply(a, x as f64, y as f64), apply(b, x as f64, y as f64));
            sq += (pa.0 - pb.0).powi(2) + (pa.1 - pb.1).powi(2);
            n += 1.0;
        }
    }
    (sq / n).sqrt()
}

/// The inverse of a 3×3 matrix (None when singular).
pub fn invert(m: &Transform) -> Option<Transform> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let c =
        |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let inv = [
        [c(1, 1, 2, 2), -c(0, 1, 2, 2), c(0, 1, 1, 2)],
        [-c(1, 0, 2, 2), c(0, 0, 2, 2), -c(0, 0, 1, 2)],
        [c(1, 0, 2, 1), -c(0, 0, 2, 1), c(0, 0, 1, 1)],
    ];
    Some(inv.map(|row| row.map(|v| v / det)))
}

/// A triangle of star indices with its invariants, vertices ordered canonically (opposite the
/// shortest, middle, longest side).
struct Triangle {
    vertices: [usize; 3],
    invariants: [f64; 2],
}

fn triangles(stars: &[Star]) -> Vec<Triangle> {
    let n = stars.len().min(TRIANGLE_STARS);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for i in 0..n {
        let mut near: Vec<(f64, usize)> = (0..n)
            .filter(|&j| j != i)
            .map(|j| ((stars[i].x - stars[j].x).hypot(stars[i].y - stars[j].y), j))
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        let near: Vec<usize> = near.iter().take(NEIGHBOURS).map(|p| p.1).collect();
        for a in 0..near.len() {
            for b in a + 1..near.len() {
                let mut key = [i, near[a], near[b]];
                key.sort_unstable();
                if seen.insert(key)
                    && let Some(t) = triangle(stars, key)
                {
                    out.push(t);
                }
            }
        }
    }
    out
}

fn triangle(stars: &[Star], v: [usize; 3]) -> Option<Triangle> {
    let d = |a: usize, b: usize| (stars[a].x - stars[b].x).hypot(stars[a].y - stars[b].y);
    // Side opposite each vertex.
    let mut sides = [
        (d(v[1], v[2]), v[0]),
        (d(v[0], v[2]), v[1]),
        (d(v[0], v[1]), v[2]),
    ];
    sides.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (s0, s1, s2) = (sides[0].0, sides[1].0, sides[2].0);
    if s0 < 3.0 {
        return None;
    }
    Some(Triangle {
        vertices: [sides[0].1, sides[1].1, sides[2].1],
        invariants: [s2 / s1, s1 / s0],
    })
}

/// Matches `frame` stars (brightest first) to `reference` stars with `model`.
pub fn align(frame: &[Star], reference: &[Star], model: Model) -> Option<Alignment> {
    let (ft, rt) = (triangles(frame), triangles(reference));
    let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
    for (i, a) in ft.iter().enumerate() {
        for (j, b) in rt.iter().enumerate() {
            let d = (a.invariants[0] - b.invariants[0]).hypot(a.invariants[1] - b.invariants[1]);
            if d < INVARIANT_TOLERANCE {
                candidates.push((d, i, j));
            }
        }
    }
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best: Option<(usize, Transform)> = None;
    for &(_, i, j) in candidates.iter().take(300) {
        let pairs: Vec<(usize, usize)> = (0..3)
            .map(|k| (ft[i].vertices[k], rt[j].vertices[k]))
            .collect();
        let Some(t) = fit(frame, reference, &pairs, Model::Similarity) else {
            continue;
        };
        // A similarity from a triangle: keep it only for a plausible scale.
        let scale = (t[0][0] * t[1][1] - t[0][1] * t[1][0]).abs().sqrt();
        if !(0.8..1.25).contains(&scale) {
            continue;
        }
        // Votes are counted on the brightest stars only; the refinement below uses all.
        let votes = pair_up(
            &frame[..frame.len().min(VOTING_STARS)],
            &reference[..reference.len().min(VOTING_STARS)],
            &t,
            3.0,
        )
        .len();
        if best.as_ref().is_none_or(|b| votes > b.0) {
            best = Some((votes, t));
        }
    }
    let (votes, t) = best?;
    if votes < MIN_MATCHES.min(frame.len().min(VOTING_STARS)) {
        return None;
    }
    let mut pairs = pair_up(frame, reference, &t, 3.0);
    if pairs.len() < MIN_MATCHES {
        return None;
    }
    let mut t;
    for tolerance in [2.0, 1.5, 1.5] {
        if pairs.len() < model.min_points().max(MIN_MATCHES) {
            return None;
        }
        t = fit(frame, reference, &pairs, model)?;
        pairs = pair_up(frame, reference, &t, tolerance);
    }
    if pairs.len() < MIN_MATCHES {
        return None;
    }
    t = fit(frame, reference, &pairs, model)?;
    let sq: f64 = pairs
        .iter()
        .map(|&(f, r)| {
            let (x, y) = apply(&t, frame[f].x, frame[f].y);
            (x - reference[r].x).powi(2) + (y - reference[r].y).powi(2)
        })
        .sum();
    Some(Alignment {
        transform: t,
        matched: pairs.len(),
        rms_px: (sq / pairs.len() as f64).sqrt(),
    })
}

/// Mutual nearest neighbours within `tolerance` px after mapping the frame stars by `t`.
fn pair_up(
    frame: &[Star],
    reference: &[Star],
    t: &Transform,
    tolerance: f64,
) -> Vec<(usize, usize)> {
    let mapped: Vec<(f64, f64)> = frame.iter().map(|s| apply(t, s.x, s.y)).collect();
    // Squared distances: no square roots in the O(N²) search.
    let nearest = |p: (f64, f64), set: &mut dyn Iterator<Item = (usize, (f64, f64))>| {
        set.map(|(i, q)| ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2), i))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    let refs: Vec<(f64, f64)> = reference.iter().map(|s| (s.x, s.y)).collect();
    let mut pairs = Vec::new();
    for (f, &p) in mapped.iter().enumerate() {
        let Some((d, r)) = nearest(p, &mut refs.iter().copied().enumerate()) else {
            continue;
        };
        if d > tolerance * tolerance {
            continue;
        }
        let back = nearest(refs[r], &mut mapped.iter().copied().enumerate());
        if back.is_some_and(|(_, fb)| fb == f) {
            pairs.push((f, r));
        }
    }
    pairs
}

/// Least-squares fit of `model` mapping frame stars to reference stars.
fn fit(
    frame: &[Star],
    reference: &[Star],
    pairs: &[(usize, usize)],
    model: Model,
) -> Option<Transform> {
    let n = pairs.len() as f64;
    if pairs.len() < model.min_points() {
        return None;
    }
    let src: Vec<(f64, f64)> = pairs
        .iter()
        .map(|&(f, _)| (frame[f].x, frame[f].y))
        .collect();
    let dst: Vec<(f64, f64)> = pairs
        .iter()
        .map(|&(_, r)| (reference[r].x, reference[r].y))
        .collect();
    let mean = |v: &[(f64, f64)]| {
        let (sx, sy) = v.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
        (sx / n, sy / n)
    };
    let (ms, md) = (mean(&src), mean(&dst));
    match model {
        Model::Shift => Some([
            [1.0, 0.0, md.0 - ms.0],
            [0.0, 1.0, md.1 - ms.1],
            [0.0, 0.0, 1.0],
        ]),
        Model::Similarity => {
            let (mut sxx, mut sab, mut sba) = (0.0, 0.0, 0.0);
            for (s, d) in src.iter().zip(&dst) {
                let (xs, ys) = (s.0 - ms.0, s.1 - ms.1);
                let (xd, yd) = (d.0 - md.0, d.1 - md.1);
                sxx += xs * xs + ys * ys;
                sab += xs * xd + ys * yd;
                sba += xs * yd - ys * xd;
            }
            if sxx <= 0.0 {
                return None;
            }
            let (a, b) = (sab / sxx, sba / sxx);
            let tx = md.0 - (a * ms.0 - b * ms.1);
            let ty = md.1 - (b * ms.0 + a * ms.1);
            Some([[a, -b, tx], [b, a, ty], [0.0, 0.0, 1.0]])
        }
        Model::Affine => {
            // Two 3-parameter least squares on centred coordinates.
            let rows: Vec<Vec<f64>> = src.iter().map(|s| vec![s.0 - ms.0, s.1 - ms.1]).collect();
            let bx: Vec<f64> = dst.iter().map(|d| d.0 - md.0).collect();
            let by: Vec<f64> = dst.iter().map(|d| d.1 - md.1).collect();
            let px = least_squares(&rows, &bx)?;
            let py = least_squares(&rows, &by)?;
            let tx = md.0 - (px[0] * ms.0 + px[1] * ms.1);
            let ty = md.1 - (py[0] * ms.0 + py[1] * ms.1);
            Some([[px[0], px[1], tx], [py[0], py[1], ty], [0.0, 0.0, 1.0]])
        }
        Model::Homography => {
            // DLT with h33 = 1, on coordinates normalised around the means.
            let scale_of = |v: &[(f64, f64)], m: (f64, f64)| {
                let d = v.iter().map(|p| (p.0 - m.0).hypot(p.1 - m.1)).sum::<f64>() / n;
                if d > 0.0 {
                    std::f64::consts::SQRT_2 / d
                } else {
                    1.0
                }
            };
            let (ks, kd) = (scale_of(&src, ms), scale_of(&dst, md));
            let mut rows = Vec::new();
            let mut b = Vec::new();
            for (s, d) in src.iter().zip(&dst) {
                let (x, y) = ((s.0 - ms.0) * ks, (s.1 - ms.1) * ks);
                let (u, v) = ((d.0 - md.0) * kd, (d.1 - md.1) * kd);
                rows.push(vec![x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y]);
                b.push(u);
                rows.push(vec![0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y]);
                b.push(v);
            }
            let h = least_squares(&rows, &b)?;
            let hn = [[h[0], h[1], h[2]], [h[3], h[4], h[5]], [h[6], h[7], 1.0]];
            let ts = [
                [ks, 0.0, -ks * ms.0],
                [0.0, ks, -ks * ms.1],
                [0.0, 0.0, 1.0],
            ];
            let td_inv = [
                [1.0 / kd, 0.0, md.0],
                [0.0, 1.0 / kd, md.1],
                [0.0, 0.0, 1.0],
            ];
            let m = matmul(&td_inv, &matmul(&hn, &ts));
            let s = m[2][2];
            Some(m.map(|row| row.map(|v| v / s)))
        }
    }
}

pub fn matmul(a: &Transform, b: &Transform) -> Transform {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// Solves min |A·p − b|² through the normal equations (Gaussian elimination, partial pivot).
fn least_squares(rows: &[Vec<f64>], b: &[f64]) -> Option<Vec<f64>> {
    let k = rows.first()?.len();
    let mut m = vec![vec![0.0; k + 1]; k];
    for (row, &bi) in rows.iter().zip(b) {
        for i in 0..k {
            for j in 0..k {
                m[i][j] += row[i] * row[j];
            }
            m[i][k] += row[i] * bi;
        }
    }
    for c in 0..k {
        let p = (c..k).max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))?;
        if m[p][c].abs() < 1e-12 {
            return None;
        }
        m.swap(c, p);
        let pivot = m[c].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (v, pv) in row[c..].iter_mut().zip(&pivot[c..]) {
                    *v -= f * pv;
                }
            }
        }
    }
    Some((0..k).map(|i| m[i][k] / m[i][i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{mono_star_frame as render, stars_in_frame};
    use crate::science::stars::{DetectParams, detect};
    use crate::science::warp::similarity;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn grid_rms(a: &Transform, b: &Transform, (h, w): (usize, usize)) -> f64 {
        distance(a, b, (h, w), 20)
    }

    #[test]
    fn recovers_known_similarity_transforms() {
        let (h, w) = (400, 600);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // Reference sky: 45 stars spread wider than the frame, so shifted frames still see many.
        let sky: Vec<(f64, f64, f64)> = (0..45)
            .map(|_| {
                (
                    rng.random_range(-40.0..640.0),
                    rng.random_range(-40.0..440.0),
                    rng.random_range(4000.0..40000.0),
                )
            })
            .collect();
        let reference_img = render((h, w), &sky, 3.2, 200.0, 6.0, 1);
        let reference = detect(reference_img.view(), &DetectParams::default());
        for (k, &(dx, dy, deg, scale)) in [
            (55.0f64, -38.0f64, 2.5f64, 1.0f64),
            (-60.0, 12.5, -3.0, 1.01),
            (3.3, 0.7, 0.2, 0.995),
        ]
        .iter()
        .enumerate()
        {
            // truth: frame → reference.
            let truth = similarity(
                dx,
                dy,
                deg.to_radians(),
                scale,
                (w as f64 / 2.0, h as f64 / 2.0),
            );
            let stars = stars_in_frame(&sky, &truth).unwrap();
            let img = render((h, w), &stars, 3.2, 200.0, 6.0, 10 + k as u64);
            let found = detect(img.view(), &DetectParams::default());
            for model in [Model::Similarity, Model::Affine] {
                let a = align(&found, &reference, model).expect("matched");
                let err = grid_rms(&a.transform, &truth, (h, w));
                assert!(err < 0.05, "case {k} {model:?}: transform error {err} px");
                assert!(a.matched >= 15 && a.rms_px < 0.15, "{a:?}");
            }
        }
    }

    #[test]
    fn fits_are_exact_on_exact_points() {
        let t: Transform = [[1.01, 0.02, 5.0], [-0.015, 0.99, -3.0], [1e-5, -2e-5, 1.0]];
        let stars: Vec<Star> = (0..12)
            .map(|i| Star {
                x: 37.0 * i as f64 % 500.0,
                y: 53.0 * (i * i) as f64 % 400.0,
                flux: 1.0,
                peak: 1.0,
                fwhm: 3.0,
                roundness: 1.0,
            })
            .collect();
        let mapped: Vec<Star> = stars
            .iter()
            .map(|s| {
                let (x, y) = apply(&t, s.x, s.y);
                Star { x, y, ..*s }
            })
            .collect();
        let pairs: Vec<(usize, usize)> = (0..12).map(|i| (i, i)).collect();
        let h = fit(&stars, &mapped, &pairs, Model::Homography).unwrap();
        assert!(grid_rms(&h, &t, (400, 500)) < 1e-6);
        let inv = invert(&t).unwrap();
        let id = matmul(&t, &inv);
        assert!((id[0][0] - 1.0).abs() < 1e-12 && id[0][1].abs() < 1e-12);
        assert_eq!(Model::parse("Affine"), Some(Model::Affine));
    }
}
