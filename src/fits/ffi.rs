//! Thin safe wrappers over the cfitsio calls (`fitsio-sys`) the FITS layer needs: opening and
//! creating plain disk files, moving between HDUs, reading header records, reading pixels with
//! NaN for undefined ones, creating an image HDU and writing keys and pixels. The only `unsafe`
//! of the FITS layer lives here.
//!
//! Why not the `fitsio` crate: it opens files with cfitsio's extended file-name syntax (so
//! names containing `[`, `(` or a leading `!` are misread), panics on some images (e.g.
//! unsigned 64-bit), reads undefined pixels without a NaN substitute, reads single keys only
//! and adds `EXTNAME = '_PRIMARY'` to the images it creates.
//!
//! Every call returns [`Status`] on failure: the cfitsio status code and its text. Callers
//! (`read.rs`, `write.rs`) add the file name and what they were doing.
//!
//! Threads: the linked cfitsio must be built reentrant (a unit test checks it). Then distinct
//! [`Fits`] handles may be used from distinct threads at the same time, and a read-only open
//! never shares state with another handle on the same file.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fmt;
use std::ptr::NonNull;

use fitsio_sys as sys;

/// A cfitsio error status (> 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Status(pub c_int);

impl Status {
    /// cfitsio's `END_OF_FILE`: a read past the end of the file (a truncated file).
    pub const END_OF_FILE: Status = Status(sys::END_OF_FILE as c_int);
    /// cfitsio's `BAD_HDU_NUM`: no HDU with that number or name.
    pub const BAD_HDU_NUM: Status = Status(sys::BAD_HDU_NUM as c_int);
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0 as c_char; sys::FLEN_ERRMSG as usize];
        // SAFETY: `ffgerr` writes at most 31 characters and a NUL into `text`, which holds
        // FLEN_ERRMSG (81) bytes, and reads nothing else.
        unsafe { sys::ffgerr(self.0, text.as_mut_ptr()) };
        // SAFETY: `text` was zero-filled and `ffgerr` NUL-terminates what it writes, so it
        // holds a NUL within its length.
        let text = unsafe { CStr::from_ptr(text.as_ptr()) };
        write!(f, "{} (cfitsio status {})", text.to_string_lossy(), self.0)
    }
}

type FitsResult<T> = Result<T, Status>;

fn check(status: c_int) -> FitsResult<()> {
    if status > 0 {
        Err(Status(status))
    } else {
        Ok(())
    }
}

/// Splits the 80-character `card` into its value string (quoted strings keep their quotes
/// and doubled inner quotes; empty when the card has no value) and comment (for commentary
/// cards such as HISTORY: the text from column 9), as cfitsio's `ffpsvc` does. Characters
/// other than ASCII (invalid in a header) read as `?`.
pub(super) fn parse_card(card: &str) -> (String, String) {
    let card: Vec<u8> = card
        .chars()
        .map(|c| {
            if c.is_ascii() && c != '\0' {
                c as u8
            } else {
                b'?'
            }
        })
        .take(80)
        .collect();
    let card = CString::new(card).expect("NUL characters were replaced");
    // Neither part can be longer than the card.
    let mut value = [0 as c_char; sys::FLEN_CARD as usize];
    let mut comment = [0 as c_char; sys::FLEN_CARD as usize];
    let mut status = 0;
    // SAFETY: `card` is NUL-terminated and at most 80 bytes; `ffpsvc` copies parts of it (so
    // at most 80 bytes and a NUL each) into `value` and `comment`, which hold FLEN_CARD (81)
    // bytes. It takes `char *` but does not modify the card.
    unsafe {
        sys::ffpsvc(
            card.as_ptr().cast_mut(),
            value.as_mut_ptr(),
            comment.as_mut_ptr(),
            &mut status,
        )
    };
    if status > 0 {
        // Only malformed complex values fail; keep the card as a comment.
        return (String::new(), String::new());
    }
    (c_buffer_to_string(&value), c_buffer_to_string(&comment))
}

