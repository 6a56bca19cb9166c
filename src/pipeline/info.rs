//! `fits.info`: what a FITS image is, with its header and pixel statistics.

use std::path::Path;

use serde_json::{Value, json};

use super::Result;
use super::frames::bayer_pattern;
use crate::fits::FitsReader;
use crate::science::stats::image_stats;

/// `{"path", "hdu", "shape", "bitpix", "bayer", "header", "stats"}`; `shape` in FITS axis
/// order `[NAXIS1, NAXIS2(, NAXIS3)]`.
pub fn info(path: &Path) -> Result<Value> {
    let mut reader = FitsReader::open(path)?;
    let data = reader.read_all()?;
    let info = reader.info();
    let stats = match data.as_slice() {
        Some(s) => image_stats(s),
        None => image_stats(&data.iter().copied().collect::<Vec<_>>()),
    };
    Ok(json!({
        "path": path.display().to_string(),
        "hdu": info.hdu,
        "shape": info.shape,
        "bitpix": info.bitpix,
        "bayer": bayer_pattern(info).map(|p| p.name()),
        "header": Value::Object(info.header.to_json()),
        // NaN statistics (an all-NaN image) serialize as null.
        "stats": serde_json::to_value(stats).expect("serializable"),
    }))
}
