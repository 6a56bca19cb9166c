//! Stacking real Seestar S50 subs (`../shared/data/seestar/M94`, skipped when absent): the
//! background noise of a mean stack of N subs falls as 1/√N.
//!
//! The subs are stacked as they are (no registration: the drift moves stars, but the sky
//! background noise of each sub is independent of the others). Noise is measured on the
//! green CFA pixels of the stacked mosaic from the differences of horizontally adjacent
//! greens (robust: MAD), which ignores smooth gradients and most stars.

mod common;

use ndarray::{Array2, s};

use astroworker::science::stack::Method;

/// σ of the green pixels at (even row, even column) — green in GRBG read top-down — from
/// the MAD of differences between neighbours two columns apart, divided by √2.
fn green_noise(mosaic: &Array2<f32>) -> f64 {
    let green = mosaic.slice(s![0..;2, 0..;2]);
    let mut diffs: Vec<f64> = green
        .rows()
        .into_iter()
        .flat_map(|row| {
            row.windows(2)
                .into_iter()
                .map(|w| f64::from(w[1] - w[0]))
                .collect::<Vec<_>>()
        })
        .collect();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = median(&mut diffs);
    let mut dev: Vec<f64> = diffs.iter().map(|d| (d - m).abs()).collect();
    1.4826 * median(&mut dev) / 2f64.sqrt()
}

#[test]
fn background_noise_falls_as_one_over_sqrt_n() {
    let Some(dir) = common::seestar_dir() else {
        return;
    };
    let subs = common::fits_files(&dir);
    assert!(
        subs.len() >= 6,
        "expected the 6 M 94 subs in {}",
        dir.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let single = green_noise(&common::plain_stack(
        &subs[..1],
        &tmp.path().join("n1.fits"),
        Method::Mean,
        8 << 20,
    ));
    assert!(
        single > 10.0,
        "a 10 s Seestar sub has visible noise ({single})"
    );
    for n in [2, 3, 6] {
        let stacked = green_noise(&common::plain_stack(
            &subs[..n],
            &tmp.path().join(format!("n{n}.fits")),
            Method::Mean,
            8 << 20,
        ));
        let ratio = stacked * (n as f64).sqrt() / single;
        eprintln!(
            "N = {n}: σ = {stacked:.2} ADU (σ₁/√N = {:.2}), ratio {ratio:.3}",
            single / (n as f64).sqrt()
        );
        assert!(
            (0.9..1.15).contains(&ratio),
            "noise of {n} stacked subs is {stacked:.2}, expected about {:.2}",
            single / (n as f64).sqrt()
        );
    }
}
