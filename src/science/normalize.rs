//! Normalisation of frames before stacking: `x' = x · factor + offset` per channel, from each
//! frame's location/scale estimate (`L`, `S`, from [`super::stats::estimate`]) and the reference
//! frame's (`L_ref`, `S_ref`).
//!
//! | method                | x'                                    | factor              | offset              |
//! |-----------------------|---------------------------------------|---------------------|---------------------|
//! | `None`                | x                                     | 1                   | 0                   |
//! | `Additive`            | x + (L_ref − L)                       | 1                   | L_ref − L           |
//! | `Multiplicative`      | x · L_ref / L                         | L_ref / L           | 0                   |
//! | `AdditiveScale`       | (x − L) · S_ref / S + L_ref           | S_ref / S           | L_ref − L · S_ref/S |
//! | `MultiplicativeScale` | x · (L_ref / L) · (S_ref / S)         | (L_ref/L)·(S_ref/S) | 0                   |
//!
//! These are Siril's (github.com/free-astro/siril): `compute_factors_from_estimators` in
//! `src/stacking/normalization.c` computes `pscale = S_ref / S`, `pmul = L_ref / L` and
//! `poffset = pscale · L − L_ref`, and `src/stacking/median_and_mean.c` applies
//! `x · pscale − poffset` for the additive methods and `x · pscale · pmul` for the
//! multiplicative ones. So Siril's multiplicative-with-scaling is a pure gain, the product of
//! the two ratios; it is reproduced as is. Beware: for frames differing only by a gain g
//! (L = g·L_ref, S = g·S_ref) it applies 1/g², not 1/g: use `Multiplicative` for such data.
//!
//! Guards (Siril falls back to a ratio of 1 when a frame's estimate is 0; this extends that to
//! non-finite values and to the reference):
//!
//! * a scale ratio S_ref/S is replaced by 1 (no scaling) unless both scales are finite and
//!   > 0 (e.g. IKSS returns scale 0 on a flat frame);
//! * the additive methods return the identity when a location is not finite (an empty frame);
//! * the multiplicative methods return the identity when a location is not finite or is 0 (a
//!   zero reference would flatten the frame, a zero frame location would divide by zero).
//!
//! Coefficients are computed in `f64` and rounded to `f32`.

use super::stats::Estimate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalization {
    None,
    Additive,
    Multiplicative,
    #[default]
    AdditiveScale,
    MultiplicativeScale,
}

impl Normalization {
    /// Parses "none", "additive", "multiplicative", "additive_scale",
    /// "multiplicative_scale" (case-insensitive; `-` may replace `_`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "none" => Some(Self::None),
            "additive" => Some(Self::Additive),
            "multiplicative" => Some(Self::Multiplicative),
            "additive_scale" => Some(Self::AdditiveScale),
            "multiplicative_scale" => Some(Self::MultiplicativeScale),
            _ => None,
        }
    }

    /// The canonical name, as accepted by [`Normalization::parse`].
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Additive => "additive",
            Self::Multiplicative => "multiplicative",
            Self::AdditiveScale => "additive_scale",
            Self::MultiplicativeScale => "multiplicative_scale",
        }
    }
}

/// `x' = x · factor + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    pub factor: f32,
    pub offset: f32,
}

impl Coefficients {
    pub const IDENTITY: Self = Self {
        factor: 1.0,
        offset: 0.0,
    };

    /// Normalises `data` in place (NaN stays NaN), computing `x · factor + offset` in `f64`.
    pub fn apply(&self, data: &mut [f32]) {
        let (factor, offset) = (f64::from(self.factor), f64::from(self.offset));
        for x in data {
            *x = (f64::from(*x) * factor + offset) as f32;
        }
    }
}

