"""Reference FITS files, and astropy's view of FITS files, for tests/fits_io.rs.

    fits_make.py make DIR          writes the test files into DIR and prints the cases (JSON)
    fits_make.py describe PATH...  prints astropy's view of each file (JSON list); a path may
                                   end in a [N] / [EXTNAME] selector
    fits_make.py stats PATH...     prints summary statistics of each file's first image:
                                   shape, NaN count, min, max, mean and some pixels (JSON list)
    fits_make.py testdata          prints the FITS files shipped in astropy's and fitsio's
                                   packages, with astropy's view of each (JSON list)

A view ("expect") is either {"error": KIND} with KIND one of the reader's error kinds
(NoImage, EmptyImage, NotAnImage, NoSuchHdu, Dimensions, NotFits, Corrupt), or the image
as our reader must return it: "hdu" (0-based), "shape" (NAXIS1, NAXIS2[, NAXIS3]),
"bitpix" (ZBITPIX for compressed images), "raw_u16" (stored exactly as unsigned 16-bit),
"compressed" (a tile-compressed image), "data" (physical values in file order; NaN as null,
infinities as "inf" / "-inf"), "header" (the cards as Header::to_json gives them) and
"cards" (key, value, comment of every card, in order).
"""

import gzip
import json
import math
import os
import sys
import warnings

import numpy as np
from astropy.io import fits

warnings.simplefilter("ignore")


def physical(path, hdul, header, index):
    """The physical values of an image HDU as float64: BZERO/BSCALE applied, BLANK → NaN."""
    hdu = hdul[index]
    data = np.asarray(hdu.data, dtype=np.float64)
    if isinstance(hdu, fits.CompImageHDU) or header["BITPIX"] < 0 or "BLANK" not in header:
        return data
    # astropy leaves the BLANK pixels of unscaled integer images at their stored value.
    with fits.open(path, do_not_scale_image_data=True) as raw:
        data[raw[index].data == header["BLANK"]] = np.nan
    return data


def encode(values):
    """Pixel values for JSON: NaN as null, infinities as "inf" / "-inf"."""

    def one(v):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v

    return [one(v) for v in values]


def stored_header(path, index):
    """The header as stored (for a compressed image: that of its binary table)."""
    with fits.open(path, disable_image_compression=True) as hdul:
        return hdul[index].header.copy()


def json_value(value):
    """A card value as Header::to_json gives it (astropy's Undefined and complex: null)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return None


def header_json(header):
    """What Header::to_json must give: first value of each key, COMMENT/HISTORY as lists."""
    out = {}
    for card in header.cards:
        key = card.keyword
        if key == "":
            continue
        if key in ("COMMENT", "HISTORY"):
            out.setdefault(key, []).append(str(card.value))
        elif key not in out:
            out[key] = json_value(card.value)
    return out


def header_cards(header):
    return [[c.keyword, json_value(c.value), c.comment] for c in header.cards]


def image_view(path, hdul, headers, index):
    hdu = hdul[index]
    data = hdu.data
    if data is None:
        return {"error": "NotAnImage"}
    if data.size == 0:
        return {"error": "EmptyImage"}
    shape = list(reversed(data.shape))
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) not in (2, 3):
        return {"error": "Dimensions"}
    header = headers[index]
    bitpix = header["BITPIX"]
    values = physical(path, hdul, header, index)
    raw_u16 = (
        bitpix == 16
        and header.get("BZERO") == 32768
        and header.get("BSCALE", 1) == 1
        and "BLANK" not in header
        and not (isinstance(hdu, fits.CompImageHDU) and "ZBLANK" in stored_header(path, index))
    )
    return {
        "hdu": index,
        "shape": shape,
        "bitpix": bitpix,
        "raw_u16": bool(raw_u16),
        "compressed": isinstance(hdu, fits.CompImageHDU),
        "data": encode(values.ravel().tolist()),
        "header": header_json(header),
        "cards": header_cards(header),
    }


def describe(path):
    """astropy's view of PATH (which may end in [N] or [EXTNAME]), as our reader must see it."""
    selector = None
    if not os.path.exists(path) and path.endswith("]") and "[" in path:
        path, selector = path[:-1].rsplit("[", 1)
    if not os.path.exists(path):
        return {"error": "NotFound"}
    try:
        hdul = fits.open(path)
    except Exception:
        with open(path, "rb") as f:
            start = f.read(9)
        fits_like = start.startswith(b"SIMPLE") or start[:2] in (b"\x1f\x8b", b"\x1f\x9d")
        return {"error": "Corrupt" if fits_like else "NotFits"}
    with hdul:
        try:
            hdul.readall()
        except Exception:
            return {"error": "Corrupt"}
        # Copies taken before any data is read: astropy rewrites BITPIX/BZERO/BSCALE of a
        # scaled image's header once its data is scaled.
        headers = [hdu.header.copy() for hdu in hdul]
        try:
            return find_image(path, hdul, headers, selector)
        except Exception:  # noqa: BLE001 - astropy fails to read the data (e.g. truncated)
            return {"error": "Corrupt"}


