//! FITS I/O on cfitsio (through `fitsio-sys`; see `ffi.rs` for why not the `fitsio` crate).
//!
//! Conventions used everywhere in astroworker:
//! - Pixel arrays are `ndarray` arrays shaped `(channels, height, width)` (`Array3<f32>`), or
//!   `(height, width)` for one plane. `width` = NAXIS1, `height` = NAXIS2, `channels` = NAXIS3
//!   (1 for 2-D images).
//! - Row 0 is the **first row stored in the file** (no flipping, whatever ROWORDER says; the
//!   Bayer pattern is adjusted instead — see `science::cfa`). Outputs are written in the same
//!   order.
//! - Values are physical: BZERO/BSCALE applied, BLANK pixels are NaN.
//!
//! [`FitsReader`] opens an image HDU of any FITS file (every BITPIX, tile-compressed `.fz`,
//! gzip-compressed `.gz`, multi-extension files with an optional `[N]` / `[EXTNAME]` selector)
//! and reads it whole or by row bands; [`write_image`] writes float32 or uint16 files
//! atomically; [`Header`] holds the cards. File names are used literally (cfitsio's extended
//! file-name syntax is never applied), so they may contain spaces, `[`, `(` or `!`.

mod direct;
mod ffi;
mod header;
mod read;
mod write;

pub use header::{Card, CardValue, Header};
pub use read::{FitsReader, ImageInfo};
pub use write::{OutputType, write_image};

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or writing FITS files. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum FitsError {
    #[error("{path}: no such file")]
    NotFound { path: PathBuf },
    #[error("{path}: not a FITS file ({reason})")]
    NotFits { path: PathBuf, reason: String },
    #[error("{path}: no image data (only tables or empty HDUs)")]
    NoImage { path: PathBuf },
    #[error("{path}: image has zero size (NAXIS{axis} = 0)")]
    EmptyImage { path: PathBuf, axis: usize },
    #[error("{path}: HDU {selector} not found")]
    NoSuchHdu { path: PathBuf, selector: String },
    #[error("{path}: HDU {hdu} is not an image")]
    NotAnImage { path: PathBuf, hdu: String },
    #[error("{path}: {dims}-dimensional images are not supported (2-D, or 3-D colour cubes)")]
    Dimensions { path: PathBuf, dims: usize },
    #[error("{path}: truncated or corrupt ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: cannot write ({reason})")]
    Write { path: PathBuf, reason: String },
    /// A request outside the image (rows, channel, buffer size).
    #[error("{path}: {reason}")]
    OutOfRange { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, FitsError>;

/// The longest file name cfitsio accepts (FLEN_FILENAME − 1 bytes).
const MAX_CFITSIO_PATH: usize = 1024;

/// `path` as cfitsio takes it: absolute (cfitsio skips leading spaces of a name), without NUL
/// bytes, at most [`MAX_CFITSIO_PATH`] bytes.
fn cfitsio_path(path: &Path) -> Result<CString> {
    let error = |reason: String| FitsError::Io {
        path: path.to_path_buf(),
        reason,
    };
    let absolute = std::path::absolute(path).map_err(|e| error(e.to_string()))?;
    let bytes =
        path_bytes(&absolute).ok_or_else(|| error("file name is not valid UTF-8".into()))?;
    if bytes.len() > MAX_CFITSIO_PATH {
        return Err(error(format!(
            "path longer than {MAX_CFITSIO_PATH} bytes (cfitsio's limit)"
        )));
    }
    CString::new(bytes).map_err(|_| error("file name contains a NUL byte".into()))
}

#[cfg(unix)]
fn path_bytes(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    Some(path.as_os_str().as_bytes().to_vec())
}

#[cfg(not(unix))]
fn path_bytes(path: &Path) -> Option<Vec<u8>> {
    path.to_str().map(|s| s.as_bytes().to_vec())
}
