//! Reading images: HDU selection, whole images and row bands as f32.
//!
//! [`FitsReader::open`] finds the image HDU (the first one holding data, or the one a trailing
//! `[N]` / `[EXTNAME]` selector names), reads its header and checks that its last pixel can be
//! read, so truncated files fail at open rather than halfway through a stack. Pixels are then
//! read on demand: whole ([`FitsReader::read_all`]) or by bands of rows of one plane
//! ([`FitsReader::read_rows`], [`FitsReader::read_rows_u16`]), which is how stacks of hundreds
//! of frames are streamed without holding whole frames.
//!
//! A reader is `Send` (it can move to a worker thread); distinct readers, even of the same
//! file, may be used from different threads at the same time.

use std::path::{Path, PathBuf};

use ndarray::Array3;

use super::direct::DirectImage;
use super::ffi::{Fits, ImageParams, Status};
use super::{FitsError, Header, Result, cfitsio_path};

/// cfitsio's equivalent image type of BITPIX 16 with BZERO 32768 and BSCALE 1.
const USHORT_IMG: i32 = 20;

/// What `fits.info` reports about an image HDU, and what the pipeline plans with.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The path as given (without any `[N]` selector).
    pub path: PathBuf,
    /// 0-based HDU index (0 = primary).
    pub hdu: usize,
    /// FITS axis order: `[NAXIS1, NAXIS2]` or `[NAXIS1, NAXIS2, NAXIS3]`.
    pub shape: Vec<usize>,
    /// BITPIX as stored (for tile-compressed images: the uncompressed ZBITPIX).
    pub bitpix: i32,
    pub header: Header,
}

impl ImageInfo {
    pub fn width(&self) -> usize {
        self.shape[0]
    }
    pub fn height(&self) -> usize {
        self.shape[1]
    }
    pub fn channels(&self) -> usize {
        self.shape.get(2).copied().unwrap_or(1)
    }
}

/// An open image HDU.
pub struct FitsReader {
    info: ImageInfo,
    fits: Fits,
    /// The file stores exactly unsigned 16-bit values (see [`FitsReader::read_rows_u16`]).
    raw_u16: bool,
    /// Undefined pixels are marked by a value (BLANK in integer images, ZBLANK in compressed
    /// ones) that must become NaN. Uncompressed float images need no substitution (and must
    /// not get one: cfitsio would turn infinities into NaN too).
    blank_to_nan: bool,
    /// Uncompressed data in a plain file are read directly (see `direct.rs`).
    direct: Option<DirectImage>,
}

impl FitsReader {
    /// Opens `path`, which may end in a selector `[N]` (0-based HDU index) or `[EXTNAME]`.
    /// Without one, the first HDU holding image data (NAXIS > 0) is used, so tile-compressed
    /// `.fz` files and multi-extension files work. gzip-compressed files (`.gz`) are read too.
    ///
    /// A path naming an existing file is always taken literally, so a file really called
    /// `a[1]` opens as such. 2-D images and 3-D cubes are accepted (axes of length 1 beyond
    /// the third are ignored).
    pub fn open(path: &Path) -> Result<Self> {
        let (file, selector) = split_selector(path);
        check_is_file(&file)?;
        let mut fits = Fits::open_readonly(&cfitsio_path(&file)?)
            .map_err(|status| open_error(&file, status))?;
        let (hdu, params) = match &selector {
            Some(selector) => select_hdu(&mut fits, &file, selector)?,
            None => find_image_hdu(&mut fits, &file)?,
        };
        let corrupt = |what: &str, status: Status| FitsError::Corrupt {
            path: file.clone(),
            reason: format!("HDU {hdu}: {what}: {status}"),
        };

        let shape = plane_shape(&params.axes).ok_or_else(|| FitsError::Dimensions {
            path: file.clone(),
            dims: params.axes.len(),
        })?;
        let Layout {
            header,
            raw_u16,
            blank_to_nan,
            compressed,
        } = layout(&mut fits, &params).map_err(|s| corrupt("reading the header", s))?;

        let pixels: usize = shape.iter().product();
        fits.read_f32(pixels - 1, &mut [0.0], blank_to_nan)
            .map_err(|s| corrupt("reading the last pixel", s))?;
        let direct = if compressed {
            None
        } else {
            let offset = fits
                .data_offset()
                .map_err(|s| corrupt("locating the data", s))?;
            let io_error = |e: std::io::Error| FitsError::Io {
                path: file.clone(),
                reason: e.to_string(),
            };
            let handle = std::fs::File::open(&file).map_err(io_error)?;
            DirectImage::new(handle, offset, params.bitpix, &header).map_err(io_error)?
        };

        let info = ImageInfo {
            path: file,
            hdu,
            shape,
            bitpix: params.bitpix,
            header,
        };
        Ok(FitsReader {
            info,
            fits,
            raw_u16,
            blank_to_nan,
            direct,
        })
    }