def find_image(path, hdul, headers, selector):
    """The image a selector names, or the first image with data, as our reader picks it."""
    if selector is not None:
        try:
            index = int(selector)
        except ValueError:
            names = [h.name.upper() for h in hdul]
            if selector.upper() not in names:
                return {"error": "NoSuchHdu"}
            index = names.index(selector.upper())
        if index >= len(hdul):
            return {"error": "NoSuchHdu"}
        if not hdul[index].is_image:
            return {"error": "NotAnImage"}
        return image_view(path, hdul, headers, index)
    empty = False
    for index, hdu in enumerate(hdul):
        if not hdu.is_image or hdu.data is None:
            continue
        if hdu.data.size == 0:
            empty = True
            continue
        return image_view(path, hdul, headers, index)
    return {"error": "EmptyImage" if empty else "NoImage"}


# --- make: the generated test files -------------------------------------------------------

H, W = 7, 9


def pattern(dtype, lo, hi, shape=(H, W)):
    """Values spread over lo..hi (both included) in a fixed order."""
    n = int(np.prod(shape))
    values = np.linspace(lo, hi, n)
    values = values[(np.arange(n) * 13) % n]  # a fixed shuffle (the sizes used are prime to 13)
    return values.astype(dtype).reshape(shape)


def write(path, hdus):
    fits.HDUList(hdus).writeto(path, overwrite=True)


def header_card_zoo():
    h = fits.Header()
    h["OBJECT"] = ("M 94 'core'", "target")
    h["EXPTIME"] = (10.5, "[s] exposure time")
    h["GAIN"] = 80
    h["FLAG"] = True
    h["NOFLAG"] = False
    h["TINY"] = 1.25e-12
    h["NEG"] = -3
    h["UNDEF"] = (None, "no value")
    h["LONGSTR"] = "x" * 50 + " long string that needs CONTINUE cards " + "y" * 50
    h["HIERARCH ESO DET DIT"] = 1.5
    h["DATE-OBS"] = "2024-03-01T21:00:00.123"
    h["COMMENT"] = "a comment"
    h["HISTORY"] = "first history"
    h["HISTORY"] = "second history with 'quotes' and / slashes"
    return h


