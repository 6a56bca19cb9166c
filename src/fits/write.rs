//! Writing images atomically (temporary name, then rename).
//!
//! [`write_image`] creates the file under a hidden temporary name in the target directory
//! (`.NAME.PID-N.tmp`), writes the primary HDU — structural cards, then the caller's
//! non-structural cards in order, then the pixels — closes it and renames it into place. On
//! any failure the temporary file is removed and the target is left untouched. The output is
//! always a plain (uncompressed) FITS file.

use std::ffi::{CString, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::ArrayView3;

use super::ffi::{Fits, Status};
use super::header::{commentary_pieces, is_structural};
use super::{Card, CardValue, FitsError, Header, Result, cfitsio_path};

/// Output sample type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputType {
    /// BITPIX -32.
    #[default]
    Float32,
    /// BITPIX 16 with BZERO 32768 (values rounded to nearest and clamped to 0..=65535).
    UInt16,
}

impl OutputType {
    /// cfitsio's image type: `FLOAT_IMG`, or `USHORT_IMG` (BITPIX 16, BZERO 32768, BSCALE 1).
    fn cfitsio_image_type(self) -> i32 {
        match self {
            OutputType::Float32 => -32,
            OutputType::UInt16 => 20,
        }
    }
}

/// The two COMMENT cards cfitsio adds to every primary header it creates; removed so that
/// only the caller's cards are written (and re-written files do not collect copies).
const CFITSIO_STANDARD_COMMENTS: [&str; 2] = [
    "COMMENT   FITS (Flexible Image Transport System) format is defined in 'Astronomy",
    "COMMENT   and Astrophysics', volume 376, page 359; bibcode: 2001A&A...376..359H",
];

/// Writes `data` (`(channels, height, width)`; 2-D when channels == 1) as the primary HDU of
/// a new file at `path`, with the non-structural cards of `header` in order and nothing the
/// library adds on its own (no EXTNAME). The file is written under a temporary name in the
/// same directory and renamed into place, so `path` never holds a partial file; an existing
/// file is replaced.
///
/// UInt16 output rounds to nearest and clamps to 0..=65535, NaN becoming 0. Header text is
/// written as printable ASCII (other characters become `?`); float cards keep every digit
/// needed to read back the same f64, and non-finite ones are written without a value.
pub fn write_image(
    path: &Path,
    data: ArrayView3<f32>,
    dtype: OutputType,
    header: &Header,
) -> Result<()> {
    let error = |reason: String| FitsError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let (channels, height, width) = data.dim();
    if channels == 0 || height == 0 || width == 0 {
        return Err(error(format!(
            "no pixels to write (shape {channels}×{height}×{width})"
        )));
    }
    let temp = temp_path(path).map_err(error)?;
    let result = write_file(&temp, data, dtype, header).and_then(|()| {
        std::fs::rename(&temp, path)
            .map_err(|e| format!("renaming {} into place: {e}", temp.display()))
    });
    if result.is_err() {
        // The temporary file may not exist (creation failed); nothing else to clean.
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(error)
}

/// A hidden, unused name in the directory of `path`.
fn temp_path(path: &Path) -> std::result::Result<PathBuf, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or("not a file name")?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("directory {} does not exist", dir.display()));
    }
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(dir.join(temp))
}

fn write_file(
    path: &Path,
    data: ArrayView3<f32>,
    dtype: OutputType,
    header: &Header,
) -> std::result::Result<(), String> {
    let c_path = cfitsio_path(path).map_err(|e| e.to_string())?;
    let mut fits =
        Fits::create(&c_path).map_err(|s| format!("creating {}: {s}", path.display()))?;
    let (channels, height, width) = data.dim();
    let mut axes = vec![width as i64, height as i64];
    if channels > 1 {
        axes.push(channels as i64);
    }
    fits.create_image(dtype.cfitsio_image_type(), &axes)
        .map_err(failed("creating the image"))?;

    remove_cfitsio_comments(&mut fits).map_err(failed("removing cfitsio's comments"))?;
    for card in header.cards().iter().filter(|c| !is_structural(&c.key)) {
        write_card(&mut fits, card).map_err(|reason| format!("card {}: {reason}", card.key))?;
    }

    let pixels = data.as_standard_layout();
    let pixels = pixels.as_slice().expect("standard layout is contiguous");
    match dtype {
        OutputType::Float32 => fits.write_f32(pixels),
        OutputType::UInt16 => {
            fits.write_u16(&pixels.iter().map(|&v| to_u16(v)).collect::<Vec<_>>())
        }
    }
    .map_err(failed("writing the pixels"))?;
    fits.close().map_err(failed("closing"))
}