    pub fn info(&self) -> &ImageInfo {
        &self.info
    }

    /// The whole image, `(channels, height, width)`, physical values, BLANK → NaN.
    pub fn read_all(&mut self) -> Result<Array3<f32>> {
        let shape = (self.info.channels(), self.info.height(), self.info.width());
        let mut data = vec![0f32; shape.0 * shape.1 * shape.2];
        self.read_f32(0, &mut data, "the image")?;
        Ok(Array3::from_shape_vec(shape, data)
            .expect("the buffer holds channels × height × width pixels"))
    }

    /// Rows `row0 .. row0 + out.len() / width` of plane `channel` into `out` (row-major).
    /// `out.len()` must be a multiple of the width; NaN for undefined pixels.
    pub fn read_rows(&mut self, channel: usize, row0: usize, out: &mut [f32]) -> Result<()> {
        let first = self.band_start(channel, row0, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        self.read_f32(first, out, "rows")
    }

    /// The same rows as raw unsigned 16-bit values, when the file stores exactly that
    /// (BITPIX 16 with BZERO 32768, BSCALE 1, no BLANK); `Ok(false)` otherwise. Used to move
    /// half the bytes to a GPU.
    pub fn read_rows_u16(&mut self, channel: usize, row0: usize, out: &mut [u16]) -> Result<bool> {
        let first = self.band_start(channel, row0, out.len())?;
        if !self.raw_u16 {
            return Ok(false);
        }
        match (&self.direct, out.is_empty()) {
            (_, true) => {}
            (Some(direct), false) => direct
                .read_u16(first, out)
                .map_err(|e| self.io_error("rows", e))?,
            (None, false) => self
                .fits
                .read_u16(first, out)
                .map_err(|s| self.read_error("rows", s))?,
        }
        Ok(true)
    }

    /// Adds the values of the rows `row0 .. row0 + sums.len() / width` of plane `channel` to
    /// `sums`, reading them through `scratch` (as long as `sums`): the inner loop of a
    /// streaming sum, in one pass over the file's bytes. `Ok(false)` (and `sums` untouched)
    /// when the file does not store exactly unsigned 16-bit values.
    pub fn add_rows_u16(
        &mut self,
        channel: usize,
        row0: usize,
        sums: &mut [u32],
        scratch: &mut [u16],
    ) -> Result<bool> {
        assert_eq!(
            sums.len(),
            scratch.len(),
            "scratch must be as long as the sums"
        );
        if let Some(direct) = self.direct.as_ref().filter(|_| self.raw_u16) {
            let first = self.band_start(channel, row0, sums.len())?;
            direct
                .add_u16(first, sums, scratch)
                .map_err(|e| self.io_error("rows", e))?;
            return Ok(true);
        }
        if !self.read_rows_u16(channel, row0, scratch)? {
            return Ok(false);
        }
        for (s, &v) in sums.iter_mut().zip(scratch.iter()) {
            *s += u32::from(v);
        }
        Ok(true)
    }

    /// Whether [`FitsReader::read_rows_u16`] returns the pixels.
    pub fn stores_u16(&self) -> bool {
        self.raw_u16
    }

    fn read_f32(&mut self, first: usize, out: &mut [f32], what: &str) -> Result<()> {
        match &self.direct {
            Some(direct) => direct
                .read_f32(first, out)
                .map_err(|e| self.io_error(what, e)),
            None => self
                .fits
                .read_f32(first, out, self.blank_to_nan)
                .map_err(|s| self.read_error(what, s)),
        }
    }

    /// The element index of `row0` of plane `channel`, after checking that `len` values are
    /// whole rows inside the plane.
    fn band_start(&self, channel: usize, row0: usize, len: usize) -> Result<usize> {
        let (width, height, channels) =
            (self.info.width(), self.info.height(), self.info.channels());
        let rows = len / width;
        let problem = if !len.is_multiple_of(width) {
            Some(format!(
                "a band of {len} values is not whole rows of {width} pixels"
            ))
        } else if channel >= channels {
            Some(format!(
                "plane {channel} requested, the image has {channels}"
            ))
        } else if row0 + rows > height {
            Some(format!(
                "rows {row0}..{} requested, the image has {height}",
                row0 + rows
            ))
        } else {
            None
        };
        match problem {
            Some(reason) => Err(FitsError::OutOfRange {
                path: self.info.path.clone(),
                reason,
            }),
            None => Ok((channel * height + row0) * width),
        }
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> FitsError {
        FitsError::Corrupt {
            path: self.info.path.clone(),
            reason: format!("HDU {}: reading {what}: {e}", self.info.hdu),
        }
    }

    fn read_error(&self, what: &str, status: Status) -> FitsError {
        FitsError::Corrupt {
            path: self.info.path.clone(),
            reason: format!("HDU {}: reading {what}: {status}", self.info.hdu),
        }
    }
}

/// The image header, and how the pixels must be read.
struct Layout {
    header: Header,
    raw_u16: bool,
    blank_to_nan: bool,
    compressed: bool,
}

fn layout(fits: &mut Fits, params: &ImageParams) -> std::result::Result<Layout, Status> {
    let compressed = fits.is_compressed_image()?;
    let header = Header::from_records(&fits.header_records()?);
    let header = if compressed {
        header.uncompressed()
    } else {
        header
    };
    // Compressed integer images may mark undefined pixels with ZBLANK instead of BLANK.
    let has_blank =
        header.get("BLANK").is_some() || (compressed && fits.has_stored_key(c"ZBLANK")?);
    Ok(Layout {
        raw_u16: params.bitpix == 16 && params.equivalent_bitpix == USHORT_IMG && !has_blank,
        blank_to_nan: compressed || params.bitpix > 0,
        compressed,
        header,
    })
}

/// Splits a trailing `[selector]` off `path`, unless `path` names an existing file.
fn split_selector(path: &Path) -> (PathBuf, Option<String>) {
    let literal = (path.to_path_buf(), None);
    if path.symlink_metadata().is_ok() {
        return literal;
    }
    let Some(text) = path.to_str() else {
        return literal;
    };
    let Some(inner) = text.strip_suffix(']') else {
        return literal;
    };
    match inner.rfind('[') {
        Some(open) if open > 0 => (
            PathBuf::from(&inner[..open]),
            Some(inner[open + 1..].to_string()),
        ),
        _ => literal,
    }
}

fn check_is_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(FitsError::Io {
            path: path.to_path_buf(),
            reason: "is a directory".into(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FitsError::NotFound {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(FitsError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Why cfitsio could not open an existing file: not FITS at all, or a damaged FITS (or
/// compressed) file, told apart by the first bytes.
fn open_error(path: &Path, status: Status) -> FitsError {
    use std::io::Read;
    let mut start = Vec::with_capacity(9);
    let read = std::fs::File::open(path).and_then(|f| f.take(9).read_to_end(&mut start));
    if let Err(e) = read {
        return FitsError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
    }
    let compressed = [&b"\x1f\x8b"[..], b"\x1f\x9d", b"PK\x03\x04", b"BZh"];
    let (is_fits, reason) = if start.is_empty() {
        (false, "the file is empty".to_string())
    } else if start.starts_with(b"SIMPLE") {
        (true, status.to_string())
    } else if compressed.iter().any(|magic| start.starts_with(magic)) {
        (
            true,
            format!("compressed file does not hold a readable FITS file: {status}"),
        )
    } else {
        (false, "it does not start with a SIMPLE card".to_string())
    };
    let path = path.to_path_buf();
    if is_fits {
        FitsError::Corrupt { path, reason }
    } else {
        FitsError::NotFits { path, reason }
    }
}

/// What the current HDU holds, as far as images go.
enum Content {
    Image(ImageParams),
    /// An image with a zero-length axis (1-based axis number).
    Empty(usize),
    /// A table, a header-only HDU (NAXIS = 0) or random groups (an obsolete table-like
    /// format whose NAXIS1 is 0).
    NoImage(&'static str),
}

fn content(fits: &mut Fits) -> std::result::Result<Content, Status> {
    if !fits.is_image()? {
        return Ok(Content::NoImage("a table"));
    }
    let params = fits.image_params()?;
    if params.axes.is_empty() {
        return Ok(Content::NoImage("no data, NAXIS = 0"));
    }
    Ok(match params.axes.iter().position(|&n| n == 0) {
        Some(0) if fits.has_stored_key(c"GROUPS")? => Content::NoImage("random groups"),
        Some(axis) => Content::Empty(axis + 1),
        None => Content::Image(params),
    })
}

/// Moves to the HDU a selector names: a 0-based index, or an EXTNAME (case-insensitive).
fn select_hdu(fits: &mut Fits, path: &Path, selector: &str) -> Result<(usize, ImageParams)> {
    let no_such_hdu = || FitsError::NoSuchHdu {
        path: path.to_path_buf(),
        selector: format!("[{selector}]"),
    };
    let corrupt = |status: Status| FitsError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("HDU [{selector}]: {status}"),
    };
    let moved = match selector.trim().parse::<usize>() {
        _ if selector.trim().is_empty() => return Err(no_such_hdu()),
        Ok(index) => fits.move_to_hdu(index).map(|()| index),
        Err(_) => {
            let name = std::ffi::CString::new(selector.trim()).map_err(|_| no_such_hdu())?;
            fits.move_to_named_hdu(&name)
        }
    };
    let index = match moved {
        Ok(index) => index,
        Err(s) if s == Status::END_OF_FILE || s == Status::BAD_HDU_NUM => return Err(no_such_hdu()),
        Err(s) => return Err(corrupt(s)),
    };
    let path = path.to_path_buf();
    match content(fits).map_err(corrupt)? {
        Content::Image(params) => Ok((index, params)),
        Content::Empty(axis) => Err(FitsError::EmptyImage { path, axis }),
        Content::NoImage(what) => Err(FitsError::NotAnImage {
            path,
            hdu: format!("[{selector}] ({what})"),
        }),
    }
}

/// Moves to the first image HDU holding data. Empty images, and HDUs that cannot be read
/// after the primary one, end the search only when no image follows; they are then reported.
fn find_image_hdu(fits: &mut Fits, path: &Path) -> Result<(usize, ImageParams)> {
    let mut empty_axis = None;
    let mut damaged = None;
    for index in 0.. {
        let found = fits.move_to_hdu(index).and_then(|()| content(fits));
        match found {
            Ok(Content::Image(params)) => return Ok((index, params)),
            Ok(Content::Empty(axis)) => {
                empty_axis.get_or_insert(axis);
            }
            Ok(Content::NoImage(_)) => {}
            Err(status) => {
                if status != Status::END_OF_FILE {
                    damaged = Some(format!("HDU {index}: {status}"));
                }
                break;
            }
        }
    }
    let path = path.to_path_buf();
    Err(match (empty_axis, damaged) {
        (Some(axis), _) => FitsError::EmptyImage { path, axis },
        (None, Some(reason)) => FitsError::Corrupt { path, reason },
        (None, None) => FitsError::NoImage { path },
    })
}

/// `[width, height]` or `[width, height, channels]` from the FITS axes, ignoring axes of
/// length 1 beyond the third; None for other dimensionalities.
fn plane_shape(axes: &[i64]) -> Option<Vec<usize>> {
    let mut shape: Vec<usize> = axes
        .iter()
        .map(|&n| usize::try_from(n).ok())
        .collect::<Option<_>>()?;
    while shape.len() > 3 && shape.last() == Some(&1) {
        shape.pop();
    }
    (2..=3).contains(&shape.len()).then_some(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_split_only_at_the_end_of_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("odd [1]");
        std::fs::write(&real, b"x").unwrap();
        assert_eq!(split_selector(&real), (real.clone(), None));

        let file = dir.path().join("my frame.fits");
        let with = |s: &str| PathBuf::from(format!("{}{s}", file.display()));
        assert_eq!(
            split_selector(&with("[2]")),
            (file.clone(), Some("2".into()))
        );
        assert_eq!(
            split_selector(&with("[SCI]")),
            (file.clone(), Some("SCI".into()))
        );
        assert_eq!(
            split_selector(&with("[a][b]")),
            (with("[a]"), Some("b".into()))
        );
        assert_eq!(split_selector(&with("")), (file.clone(), None));
        assert_eq!(
            split_selector(Path::new("[1]")),
            (PathBuf::from("[1]"), None)
        );
    }

    #[test]
    fn plane_shapes() {
        assert_eq!(plane_shape(&[4, 3]), Some(vec![4, 3]));
        assert_eq!(plane_shape(&[4, 3, 3]), Some(vec![4, 3, 3]));
        assert_eq!(plane_shape(&[4, 3, 1]), Some(vec![4, 3, 1]));
        assert_eq!(plane_shape(&[4, 3, 2, 1, 1]), Some(vec![4, 3, 2]));
        assert_eq!(plane_shape(&[4]), None);
        assert_eq!(plane_shape(&[4, 3, 2, 2]), None);
    }

    #[test]
    fn open_errors_tell_fits_from_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let status = Status::END_OF_FILE;
        assert!(matches!(
            open_error(&write("e", b""), status),
            FitsError::NotFits { .. }
        ));
        assert!(matches!(
            open_error(&write("t", b"hello world"), status),
            FitsError::NotFits { .. }
        ));
        assert!(matches!(
            open_error(&write("f", b"SIMPLE  = T"), status),
            FitsError::Corrupt { .. }
        ));
        assert!(matches!(
            open_error(&write("g", b"\x1f\x8b\x08"), status),
            FitsError::Corrupt { .. }
        ));
    }

    #[test]
    fn readers_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<FitsReader>();
    }
}
