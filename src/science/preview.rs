//! Preview images: PNG/JPEG (8-bit) and TIFF (16-bit) through the `image` crate.
//!
//! [`write_preview`] takes display values in [0, 1] (the output of `stretch`; values outside
//! are clipped, NaN is black), `(channels, H, W)` with 1 channel (grayscale) or 3 (RGB), and
//! writes them with row 0 at the top of the picture. The format comes from the file extension.
//! The file is written under a temporary name in the same directory and renamed into place, so
//! a reader never sees a partial file and a failed write leaves nothing behind.

use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::tiff::TiffEncoder;
use image::{ExtendedColorType, ImageEncoder};
use ndarray::ArrayView3;

/// JPEG quality of the previews.
pub const JPEG_QUALITY: u8 = 95;

/// What can go wrong writing a preview.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("{path}: unknown preview format (use .png, .jpg/.jpeg or .tif/.tiff)")]
    UnknownFormat { path: PathBuf },
    #[error("a preview needs 1 (grayscale) or 3 (RGB) channels, not {0}")]
    Channels(usize),
    #[error("a preview cannot be {width}×{height} pixels")]
    Size { width: usize, height: usize },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Encode {
        path: PathBuf,
        source: image::ImageError,
    },
}

/// Preview file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewFormat {
    /// 8-bit PNG.
    Png,
    /// 8-bit JPEG, quality [`JPEG_QUALITY`].
    Jpeg,
    /// 16-bit TIFF.
    Tiff,
}

impl PreviewFormat {
    /// The format named by the file's extension (case-insensitive): png, jpg/jpeg, tif/tiff.
    pub fn from_path(path: &Path) -> Result<Self, PreviewError> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("jpg" | "jpeg") => Ok(Self::Jpeg),
            Some("tif" | "tiff") => Ok(Self::Tiff),
            _ => Err(PreviewError::UnknownFormat {
                path: path.to_owned(),
            }),
        }
    }

    /// Bits per sample.
    pub fn bit_depth(&self) -> u8 {
        match self {
            Self::Png | Self::Jpeg => 8,
            Self::Tiff => 16,
        }
    }
}

/// Writes `image` `(1 or 3, H, W)`, display values in [0, 1], to `path` in the format of its
/// extension (see the module docs). Returns the format written.
pub fn write_preview(path: &Path, image: ArrayView3<f32>) -> Result<PreviewFormat, PreviewError> {
    let format = PreviewFormat::from_path(path)?;
    let (channels, height, width) = image.dim();
    let color = match (channels, format.bit_depth()) {
        (1, 8) => ExtendedColorType::L8,
        (3, 8) => ExtendedColorType::Rgb8,
        (1, _) => ExtendedColorType::L16,
        (3, _) => ExtendedColorType::Rgb16,
        _ => return Err(PreviewError::Channels(channels)),
    };
    let size_error = PreviewError::Size { width, height };
    let (w, h) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
        _ => return Err(size_error),
    };
    // Interleaved samples, row 0 first (the top of the picture).
    let samples = image.permuted_axes([1, 2, 0]);
    let bytes: Vec<u8> = match format.bit_depth() {
        8 => samples.iter().map(|&v| quantize(v, 255.0) as u8).collect(),
        _ => samples
            .iter()
            .flat_map(|&v| (quantize(v, 65535.0) as u16).to_ne_bytes())
            .collect(),
    };

    let temporary = temporary_path(path);
    let written = write_encoded(&temporary, format, &bytes, w, h, color);
    let renamed = written.and_then(|()| {
        fs::rename(&temporary, path).map_err(|source| PreviewError::Io {
            path: path.to_owned(),
            source,
        })
    });
    if renamed.is_err() {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&temporary);
    }
    renamed.map(|()| format)
}

/// `round(v · max)` with v clipped to [0, 1]; NaN → 0.
fn quantize(v: f32, max: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        (v.clamp(0.0, 1.0) * max).round()
    }
}

/// A fresh name next to `path`: `.{name}.{pid}.{n}.tmp` (hidden, unique per process and call).
fn temporary_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