/// Maps a cfitsio status to a failure reason saying what was being done.
fn failed(what: &'static str) -> impl Fn(Status) -> String {
    move |status| format!("{what}: {status}")
}

fn to_u16(value: f32) -> u16 {
    if value.is_nan() {
        0
    } else {
        value.round().clamp(0.0, 65535.0) as u16
    }
}

/// Deletes the standard comments cfitsio puts in every new primary header.
fn remove_cfitsio_comments(fits: &mut Fits) -> std::result::Result<(), Status> {
    let records = fits.header_records()?;
    let positions = records
        .iter()
        .enumerate()
        .filter(|(_, r)| CFITSIO_STANDARD_COMMENTS.contains(&r.trim_end()));
    // From the last, so that earlier positions stay valid.
    for index in positions
        .map(|(i, _)| i)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        fits.delete_record(index)?;
    }
    Ok(())
}

fn write_card(fits: &mut Fits, card: &Card) -> std::result::Result<(), String> {
    if !card.key.chars().all(|c| (' '..='~').contains(&c)) {
        return Err("the keyword is not printable ASCII".into());
    }
    let text = |s: &str| CString::new(printable_ascii(s)).expect("printable ASCII has no NUL");
    let comment_text = card.comment.as_deref().unwrap_or_default();
    let written = if card.is_commentary() {
        let key = card.key.to_ascii_uppercase();
        commentary_pieces(&printable_ascii(comment_text))
            .iter()
            .try_for_each(|piece| fits.write_record(&text(&format!("{key:<8}{piece}"))))
    } else {
        let (key, comment) = (text(&card.key), text(comment_text));
        match &card.value {
            CardValue::Bool(b) => fits.write_bool(&key, *b, &comment),
            CardValue::Int(i) => fits.write_int(&key, *i, &comment),
            CardValue::Float(f) if f.is_finite() => {
                fits.write_float(&key, *f, float_digits(*f), &comment)
            }
            CardValue::Str(s) => fits.write_str(&key, &text(s), &comment),
            CardValue::Float(_) | CardValue::Undefined => fits.write_undefined(&key, &comment),
        }
    };
    written.map_err(|status| status.to_string())
}

/// FITS headers hold printable ASCII only.
fn printable_ascii(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// The fewest significant digits (15 to 17) that read back as exactly `value`.
fn float_digits(value: f64) -> i32 {
    (15..17)
        .find(|&d| format!("{:.*e}", d as usize - 1, value).parse::<f64>() == Ok(value))
        .unwrap_or(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u16_conversion_rounds_and_clamps() {
        let cases = [
            (0.4, 0),
            (0.5, 1),
            (1.49, 1),
            (65534.6, 65535),
            (70000.0, 65535),
            (-3.0, 0),
        ];
        for (input, expected) in cases {
            assert_eq!(to_u16(input), expected, "{input}");
        }
        assert_eq!(to_u16(f32::NAN), 0);
        assert_eq!(to_u16(f32::INFINITY), 65535);
    }

    #[test]
    fn float_digits_round_trip() {
        assert_eq!(float_digits(0.1), 15);
        assert_eq!(float_digits(192.7213), 15);
        let tricky = 0.1 + 0.2;
        let d = float_digits(tricky);
        assert!(d > 15);
        assert_eq!(
            format!("{:.*e}", d as usize - 1, tricky).parse::<f64>(),
            Ok(tricky)
        );
    }

    #[test]
    fn temp_names_are_hidden_siblings() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out file.fits");
        let a = temp_path(&target).unwrap();
        let b = temp_path(&target).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(dir.path()));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".out file.fits.") && name.ends_with(".tmp"),
            "{name}"
        );
        let missing = dir.path().join("nope/out.fits");
        assert!(temp_path(&missing).unwrap_err().contains("does not exist"));
    }

    #[test]
    fn printable_ascii_replaces_the_rest() {
        assert_eq!(printable_ascii("T=−5°C\tok"), "T=?5?C?ok");
    }
}