/// The coefficients mapping `frame` onto `reference` (see the module docs for the formulas and
/// the fallbacks).
pub fn coefficients(method: Normalization, frame: Estimate, reference: Estimate) -> Coefficients {
    let (l, l_ref) = (frame.location, reference.location);
    let scale_ratio = if usable_scale(frame.scale) && usable_scale(reference.scale) {
        reference.scale / frame.scale
    } else {
        1.0
    };
    let additive_ok = l.is_finite() && l_ref.is_finite();
    let multiplicative_ok = additive_ok && l != 0.0 && l_ref != 0.0;
    let (factor, offset) = match method {
        Normalization::Additive if additive_ok => (1.0, l_ref - l),
        Normalization::AdditiveScale if additive_ok => (scale_ratio, l_ref - l * scale_ratio),
        Normalization::Multiplicative if multiplicative_ok => (l_ref / l, 0.0),
        Normalization::MultiplicativeScale if multiplicative_ok => (l_ref / l * scale_ratio, 0.0),
        _ => return Coefficients::IDENTITY,
    };
    Coefficients {
        factor: factor as f32,
        offset: offset as f32,
    }
}

fn usable_scale(s: f64) -> bool {
    s.is_finite() && s > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Estimate = Estimate {
        location: 100.0,
        scale: 10.0,
    };
    const REFERENCE: Estimate = Estimate {
        location: 200.0,
        scale: 5.0,
    };

    fn coeffs(method: Normalization) -> (f32, f32) {
        let c = coefficients(method, FRAME, REFERENCE);
        (c.factor, c.offset)
    }

    #[test]
    fn parse_names() {
        assert_eq!(Normalization::parse("none"), Some(Normalization::None));
        assert_eq!(
            Normalization::parse("Additive"),
            Some(Normalization::Additive)
        );
        assert_eq!(
            Normalization::parse("multiplicative"),
            Some(Normalization::Multiplicative)
        );
        assert_eq!(
            Normalization::parse("additive-scale"),
            Some(Normalization::AdditiveScale)
        );
        assert_eq!(
            Normalization::parse("multiplicative_scale"),
            Some(Normalization::MultiplicativeScale)
        );
        assert_eq!(Normalization::parse("addscale"), None);
        for m in [Normalization::Additive, Normalization::MultiplicativeScale] {
            assert_eq!(Normalization::parse(m.name()), Some(m));
        }
    }

    #[test]
    fn formulas() {
        assert_eq!(coeffs(Normalization::None), (1.0, 0.0));
        assert_eq!(coeffs(Normalization::Additive), (1.0, 100.0));
        assert_eq!(coeffs(Normalization::Multiplicative), (2.0, 0.0));
        // (x − 100) · 0.5 + 200: the frame's location maps to the reference's.
        assert_eq!(coeffs(Normalization::AdditiveScale), (0.5, 150.0));
        assert_eq!(coeffs(Normalization::MultiplicativeScale), (1.0, 0.0));
    }

    #[test]
    fn apply_maps_location_and_keeps_nan() {
        let c = coefficients(Normalization::AdditiveScale, FRAME, REFERENCE);
        let mut data = [100.0, 110.0, f32::NAN];
        c.apply(&mut data);
        assert_eq!(&data[..2], &[200.0, 205.0]);
        assert!(data[2].is_nan());
    }

    #[test]
    fn degenerate_estimates_fall_back() {
        let flat = Estimate {
            location: 100.0,
            scale: 0.0,
        };
        let empty = Estimate {
            location: f64::NAN,
            scale: f64::NAN,
        };
        let zero = Estimate {
            location: 0.0,
            scale: 1.0,
        };
        // A zero scale disables only the scaling.
        let c = coefficients(Normalization::AdditiveScale, flat, REFERENCE);
        assert_eq!((c.factor, c.offset), (1.0, 100.0));
        let c = coefficients(Normalization::MultiplicativeScale, flat, REFERENCE);
        assert_eq!((c.factor, c.offset), (2.0, 0.0));
        for m in [
            Normalization::Additive,
            Normalization::AdditiveScale,
            Normalization::Multiplicative,
        ] {
            assert_eq!(coefficients(m, empty, REFERENCE), Coefficients::IDENTITY);
            assert_eq!(coefficients(m, REFERENCE, empty), Coefficients::IDENTITY);
        }
        assert_eq!(
            coefficients(Normalization::Multiplicative, zero, REFERENCE),
            Coefficients::IDENTITY
        );
        assert_eq!(
            coefficients(Normalization::MultiplicativeScale, REFERENCE, zero),
            Coefficients::IDENTITY
        );
        // Additive methods work with a zero location.
        assert_eq!(
            coefficients(Normalization::Additive, zero, REFERENCE).offset,
            200.0
        );
    }
}
