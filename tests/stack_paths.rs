//! The streaming sum of unsigned 16-bit frames (mean and sum with nothing to apply first) gives
//! exactly what the general band path gives for the same values stored as float32.

use std::path::PathBuf;

mod common;

use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use astroworker::fits::{FitsReader, Header, OutputType, write_image};
use astroworker::science::stack::Method;

fn write_frames(dir: &std::path::Path, kind: OutputType, tag: &str) -> Vec<PathBuf> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..9)
        .map(|i| {
            // Full range, extremes included; 67 × 101 so that bands and chunks are ragged.
            let frame = Array3::from_shape_fn((1, 101, 67), |(_, y, x)| match (x + y + i) % 97 {
                0 => 0.0,
                1 => 65535.0,
                _ => f32::from(rng.random::<u16>()),
            });
            let path = dir.join(format!("{tag}_{i}.fits"));
            write_image(&path, frame.view(), kind, &Header::new()).unwrap();
            path
        })
        .collect()
}

#[test]
fn u16_sum_path_equals_the_band_path() {
    let dir = tempfile::tempdir().unwrap();
    let u16_frames = write_frames(dir.path(), OutputType::UInt16, "u16");
    let f32_frames = write_frames(dir.path(), OutputType::Float32, "f32");
    assert!(FitsReader::open(&u16_frames[0]).unwrap().stores_u16());
    assert!(!FitsReader::open(&f32_frames[0]).unwrap().stores_u16());
    for method in [Method::Mean, Method::Sum] {
        let name = method.name();
        let direct = common::plain_stack(
            &u16_frames,
            &dir.path().join(format!("{name}_u16.fits")),
            method,
            64 << 10,
        );
        let band = common::plain_stack(
            &f32_frames,
            &dir.path().join(format!("{name}_f32.fits")),
            method,
            64 << 10,
        );
        assert_eq!(direct, band, "{name}");
        assert!(direct.iter().any(|&v| v > 30000.0), "{name}: real sums");
    }
}