fn write_encoded(
    path: &Path,
    format: PreviewFormat,
    bytes: &[u8],
    width: u32,
    height: u32,
    color: ExtendedColorType,
) -> Result<(), PreviewError> {
    let io_error = |source| PreviewError::Io {
        path: path.to_owned(),
        source,
    };
    let encode_error = |source| PreviewError::Encode {
        path: path.to_owned(),
        source,
    };
    let file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error)?;
    let mut writer = BufWriter::new(file);
    match format {
        PreviewFormat::Png => PngEncoder::new(&mut writer).write_image(bytes, width, height, color),
        PreviewFormat::Jpeg => JpegEncoder::new_with_quality(&mut writer, JPEG_QUALITY)
            .write_image(bytes, width, height, color),
        PreviewFormat::Tiff => {
            TiffEncoder::new(&mut writer).write_image(bytes, width, height, color)
        }
    }
    .map_err(encode_error)?;
    let file = writer.into_inner().map_err(|e| io_error(e.into_error()))?;
    file.sync_all().map_err(io_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ColorType, DynamicImage, GenericImageView};
    use ndarray::Array3;

    /// A gradient picture: value grows with x, channel c scaled by (c + 1)/3; a bright top row.
    fn picture(channels: usize, height: usize, width: usize) -> Array3<f32> {
        Array3::from_shape_fn((channels, height, width), |(c, y, x)| {
            if y == 0 {
                1.0
            } else {
                (x as f32 / (width - 1) as f32) * (c + 1) as f32 / 3.0
            }
        })
    }

    fn read(path: &Path) -> DynamicImage {
        image::ImageReader::open(path)
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .decode()
            .unwrap()
    }

    #[test]
    fn formats_from_extensions() {
        assert_eq!(
            PreviewFormat::from_path(Path::new("a/b.PNG")).unwrap(),
            PreviewFormat::Png
        );
        assert_eq!(
            PreviewFormat::from_path(Path::new("x.jpeg")).unwrap(),
            PreviewFormat::Jpeg
        );
        assert_eq!(
            PreviewFormat::from_path(Path::new("x.jpg")).unwrap(),
            PreviewFormat::Jpeg
        );
        assert_eq!(
            PreviewFormat::from_path(Path::new("x.tif")).unwrap(),
            PreviewFormat::Tiff
        );
        assert_eq!(
            PreviewFormat::from_path(Path::new("x.Tiff")).unwrap(),
            PreviewFormat::Tiff
        );
        for bad in ["x.fits", "x", "x.png.gz"] {
            assert!(matches!(
                PreviewFormat::from_path(Path::new(bad)),
                Err(PreviewError::UnknownFormat { .. })
            ));
        }
    }

    #[test]
    fn files_read_back_with_the_right_size_and_depth() {
        let dir = tempfile::tempdir().unwrap();
        let (h, w) = (12, 20);
        let cases = [
            ("rgb.png", 3, ColorType::Rgb8),
            ("gray.png", 1, ColorType::L8),
            ("rgb.jpg", 3, ColorType::Rgb8),
            ("gray.jpeg", 1, ColorType::L8),
            ("rgb.tif", 3, ColorType::Rgb16),
            ("gray.tiff", 1, ColorType::L16),
        ];
        for (name, channels, color) in cases {
            let path = dir.path().join(name);
            write_preview(&path, picture(channels, h, w).view()).unwrap();
            let img = read(&path);
            assert_eq!(img.dimensions(), (w as u32, h as u32), "{name}");
            assert_eq!(img.color(), color, "{name}");
            // Row 0 (all white) is at the top; the gradient grows to the right.
            let rgb = img.to_rgb16();
            assert!(
                rgb.get_pixel(w as u32 / 2, 0).0[0] > 60000,
                "{name}: top row not white"
            );
            let left = rgb.get_pixel(0, h as u32 - 1).0[0];
            let right = rgb.get_pixel(w as u32 - 1, h as u32 - 1).0;
            assert!(left < 2000, "{name}: {left}");
            if channels == 3 {
                // Blue (c = 2) reaches 1, red (c = 0) 1/3.
                assert!(
                    right[2] > 63000 && (right[0] as f32 - 65535.0 / 3.0).abs() < 1500.0,
                    "{name}: {right:?}"
                );
            }
        }
        // Lossless formats are exact.
        let path = dir.path().join("exact.tif");
        let data = picture(3, h, w);
        write_preview(&path, data.view()).unwrap();
        let back = read(&path).to_rgb16();
        for ((c, y, x), &v) in data.indexed_iter() {
            assert_eq!(
                back.get_pixel(x as u32, y as u32).0[c],
                (v * 65535.0).round() as u16
            );
        }
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn out_of_range_values_are_clipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.png");
        let data = Array3::from_shape_vec((1, 1, 4), vec![-1.0, f32::NAN, 2.0, 0.5]).unwrap();
        write_preview(&path, data.view()).unwrap();
        let back = read(&path).to_luma8();
        assert_eq!(back.as_raw(), &vec![0, 0, 255, 128]);
    }

    #[test]
    fn errors_are_typed_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let two = Array3::<f32>::zeros((2, 4, 4));
        assert!(matches!(
            write_preview(&dir.path().join("a.png"), two.view()),
            Err(PreviewError::Channels(2))
        ));
        let empty = Array3::<f32>::zeros((1, 0, 4));
        assert!(matches!(
            write_preview(&dir.path().join("a.png"), empty.view()),
            Err(PreviewError::Size { .. })
        ));
        let one = Array3::<f32>::zeros((1, 4, 4));
        assert!(matches!(
            write_preview(&dir.path().join("a.bmp"), one.view()),
            Err(PreviewError::UnknownFormat { .. })
        ));
        let missing_dir = dir.path().join("no/such/dir/a.png");
        assert!(matches!(
            write_preview(&missing_dir, one.view()),
            Err(PreviewError::Io { .. })
        ));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
