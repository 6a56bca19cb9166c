//! The science kernels on the CPU: pure functions on arrays, rayon-parallel. They are the CPU
//! backend of `compute` and the oracle every GPU kernel is tested against.
//!
//! Arrays follow the FITS layer's conventions (`crate::fits`): `(channels, height, width)`,
//! row 0 = first row stored in the file, NaN = missing.

pub mod align;
pub mod calibrate;
pub mod cfa;
pub mod normalize;
pub mod preview;
pub mod stack;
pub mod stars;
pub mod stats;
pub mod stretch;
pub mod warp;
