//! Direct reads of uncompressed image data, without cfitsio's buffered reads.
//!
//! Uncompressed FITS pixels are one big-endian array at a known byte offset, so reading a band
//! of rows is a positioned read (`pread`) plus a conversion. That is several times faster than
//! cfitsio's 2880-byte-record buffering for the row bands a stack streams, and several threads
//! may read one file at once. Values are converted exactly as cfitsio converts them: integers
//! and scaled floats through `f64` (`stored · BSCALE + BZERO`), BLANK → NaN for integers,
//! unscaled floats bit for bit (NaN and infinities kept).
//!
//! Only plain files are read this way (tile-compressed HDUs and gzip-compressed files go
//! through cfitsio); [`DirectImage::new`] decides.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::Header;

/// The stored element type (BITPIX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    U8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl Stored {
    fn from_bitpix(bitpix: i32) -> Option<Self> {
        Some(match bitpix {
            8 => Self::U8,
            16 => Self::I16,
            32 => Self::I32,
            64 => Self::I64,
            -32 => Self::F32,
            -64 => Self::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::I16 => 2,
            Self::I32 | Self::F32 => 4,
            Self::I64 | Self::F64 => 8,
        }
    }
}

/// Bytes converted per chunk: small enough to stay in cache between the read and the
/// conversion.
const CHUNK_BYTES: usize = 256 << 10;