def make(out):
    cases = []

    def case(name, expect_name=None, selector=None, **extra):
        path = os.path.join(out, name)
        target = path + (f"[{selector}]" if selector is not None else "")
        view = describe(target) if expect_name is None else {"error": expect_name}
        cases.append({"name": name + (f"[{selector}]" if selector is not None else ""), "expect": view, **extra})

    rng = np.random.default_rng(1234)

    # Every BITPIX, unscaled and with the BZERO conventions of unsigned / signed types.
    write(os.path.join(out, "u8.fits"), [fits.PrimaryHDU(pattern(np.uint8, 0, 255))])
    write(os.path.join(out, "i8.fits"), [fits.PrimaryHDU(pattern(np.int8, -128, 127))])
    write(os.path.join(out, "i16.fits"), [fits.PrimaryHDU(pattern(np.int16, -32768, 32767))])
    write(os.path.join(out, "u16.fits"), [fits.PrimaryHDU(pattern(np.uint16, 0, 65535))])
    write(os.path.join(out, "i32.fits"), [fits.PrimaryHDU(pattern(np.int32, -2**31, 2**31 - 1))])
    write(os.path.join(out, "u32.fits"), [fits.PrimaryHDU(pattern(np.uint32, 0, 2**32 - 1))])
    write(os.path.join(out, "i64.fits"), [fits.PrimaryHDU(pattern(np.int64, -2**40, 2**40))])
    write(os.path.join(out, "u64.fits"), [fits.PrimaryHDU(pattern(np.uint64, 0, 2**62))])
    f32 = pattern(np.float32, -1e5, 1e5)
    f32[0, 1] = np.nan
    f32[3, 4] = np.nan
    f32[6, 8] = np.inf
    write(os.path.join(out, "f32.fits"), [fits.PrimaryHDU(f32)])
    f64 = pattern(np.float64, -1e20, 1e20)
    f64[2, 2] = np.nan
    write(os.path.join(out, "f64.fits"), [fits.PrimaryHDU(f64)])
    for name in ["u8", "i8", "i16", "u16", "i32", "u32", "i64", "u64", "f32", "f64"]:
        case(f"{name}.fits")

    # BSCALE/BZERO scaling, and BLANK in integer images (scaled or not).
    scaled = fits.PrimaryHDU(pattern(np.int16, -1000, 1000) * 0.5 + 100.0)
    scaled.scale("int16", bscale=0.5, bzero=100.0)  # stores the integers above
    write(os.path.join(out, "scaled_i16.fits"), [scaled])
    case("scaled_i16.fits")

    blank = fits.PrimaryHDU(pattern(np.int16, -500, 500))
    blank.data[0, 0] = -32768
    blank.data[4, 5] = -32768
    blank.header["BLANK"] = -32768
    write(os.path.join(out, "blank_i16.fits"), [blank])
    case("blank_i16.fits")

    blank32 = fits.PrimaryHDU(pattern(np.int32, -10**6, 10**6) * 0.25 - 7.0)
    blank32.scale("int32", bscale=0.25, bzero=-7.0)
    blank32.data[1, 1] = 999  # a stored value
    blank32.header["BLANK"] = 999
    write(os.path.join(out, "blank_scaled_i32.fits"), [blank32])
    case("blank_scaled_i32.fits")

    # uint16 with BLANK: not plain unsigned 16-bit any more (raw_u16 false).
    blank_u16 = fits.PrimaryHDU(pattern(np.int16, -32768, 32767), do_not_scale_image_data=True)
    blank_u16.header["BZERO"] = 32768
    blank_u16.header["BLANK"] = -32768
    write(os.path.join(out, "blank_u16.fits"), [blank_u16])
    case("blank_u16.fits")

    # Colour cubes (NAXIS3 = 3), float and Seestar-like uint16; and a 4-D file with unit axes.
    write(os.path.join(out, "cube_f32.fits"), [fits.PrimaryHDU(pattern(np.float32, -1, 1, (3, H, W)))])
    write(os.path.join(out, "cube_u16.fits"), [fits.PrimaryHDU(pattern(np.uint16, 0, 65535, (3, H, W)))])
    write(os.path.join(out, "unit_axes.fits"), [fits.PrimaryHDU(pattern(np.int16, 0, 99, (1, 1, H, W)))])
    case("cube_f32.fits")
    case("cube_u16.fits")
    case("unit_axes.fits")

    # Tile compression (astropy writes an empty primary then the compressed image).
    big = (40, 33)  # several row tiles
    ints = pattern(np.int16, -3000, 3000, big)
    u16 = pattern(np.uint16, 0, 65535, big)
    noise = (rng.normal(1000, 30, big)).astype(np.float32)
    noise[5, 5] = np.nan
    # PLIO holds non-negative integers; astropy 8.0.2 crashes (heap corruption) compressing
    # values above about 10**6, so stay well below.
    plio = pattern(np.int32, 0, 65535, big)
    compressed = {
        "rice_i16.fits.fz": fits.CompImageHDU(ints, compression_type="RICE_1"),
        "rice_u16.fits.fz": fits.CompImageHDU(u16, compression_type="RICE_1"),
        "rice_f32.fits.fz": fits.CompImageHDU(noise, compression_type="RICE_1", quantize_level=16),
        "gzip1_f32.fits.fz": fits.CompImageHDU(noise, compression_type="GZIP_1", quantize_level=0),
        "gzip2_i16.fits.fz": fits.CompImageHDU(ints, compression_type="GZIP_2"),
        "hcompress_i16.fits.fz": fits.CompImageHDU(ints, compression_type="HCOMPRESS_1", tile_shape=(16, 33)),
        "hcompress_f32.fits.fz": fits.CompImageHDU(
            noise, compression_type="HCOMPRESS_1", tile_shape=(16, 33), hcomp_scale=2, quantize_level=4
        ),
        "plio.fits.fz": fits.CompImageHDU(plio, compression_type="PLIO_1"),
    }
    for name, hdu in compressed.items():
        write(os.path.join(out, name), [fits.PrimaryHDU(), hdu])
        original = hdu.data.astype(np.float64)
        case(name, original=encode(original.ravel().tolist()))

    # gzip-compressed files, 2-D and a cube.
    for name in ["u16.fits", "cube_f32.fits"]:
        with open(os.path.join(out, name), "rb") as src, gzip.open(os.path.join(out, name + ".gz"), "wb") as dst:
            dst.write(src.read())
        case(name + ".gz")

    # Multi-extension: empty primary, table, then named images; selectors by index and name.
    table = fits.BinTableHDU.from_columns([fits.Column(name="A", format="J", array=np.arange(4))], name="TAB")
    sci = fits.ImageHDU(pattern(np.float32, 0, 1), name="SCI")
    err = fits.ImageHDU(pattern(np.int16, 0, 50), name="ERR")
    write(os.path.join(out, "mef.fits"), [fits.PrimaryHDU(), table, sci, err])
    case("mef.fits")
    for selector in ["2", "3", "ERR", "sci"]:
        case("mef.fits", selector=selector)
    case("mef.fits", selector="1")  # a table
    case("mef.fits", selector="0")  # no data
    case("mef.fits", selector="9")
    case("mef.fits", selector="NOPE")
    case("mef.fits", selector="")

    # Odd file names: spaces, brackets, parentheses, '!' — taken literally.
    odd = "my frame [v2] (copy) !final.fits"
    write(os.path.join(out, odd), [fits.PrimaryHDU(pattern(np.uint16, 0, 65535)), fits.ImageHDU(pattern(np.int16, -5, 5))])
    case(odd)
    case(odd, selector="1")

    # Header cards of every kind.
    write(os.path.join(out, "header.fits"), [fits.PrimaryHDU(pattern(np.float32, 0, 1), header=header_card_zoo())])
    case("header.fits")

    # Files without an image, or broken.
    write(os.path.join(out, "table_only.fits"), [fits.PrimaryHDU(), table])
    case("table_only.fits")
    write(os.path.join(out, "primary_only.fits"), [fits.PrimaryHDU()])
    case("primary_only.fits")
    zero = fits.Header()
    zero["SIMPLE"] = True
    zero["BITPIX"] = 16
    zero["NAXIS"] = 2
    zero["NAXIS1"] = 0
    zero["NAXIS2"] = 5
    with open(os.path.join(out, "zero_size.fits"), "wb") as f:
        f.write(zero.tostring().encode("ascii"))
    case("zero_size.fits")
    write(os.path.join(out, "one_d.fits"), [fits.PrimaryHDU(np.arange(10, dtype=np.int16))])
    case("one_d.fits")
    data = open(os.path.join(out, "u16.fits"), "rb").read()
    open(os.path.join(out, "truncated_data.fits"), "wb").write(data[: 2880 + 40])
    case("truncated_data.fits")
    open(os.path.join(out, "truncated_header.fits"), "wb").write(data[:1000])
    case("truncated_header.fits")
    gz = open(os.path.join(out, "u16.fits.gz"), "rb").read()
    open(os.path.join(out, "truncated.fits.gz"), "wb").write(gz[: len(gz) // 2])
    case("truncated.fits.gz")
    fz = open(os.path.join(out, "rice_i16.fits.fz"), "rb").read()
    open(os.path.join(out, "truncated.fits.fz"), "wb").write(fz[: 2 * 2880 + 200])  # cut in the heap
    case("truncated.fits.fz")
    open(os.path.join(out, "not_fits.fits"), "w").write("just some text, not a FITS file\n" * 100)
    case("not_fits.fits")
    open(os.path.join(out, "empty.fits"), "wb").close()
    case("empty.fits")
    case("missing.fits")
    return cases


# --- testdata: FITS files shipped with astropy and fitsio ---------------------------------


def testdata():
    import fitsio

    dirs = [
        os.path.join(os.path.dirname(fits.__file__), "tests", "data"),
        os.path.join(os.path.dirname(fitsio.__file__), "test_images"),
    ]
    files = []
    for top in dirs:
        for root, _, names in os.walk(top):
            for name in sorted(names):
                # Only FITS files (the fitsio directory also holds the script that made them).
                if name.endswith((".fits", ".fz", ".fits.Z", ".fits.gz", ".fit")):
                    files.append(os.path.join(root, name))
    out = []
    for path in sorted(files):
        try:
            with fits.open(path) as hdul:
                hdul.readall()
            view, reference = describe(path), "astropy"
        except Exception as e:  # noqa: BLE001 - astropy cannot read it (e.g. LZW .Z files)
            view, reference = fitsio_view(path, e)
        out.append({"path": path, "reference": reference, "expect": view})
    return out


def fitsio_view(path, astropy_error):
    """The image through the fitsio package (bundled cfitsio) when astropy cannot read it."""
    import fitsio

    try:
        with fitsio.FITS(path) as f:
            for index, hdu in enumerate(f):
                if hdu.get_exttype() == "IMAGE_HDU" and hdu.get_dims():
                    data = hdu.read().astype(np.float64)
                    header = hdu.read_header()
                    return {
                        "hdu": index,
                        "shape": list(reversed(data.shape)),
                        "bitpix": header["BITPIX"],
                        "data": encode(data.ravel().tolist()),
                    }, f"fitsio (astropy: {type(astropy_error).__name__})"
        return {"error": "NoImage"}, "fitsio"
    except Exception:  # noqa: BLE001
        return {"error": "Corrupt"}, "neither astropy nor fitsio"


def stats(path):
    """Summary statistics of the first image with data (for frames too big to list)."""
    with fits.open(path) as hdul:
        hdu = next(h for h in hdul if h.is_image and h.data is not None and h.data.size)
        data = np.asarray(hdu.data, dtype=np.float64)
    cube = data.reshape((-1,) + data.shape[-2:])
    c, h, w = cube.shape
    positions = [(0, 0, 0), (c - 1, h - 1, w - 1), (0, h // 2, w // 2), (c - 1, 1, w - 2)]
    positions += [(i % c, (i * 7919) % h, (i * 104729) % w) for i in range(20)]
    finite = data[~np.isnan(data)]
    return {
        "shape": list(reversed(data.shape)),
        "nan_count": int(np.isnan(data).sum()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "pixels": [[p[0], p[1], p[2], float(cube[p])] for p in positions],
    }


def main(argv):
    if len(argv) == 3 and argv[1] == "make":
        print(json.dumps(make(argv[2])))
    elif len(argv) >= 3 and argv[1] == "describe":
        print(json.dumps([describe(p) for p in argv[2:]]))
    elif len(argv) >= 3 and argv[1] == "stats":
        print(json.dumps([stats(p) for p in argv[2:]]))
    elif len(argv) == 2 and argv[1] == "testdata":
        print(json.dumps(testdata()))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