fn c_buffer_to_string(buffer: &[c_char]) -> String {
    let bytes: Vec<u8> = buffer
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The image parameters of the current HDU (for tile-compressed images, those of the image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ImageParams {
    /// BITPIX as stored (ZBITPIX for compressed images).
    pub bitpix: i32,
    /// The type the physical values fit, after BZERO/BSCALE (cfitsio's "equivalent type":
    /// e.g. 20 = `USHORT_IMG` for BITPIX 16 with BZERO 32768).
    pub equivalent_bitpix: i32,
    /// NAXIS1, NAXIS2, … in FITS order.
    pub axes: Vec<i64>,
}

/// An open FITS file; closed (errors ignored) when dropped — use [`Fits::close`] after
/// writing to see them.
pub(super) struct Fits {
    ptr: NonNull<sys::fitsfile>,
}

// SAFETY: cfitsio keeps no thread-bound state in a `fitsfile`; with a reentrant build (checked
// by a test) a handle may be moved to and used from another thread. Every method takes
// `&mut self`, so one thread at a time uses a handle.
unsafe impl Send for Fits {}

impl Fits {
    /// Opens an existing file read-only. The name is used literally (no extended file-name
    /// syntax); gzip/compress-compressed files are decompressed into memory.
    pub fn open_readonly(path: &CStr) -> FitsResult<Fits> {
        let mut ptr = std::ptr::null_mut();
        let mut status = 0;
        // SAFETY: `path` is NUL-terminated; `ffdkopn` stores a new handle in `ptr` on success
        // and leaves it null on failure.
        unsafe {
            sys::fits_open_diskfile(&mut ptr, path.as_ptr(), sys::READONLY as c_int, &mut status)
        };
        Self::from_status(ptr, status)
    }

    /// Creates a new, empty file (fails if it exists). The name is used literally.
    pub fn create(path: &CStr) -> FitsResult<Fits> {
        let mut ptr = std::ptr::null_mut();
        let mut status = 0;
        // SAFETY: as for `open_readonly`.
        unsafe { sys::fits_create_diskfile(&mut ptr, path.as_ptr(), &mut status) };
        Self::from_status(ptr, status)
    }

    fn from_status(ptr: *mut sys::fitsfile, status: c_int) -> FitsResult<Fits> {
        check(status)?;
        // cfitsio returns a handle whenever the status is 0; treat a null one as "not opened".
        NonNull::new(ptr)
            .map(|ptr| Fits { ptr })
            .ok_or(Status(sys::FILE_NOT_OPENED as c_int))
    }

    fn raw(&mut self) -> *mut sys::fitsfile {
        self.ptr.as_ptr()
    }

    /// Flushes and closes the file, reporting write errors.
    pub fn close(self) -> FitsResult<()> {
        let mut this = std::mem::ManuallyDrop::new(self);
        let mut status = 0;
        // SAFETY: the handle is valid and, wrapped in `ManuallyDrop`, is not closed again.
        unsafe { sys::ffclos(this.raw(), &mut status) };
        check(status)
    }

    /// Makes HDU `index` (0 = primary) current.
    pub fn move_to_hdu(&mut self, index: usize) -> FitsResult<()> {
        let number = c_int::try_from(index + 1).map_err(|_| Status::BAD_HDU_NUM)?;
        let mut status = 0;
        // SAFETY: valid handle; a null `exttype` is allowed.
        unsafe { sys::fits_movabs_hdu(self.raw(), number, std::ptr::null_mut(), &mut status) };
        check(status)
    }

    /// Makes the first HDU whose EXTNAME (or HDUNAME) is `name` current (case-insensitive)
    /// and returns its index; `Status::BAD_HDU_NUM` when there is none.
    pub fn move_to_named_hdu(&mut self, name: &CStr) -> FitsResult<usize> {
        let mut status = 0;
        let mut number = 0;
        // SAFETY: valid handle; `ffmnhd` takes `char *` but only reads the NUL-terminated name.
        unsafe {
            sys::fits_movnam_hdu(
                self.raw(),
                sys::ANY_HDU,
                name.as_ptr().cast_mut(),
                0,
                &mut status,
            );
            sys::ffghdn(self.raw(), &mut number);
        }
        check(status).map(|_| number as usize - 1)
    }

    /// Whether the current HDU is an image (tile-compressed images included).
    pub fn is_image(&mut self) -> FitsResult<bool> {
        let mut kind = 0;
        let mut status = 0;
        // SAFETY: valid handle; `ffghdt` writes one int.
        unsafe { sys::fits_get_hdu_type(self.raw(), &mut kind, &mut status) };
        check(status).map(|_| kind == sys::IMAGE_HDU as c_int)
    }

    /// Whether the current HDU is a tile-compressed image.
    pub fn is_compressed_image(&mut self) -> FitsResult<bool> {
        let mut status = 0;
        // SAFETY: valid handle.
        let compressed = unsafe { sys::fits_is_compressed_image(self.raw(), &mut status) };
        check(status).map(|_| compressed != 0)
    }

    /// The byte offset of the current HDU's data in the (uncompressed) file.
    pub fn data_offset(&mut self) -> FitsResult<u64> {
        let (mut header, mut data, mut end) = (0, 0, 0);
        let mut status = 0;
        // SAFETY: valid handle; `ffghadll` writes three integers.
        unsafe { sys::ffghadll(self.raw(), &mut header, &mut data, &mut end, &mut status) };
        check(status).map(|_| data as u64)
    }

    /// BITPIX and axes of the current (image) HDU.
    pub fn image_params(&mut self) -> FitsResult<ImageParams> {
        let (mut bitpix, mut equivalent_bitpix, mut naxis) = (0, 0, 0);
        let mut status = 0;
        // SAFETY: valid handle; each call writes one int.
        unsafe {
            sys::fits_get_img_type(self.raw(), &mut bitpix, &mut status);
            sys::fits_get_img_equivtype(self.raw(), &mut equivalent_bitpix, &mut status);
            sys::ffgidm(self.raw(), &mut naxis, &mut status);
        }
        check(status)?;
        let mut axes = vec![0i64; naxis.max(0) as usize];
        // SAFETY: `axes` holds `naxis` elements, the most `ffgiszll` writes.
        unsafe { sys::ffgiszll(self.raw(), naxis, axes.as_mut_ptr(), &mut status) };
        check(status)?;
        Ok(ImageParams {
            bitpix,
            equivalent_bitpix,
            axes,
        })
    }

    /// The 80-character header records of the current HDU as stored (for a tile-compressed
    /// image: those of its binary table), END excluded.
    pub fn header_records(&mut self) -> FitsResult<Vec<String>> {
        let mut text: *mut c_char = std::ptr::null_mut();
        let mut count = 0;
        let mut status = 0;
        // SAFETY: valid handle; no exclusion list. `ffhdr2str` sets `text` to a NUL-terminated
        // malloc'ed string of 80-character records (or leaves it null on failure).
        unsafe {
            sys::fits_hdr2str(
                self.raw(),
                0,
                std::ptr::null_mut(),
                0,
                &mut text,
                &mut count,
                &mut status,
            )
        };
        let records = (!text.is_null()).then(|| {
            // SAFETY: `text` is the NUL-terminated string cfitsio just allocated.
            let all = unsafe { CStr::from_ptr(text) }.to_bytes().to_vec();
            let mut free_status = 0;
            // SAFETY: `text` was allocated by cfitsio, is freed once, by cfitsio, and not used
            // afterwards.
            unsafe { sys::fits_free_memory(text.cast::<c_void>(), &mut free_status) };
            all
        });
        check(status)?;
        Ok(records
            .unwrap_or_default()
            .chunks(80)
            .map(|record| String::from_utf8_lossy(record).into_owned())
            .filter(|record| record.trim_end() != "END")
            .collect())
    }

    /// Whether the current HDU's header (as stored: the table header for a compressed image)
    /// has the keyword `key`.
    pub fn has_stored_key(&mut self, key: &CStr) -> FitsResult<bool> {
        let mut card = [0 as c_char; sys::FLEN_CARD as usize];
        let mut status = 0;
        // SAFETY: valid handle; `ffgcrd` reads the NUL-terminated name and writes at most a
        // card (80 characters + NUL) into `card`.
        unsafe { sys::fits_read_card(self.raw(), key.as_ptr(), card.as_mut_ptr(), &mut status) };
        match status {
            0 => Ok(true),
            s if s == sys::KEY_NO_EXIST as c_int => Ok(false),
            s => Err(Status(s)),
        }
    }

    /// Reads `out.len()` pixels of the current image starting at element `first` (0-based, in
    /// file order) as physical f32 values. With `undefined_as_nan`, undefined pixels (BLANK in
    /// integer images, and all IEEE NaN and infinities in float ones) become NaN; without,
    /// values are converted as stored.
    pub fn read_f32(
        &mut self,
        first: usize,
        out: &mut [f32],
        undefined_as_nan: bool,
    ) -> FitsResult<()> {
        let mut nan = f32::NAN;
        let substitute: *mut c_void = if undefined_as_nan {
            (&mut nan as *mut f32).cast()
        } else {
            std::ptr::null_mut()
        };
        let mut any_undefined = 0;
        let mut status = 0;
        // SAFETY: valid handle; `ffgpv` with TFLOAT writes exactly `out.len()` f32 into `out`
        // and reads one f32 substitute from `substitute` unless it is null.
        unsafe {
            sys::fits_read_img(
                self.raw(),
                sys::TFLOAT as c_int,
                first as i64 + 1,
                out.len() as i64,
                substitute,
                out.as_mut_ptr().cast::<c_void>(),
                &mut any_undefined,
                &mut status,
            )
        };
        check(status)
    }

    /// Reads `out.len()` pixels starting at element `first` (0-based) as unsigned 16-bit
    /// values (BZERO/BSCALE applied, no undefined-pixel check).
    pub fn read_u16(&mut self, first: usize, out: &mut [u16]) -> FitsResult<()> {
        let mut any_undefined = 0;
        let mut status = 0;
        // SAFETY: valid handle; `ffgpv` with TUSHORT writes exactly `out.len()` u16 into
        // `out`; a null substitute pointer disables undefined-pixel checks.
        unsafe {
            sys::fits_read_img(
                self.raw(),
                sys::TUSHORT as c_int,
                first as i64 + 1,
                out.len() as i64,
                std::ptr::null_mut(),
                out.as_mut_ptr().cast::<c_void>(),
                &mut any_undefined,
                &mut status,
            )
        };
        check(status)
    }

    /// Appends an image HDU (the primary one in a new file). `bitpix` takes cfitsio's image
    /// types (e.g. `USHORT_IMG` writes BITPIX 16 with BZERO 32768 and BSCALE 1).
    pub fn create_image(&mut self, bitpix: i32, axes: &[i64]) -> FitsResult<()> {
        let mut axes = axes.to_vec();
        let mut status = 0;
        // SAFETY: valid handle; `ffcrimll` reads `axes.len()` values (it takes a mutable
        // pointer but does not write through it).
        unsafe {
            sys::fits_create_imgll(
                self.raw(),
                bitpix,
                axes.len() as c_int,
                axes.as_mut_ptr(),
                &mut status,
            )
        };
        check(status)
    }

    /// Deletes the header record at `index` (0-based) of the current HDU.
    pub fn delete_record(&mut self, index: usize) -> FitsResult<()> {
        let position =
            c_int::try_from(index + 1).map_err(|_| Status(sys::KEY_OUT_BOUNDS as c_int))?;
        let mut status = 0;
        // SAFETY: valid handle.
        unsafe { sys::fits_delete_record(self.raw(), position, &mut status) };
        check(status)
    }

    pub fn write_bool(&mut self, key: &CStr, value: bool, comment: &CStr) -> FitsResult<()> {
        let mut status = 0;
        // SAFETY: valid handle; key and comment are NUL-terminated and only read.
        unsafe {
            sys::fits_write_key_log(
                self.raw(),
                key.as_ptr(),
                c_int::from(value),
                comment.as_ptr(),
                &mut status,
            )
        };
        check(status)
    }

    pub fn write_int(&mut self, key: &CStr, value: i64, comment: &CStr) -> FitsResult<()> {
        let mut status = 0;
        // SAFETY: valid handle; key and comment are NUL-terminated and only read.
        unsafe {
            sys::fits_write_key_lng(
                self.raw(),
                key.as_ptr(),
                value,
                comment.as_ptr(),
                &mut status,
            )
        };
        check(status)
    }

    /// Writes a finite float with `digits` significant digits (15 to 17).
    pub fn write_float(
        &mut self,
        key: &CStr,
        value: f64,
        digits: i32,
        comment: &CStr,
    ) -> FitsResult<()> {
        let mut status = 0;
        // SAFETY: valid handle; key and comment are NUL-terminated and only read.
        unsafe {
            sys::fits_write_key_dbl(
                self.raw(),
                key.as_ptr(),
                value,
                -digits,
                comment.as_ptr(),
                &mut status,
            )
        };
        check(status)
    }

    /// Writes a string value; long ones continue on CONTINUE cards.
    pub fn write_str(&mut self, key: &CStr, value: &CStr, comment: &CStr) -> FitsResult<()> {
        let mut status = 0;
        // SAFETY: valid handle; key, value and comment are NUL-terminated and only read.
        unsafe {
            sys::fits_write_key_longstr(
                self.raw(),
                key.as_ptr(),
                value.as_ptr(),
                comment.as_ptr(),
                &mut status,
            )
        };
        check(status)
    }

    /// Writes a keyword with an undefined value.
    pub fn write_undefined(&mut self, key: &CStr, comment: &CStr) -> FitsResult<()> {
        let mut status = 0;
        // SAFETY: valid handle; key and comment are NUL-terminated and only read.
        unsafe {
            sys::fits_write_key_null(self.raw(), key.as_ptr(), comment.as_ptr(), &mut status)
        };
        check(status)
    }

    /// Appends a raw 80-character header record (commentary cards).
    pub fn write_record(&mut self, card: &CStr) -> FitsResult<()> {
        let mut status = 0;
        // SAFETY: valid handle; the card is NUL-terminated and only read.
        unsafe { sys::fits_write_record(self.raw(), card.as_ptr(), &mut status) };
        check(status)
    }

    /// Writes all pixels of the current image from f32 values (in file order).
    pub fn write_f32(&mut self, data: &[f32]) -> FitsResult<()> {
        let mut status = 0;
        // SAFETY: valid handle; `ffppr` with TFLOAT reads `data.len()` f32. It takes a mutable
        // pointer but converts/byte-swaps into its own buffer, never writing to `data`.
        unsafe {
            sys::fits_write_img(
                self.raw(),
                sys::TFLOAT as c_int,
                1,
                data.len() as i64,
                data.as_ptr().cast_mut().cast::<c_void>(),
                &mut status,
            )
        };
        check(status)
    }

    /// Writes all pixels of the current image from u16 values (in file order).
    pub fn write_u16(&mut self, data: &[u16]) -> FitsResult<()> {
        let mut status = 0;
        // SAFETY: as for `write_f32`, with `data.len()` u16 read.
        unsafe {
            sys::fits_write_img(
                self.raw(),
                sys::TUSHORT as c_int,
                1,
                data.len() as i64,
                data.as_ptr().cast_mut().cast::<c_void>(),
                &mut status,
            )
        };
        check(status)
    }
}

impl Drop for Fits {
    fn drop(&mut self) {
        let mut status = 0;
        // SAFETY: the handle is valid and closed only here (`close` skips this drop).
        unsafe { sys::ffclos(self.raw(), &mut status) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_cfitsio_is_reentrant() {
        // SAFETY: `fits_is_reentrant` only returns a compile-time constant.
        let reentrant = unsafe { sys::fits_is_reentrant() } != 0;
        assert!(
            reentrant,
            "astroworker reads and writes FITS files from several threads"
        );
    }

    #[test]
    fn status_text_names_the_error() {
        assert_eq!(
            Status::END_OF_FILE.to_string(),
            "tried to move past end of file (cfitsio status 107)"
        );
    }

    #[test]
    fn parse_card_splits_value_and_comment() {
        let (v, c) = parse_card("EXPTIME =                 10.5 / [s] exposure time");
        assert_eq!((v.as_str(), c.as_str()), ("10.5", "[s] exposure time"));
        let (v, c) = parse_card("OBJECT  = 'M 94 ''core'''   / target");
        assert_eq!((v.as_str(), c.as_str()), ("'M 94 ''core'''", "target"));
        let (v, c) = parse_card("HISTORY   calibrated / dark subtracted");
        assert_eq!(
            (v.as_str(), c.as_str()),
            ("", "  calibrated / dark subtracted")
        );
        let (v, c) = parse_card("UNDEF   =                      / nothing");
        assert_eq!((v.as_str(), c.as_str()), ("", "nothing"));
        // A value longer than a standard card allows: cfitsio cuts it at 70 characters.
        let (v, c) = parse_card(&format!("A='{}'", "x".repeat(75)));
        assert_eq!((v.len(), c.as_str()), (70, "xxxxxx'"));
        let (v, _) = parse_card("TEXT    = '5°C'");
        assert_eq!(v, "'5?C'");
    }
}