thread_local! {
    /// The bytes of one chunk (as `u64`s, so that they can be viewed as any word size).
    static CHUNK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// A stored big-endian i16 word (as read into a native `u16`) with BZERO 32768 applied:
/// flipping the sign bit maps i16 to u16.
fn stored_to_u16(word: u16) -> u16 {
    u16::from_be(word) ^ 0x8000
}

/// The pixel array of an uncompressed image HDU in a plain file.
#[derive(Debug)]
pub(super) struct DirectImage {
    file: File,
    /// Byte offset of the first pixel.
    offset: u64,
    stored: Stored,
    scale: f64,
    zero: f64,
    /// The stored integer marking undefined pixels.
    blank: Option<i64>,
}

impl DirectImage {
    /// The direct reader of an uncompressed HDU whose data start at byte `offset` of `file`,
    /// or `None` when the file is not stored plainly (gzip-compressed: it does not start
    /// with `SIMPLE`) or BITPIX is not a FITS type.
    pub fn new(file: File, offset: u64, bitpix: i32, header: &Header) -> io::Result<Option<Self>> {
        let Some(stored) = Stored::from_bitpix(bitpix) else {
            return Ok(None);
        };
        let mut magic = [0u8; 6];
        if file.read_exact_at(&mut magic, 0).is_err() || &magic != b"SIMPLE" {
            return Ok(None);
        }
        let integer = bitpix > 0;
        Ok(Some(Self {
            file,
            offset,
            stored,
            scale: header.get_f64("BSCALE").unwrap_or(1.0),
            zero: header.get_f64("BZERO").unwrap_or(0.0),
            blank: header.get_i64("BLANK").filter(|_| integer),
        }))
    }

    /// Whether the values are exactly unsigned 16-bit integers (BITPIX 16, BZERO 32768,
    /// BSCALE 1, no BLANK).
    pub fn is_u16(&self) -> bool {
        self.stored == Stored::I16
            && self.scale == 1.0
            && self.zero == 32768.0
            && self.blank.is_none()
    }

    /// `out.len()` physical values starting at element `first`.
    pub fn read_f32(&self, first: usize, out: &mut [f32]) -> io::Result<()> {
        let size = self.stored.size();
        self.read_chunks(first, out, |bytes, out| {
            let scaled = self.scale != 1.0 || self.zero != 0.0;
            let physical = |v: f64| (v * self.scale + self.zero) as f32;
            let integer = |v: i64| match self.blank {
                Some(b) if b == v => f32::NAN,
                _ => physical(v as f64),
            };
            let words = bytes.chunks_exact(size).zip(out.iter_mut());
            match self.stored {
                Stored::U8 => words.for_each(|(b, o)| *o = integer(i64::from(b[0]))),
                Stored::I16 if self.is_u16() => {
                    let stored: &[u16] = bytemuck::cast_slice(bytes);
                    for (o, &v) in out.iter_mut().zip(stored) {
                        *o = f32::from(stored_to_u16(v));
                    }
                }
                Stored::I16 if self.blank.is_none() && !scaled => {
                    let stored: &[u16] = bytemuck::cast_slice(bytes);
                    for (o, &v) in out.iter_mut().zip(stored) {
                        *o = f32::from(u16::from_be(v) as i16);
                    }
                }
                Stored::I16 if self.blank.is_none() => words
                    .for_each(|(b, o)| *o = physical(f64::from(i16::from_be_bytes([b[0], b[1]])))),
                Stored::I16 => words
                    .for_each(|(b, o)| *o = integer(i64::from(i16::from_be_bytes([b[0], b[1]])))),
                Stored::I32 => words.for_each(|(b, o)| {
                    *o = integer(i64::from(i32::from_be_bytes(
                        b.try_into().expect("4 bytes"),
                    )))
                }),
                Stored::I64 => words.for_each(|(b, o)| {
                    *o = integer(i64::from_be_bytes(b.try_into().expect("8 bytes")))
                }),
                Stored::F32 if !scaled => {
                    words.for_each(|(b, o)| *o = f32::from_be_bytes(b.try_into().expect("4 bytes")))
                }
                Stored::F32 => words.for_each(|(b, o)| {
                    *o = physical(f64::from(f32::from_be_bytes(
                        b.try_into().expect("4 bytes"),
                    )))
                }),
                Stored::F64 => words.for_each(|(b, o)| {
                    *o = physical(f64::from_be_bytes(b.try_into().expect("8 bytes")))
                }),
            }
        })
    }

    /// `out.len()` values starting at element `first` as unsigned 16-bit integers; only for
    /// images where [`DirectImage::is_u16`] holds. Read straight into `out`, then converted
    /// in place.
    pub fn read_u16(&self, first: usize, out: &mut [u16]) -> io::Result<()> {
        self.read_be16(first, out)?;
        for v in out.iter_mut() {
            *v = stored_to_u16(*v);
        }
        Ok(())
    }

    /// Adds `sums.len()` values starting at element `first` to `sums`, reading them through
    /// `scratch` (as long as `sums`); only where [`DirectImage::is_u16`] holds.
    pub fn add_u16(&self, first: usize, sums: &mut [u32], scratch: &mut [u16]) -> io::Result<()> {
        self.read_be16(first, scratch)?;
        for (s, &v) in sums.iter_mut().zip(scratch.iter()) {
            *s += u32::from(stored_to_u16(v));
        }
        Ok(())
    }

    /// The stored 16-bit words, as they are in the file.
    fn read_be16(&self, first: usize, out: &mut [u16]) -> io::Result<()> {
        debug_assert!(self.is_u16());
        self.file.read_exact_at(
            bytemuck::cast_slice_mut(out),
            self.offset + (first * 2) as u64,
        )
    }

    /// Reads the elements `first .. first + out.len()` chunk by chunk and lets `convert` turn
    /// each chunk of bytes into values.
    fn read_chunks<T>(
        &self,
        first: usize,
        out: &mut [T],
        convert: impl Fn(&[u8], &mut [T]),
    ) -> io::Result<()> {
        let size = self.stored.size();
        let per_chunk = (CHUNK_BYTES / size).max(1);
        CHUNK.with_borrow_mut(|buffer| {
            buffer.resize((per_chunk * size).div_ceil(8), 0);
            let buffer: &mut [u8] = bytemuck::cast_slice_mut(buffer);
            for (k, out) in out.chunks_mut(per_chunk).enumerate() {
                let element = first + k * per_chunk;
                let bytes = &mut buffer[..out.len() * size];
                self.file
                    .read_exact_at(bytes, self.offset + (element * size) as u64)?;
                convert(bytes, out);
            }
            Ok(())
        })
    }
}
