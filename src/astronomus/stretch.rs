//! Astronomus's display stretches, bit for bit (astronomus-compat.md §3.5, §3.6): the
//! auto-stretch of `auto_process`/`stack_and_stretch` and the `histogram_stretch` pipeline step.
//! Images are `(channels, H, W)`; outputs are display values quantised the way the Python code
//! casts them (`floor`), ready for `science::preview::write_preview`.

use ndarray::{Array3, ArrayView3, Axis};
use serde_json::{Value, json};

/// The parameters the auto-stretch detects (returned to the caller as `params`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoParams {
    pub stretch_factor: u32,
    pub black_point: f64,
    pub white_point: f64,
}

impl AutoParams {
    pub fn to_json(&self) -> Value {
        json!({
            "stretch_factor": self.stretch_factor,
            "black_point": self.black_point,
            "white_point": self.white_point,
        })
    }
}

/// numpy's `percentile(values, q)` with its default linear interpolation. Reorders `values`.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q / 100.0 * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = pos - lo as f64;
    let (_, lo_value, rest) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let lo_value = *lo_value;
    if frac == 0.0 || rest.is_empty() {
        return lo_value;
    }
    let hi_value = rest.iter().copied().fold(f64::INFINITY, f64::min);
    // numpy's `_lerp`: a + (b - a) * t, computed from the far end when t >= 0.5.
    let diff = hi_value - lo_value;
    if frac >= 0.5 {
        hi_value - diff * (1.0 - frac)
    } else {
        lo_value + diff * frac
    }
}

/// Detects the auto-stretch parameters over all channels pooled (§3.5).
pub fn detect(image: ArrayView3<f64>) -> AutoParams {
    let mut values: Vec<f64> = image.iter().copied().collect();
    let bp = percentile(&mut values, 0.5);
    let wp = percentile(&mut values, 99.95);
    let range = wp - bp + 1e-10;
    let n = values.len() as f64;
    let normalised = |v: &f64| ((v - bp) / range).clamp(0.0, 1.0);
    // numpy's two passes: the mean, then the mean squared deviation.
    let mean = image.iter().map(normalised).sum::<f64>() / n;
    let var = image
        .iter()
        .map(|v| (normalised(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    let cv = std / (mean + 1e-10);
    let stretch_factor = if cv > 0.5 {
        20
    } else if cv > 0.3 {
        10
    } else {
        5
    };
    AutoParams {
        stretch_factor,
        black_point: bp,
        white_point: wp,
    }
}

/// `asinh(a·n) / asinh(a)` with n the clipped normalised value, quantised to `levels`
/// (255 or 65535) by truncation and returned as display values in [0, 1].
pub fn apply_auto(image: ArrayView3<f64>, p: AutoParams, levels: f64) -> Array3<f32> {
    let range = p.white_point - p.black_point + 1e-10;
    let a = f64::from(p.stretch_factor);
    let norm = a.asinh();
    image.mapv(|v| {
        let n = ((v - p.black_point) / range).clamp(0.0, 1.0);
        let y = (a * n).asinh() / norm;
        ((levels * y).floor() / levels) as f32
    })
}

/// The `histogram_stretch` step (§3.6), per channel: 0.1/99.9th percentiles, no epsilon (a
/// constant channel maps to 0 instead of NaN — Astronomus bug 8), then the midtones transfer
/// function when `midtones` ≠ 0.5 for the `auto`/`midtone` algorithms.
pub fn histogram_stretch(image: &mut Array3<f64>, algorithm: &str, midtones: f64) {
    for mut channel in image.axis_iter_mut(Axis(0)) {
        let mut values: Vec<f64> = channel.iter().copied().collect();
        let vmin = percentile(&mut values, 0.1);
        let vmax = percentile(&mut values, 99.9);
        let range = vmax - vmin;
        let mtf = matches!(algorithm, "auto" | "midtone") && midtones != 0.5;
        channel.mapv_inplace(|v| {
            let n = if range > 0.0 {
                ((v - vmin) / range).clamp(0.0, 1.0)
            } else {
                0.0
            };
            if mtf {
                let m = midtones;
                ((m - 1.0) * n / ((2.0 * m - 1.0) * n - m + 1e-10)).clamp(0.0, 1.0)
            } else {
                n
            }
        });
    }
}

/// Quantises display values as `floor(levels · v)` (Astronomus casts, it does not round).
pub fn quantize_floor(image: &Array3<f64>, levels: f64) -> Array3<f32> {
    image.mapv(|v| ((levels * v.clamp(0.0, 1.0)).floor() / levels) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy() {
        // np.percentile(np.arange(1, 11), [0.5, 99.95, 50]) → 1.045, 9.9955, 5.5
        let mut v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((percentile(&mut v, 0.5) - 1.045).abs() < 1e-12);
        assert!((percentile(&mut v, 99.95) - 9.9955).abs() < 1e-12);
        assert!((percentile(&mut v, 50.0) - 5.5).abs() < 1e-12);
        assert_eq!(percentile(&mut [3.0], 99.0), 3.0);
    }

    #[test]
    fn factor_follows_the_coefficient_of_variation() {
        // Mostly dark sky with a few bright pixels: a high cv, the strongest stretch.
        let mut img = Array3::<f64>::from_elem((3, 40, 50), 100.0);
        for i in 0..40 {
            img[[i % 3, i, i]] = 5000.0;
        }
        img[[0, 0, 0]] = 90.0;
        let p = detect(img.view());
        assert_eq!(p.stretch_factor, 20);
        let out = apply_auto(img.view(), p, 255.0);
        assert!(out.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert_eq!(out[[0, 0, 0]], 0.0);
        // A uniform ramp has cv ≈ 0.58 → 20; a narrow bright band cv < 0.3 → 5.
        let flat = Array3::<f64>::from_shape_fn((3, 10, 10), |(_, y, x)| {
            1000.0 + (y * 10 + x) as f64 * 0.01 + 50.0
        });
        let p = detect(flat.view());
        assert!([5, 10, 20].contains(&p.stretch_factor));
    }

    #[test]
    fn histogram_stretch_is_safe_on_constant_channels() {
        let mut img = Array3::<f64>::from_elem((1, 4, 4), 7.0);
        histogram_stretch(&mut img, "auto", 0.25);
        assert!(img.iter().all(|v| *v == 0.0));
        let mut ramp = Array3::<f64>::from_shape_fn((1, 1, 1001), |(_, _, x)| x as f64);
        histogram_stretch(&mut ramp, "linear", 0.5);
        assert_eq!(ramp[[0, 0, 0]], 0.0);
        assert_eq!(ramp[[0, 0, 1000]], 1.0);
        assert!((ramp[[0, 0, 500]] - 0.5).abs() < 1e-3);
    }
}
