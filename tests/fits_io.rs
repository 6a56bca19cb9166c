//! The FITS layer against astropy: files made by `tests/reference/fits_make.py` (every BITPIX,
//! BZERO/BSCALE, BLANK, tile compression, gzip, multi-extension files and selectors, cubes,
//! odd file names, files without images and broken files), round trips through
//! `write_image`, the FITS files shipped in astropy's and fitsio's packages, and the real
//! Seestar subs when present.

mod common;

use std::path::{Path, PathBuf};

use astroworker::fits::{CardValue, FitsError, FitsReader, Header, OutputType, write_image};
use ndarray::{Array3, s};
use serde_json::Value;

// --- helpers ------------------------------------------------------------------------------

fn reference(args: &[&str]) -> Vec<Value> {
    serde_json::from_str(&common::run_reference("fits_make.py", args))
        .expect("fits_make.py prints JSON")
}

fn describe(paths: &[&Path]) -> Vec<Value> {
    let mut args = vec!["describe"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    reference(&args)
}

fn error_kind(e: &FitsError) -> &'static str {
    match e {
        FitsError::NotFound { .. } => "NotFound",
        FitsError::NotFits { .. } => "NotFits",
        FitsError::NoImage { .. } => "NoImage",
        FitsError::EmptyImage { .. } => "EmptyImage",
        FitsError::NoSuchHdu { .. } => "NoSuchHdu",
        FitsError::NotAnImage { .. } => "NotAnImage",
        FitsError::Dimensions { .. } => "Dimensions",
        FitsError::Corrupt { .. } => "Corrupt",
        FitsError::Write { .. } => "Write",
        FitsError::OutOfRange { .. } => "OutOfRange",
        FitsError::Io { .. } => "Io",
    }
}

fn as_usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Reference values (f64; null = NaN, "inf" / "-inf" = infinities).
fn as_values(v: &Value) -> Vec<f64> {
    let value = |x: &Value| match x.as_str() {
        Some("inf") => f64::INFINITY,
        Some("-inf") => f64::NEG_INFINITY,
        _ => x.as_f64().unwrap_or(f64::NAN),
    };
    v.as_array().unwrap().iter().map(value).collect()
}

/// Our f32 value is the reference rounded to f32 (one rounding step of slack, for 64-bit
/// integers cfitsio converts directly), or within `tolerance` when that is given; NaN where
/// the reference is NaN.
fn close(ours: f32, reference: f64, tolerance: Option<f64>) -> bool {
    if reference.is_nan() || ours.is_nan() {
        return reference.is_nan() && ours.is_nan();
    }
    if reference.is_infinite() {
        return ours as f64 == reference;
    }
    let diff = (ours as f64 - reference).abs();
    match tolerance {
        Some(t) => diff <= t,
        None => ours == reference as f32 || diff <= f32::EPSILON as f64 * reference.abs(),
    }
}

fn assert_pixels(what: &str, ours: &[f32], reference: &[f64], tolerance: Option<f64>) {
    assert_eq!(ours.len(), reference.len(), "{what}: pixel count");
    let bad: Vec<String> = ours
        .iter()
        .zip(reference)
        .enumerate()
        .filter(|(_, (o, r))| !close(**o, **r, tolerance))
        .take(5)
        .map(|(i, (o, r))| format!("#{i}: ours {o} vs {r}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: pixels differ (tolerance {tolerance:?}): {}",
        bad.join(", ")
    );
}

/// Reads every band of `band` rows of every plane (the last band may be shorter) and checks
/// them against the whole image, and the u16 path against it when the file is plain u16.
fn check_bands(what: &str, reader: &mut FitsReader, all: &Array3<f32>, band: usize, raw_u16: bool) {
    let (channels, height, width) = all.dim();
    for c in 0..channels {
        let mut row0 = 0;
        while row0 < height {
            let rows = band.min(height - row0);
            let mut out = vec![0f32; rows * width];
            reader.read_rows(c, row0, &mut out).unwrap();
            let expected: Vec<f32> = all
                .slice(s![c, row0..row0 + rows, ..])
                .iter()
                .copied()
                .collect();
            let same = out
                .iter()
                .zip(&expected)
                .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
            assert!(
                same,
                "{what}: plane {c} rows {row0}..{} differ from the whole read",
                row0 + rows
            );

            let mut raw = vec![0u16; rows * width];
            assert_eq!(
                reader.read_rows_u16(c, row0, &mut raw).unwrap(),
                raw_u16,
                "{what}: u16 path"
            );
            if raw_u16 {
                assert!(
                    raw.iter().zip(&expected).all(|(&r, &e)| r as f32 == e),
                    "{what}: u16 rows differ"
                );
            }
            row0 += rows;
        }
    }
}

/// Opens `path` and checks it against astropy's view `expect` (see fits_make.py).
fn check_against(what: &str, path: &Path, expect: &Value) {
    let opened = FitsReader::open(path);
    if let Some(kind) = expect.get("error") {
        let err = match opened {
            Ok(r) => panic!(
                "{what}: expected {kind}, got an image of shape {:?}",
                r.info().shape
            ),
            Err(e) => e,
        };
        assert_eq!(error_kind(&err), kind.as_str().unwrap(), "{what}: {err}");
        let file_name = path.file_name().unwrap().to_str().unwrap();
        let file_name = file_name.split('[').next().unwrap();
        assert!(
            err.to_string().contains(file_name),
            "{what}: message does not name the file: {err}"
        );
        return;
    }
    let mut reader = opened.unwrap_or_else(|e| panic!("{what}: {e}"));
    let info = reader.info().clone();
    assert_eq!(
        info.hdu,
        expect["hdu"].as_u64().unwrap() as usize,
        "{what}: HDU"
    );
    assert_eq!(info.shape, as_usizes(&expect["shape"]), "{what}: shape");
    assert_eq!(
        info.bitpix as i64,
        expect["bitpix"].as_i64().unwrap(),
        "{what}: BITPIX"
    );

    let all = reader.read_all().unwrap();
    assert_eq!(all.dim(), (info.channels(), info.height(), info.width()));
    assert_pixels(
        what,
        all.as_slice().unwrap(),
        &as_values(&expect["data"]),
        None,
    );
    if let Some(raw_u16) = expect.get("raw_u16") {
        check_bands(what, &mut reader, &all, 3, raw_u16.as_bool().unwrap());
    }
    if let Some(header) = expect.get("header") {
        let mut ours = info.header.to_json();
        let mut theirs = header.as_object().unwrap().clone();
        let compressed = expect["compressed"] == true;
        if compressed {
            // astropy makes up the structural cards a compressed image's table may lack (ours
            // are the stored ones only), and moves BSCALE/BZERO: compare these unordered.
            let made_up = |key: &String, _: &mut Value| {
                !["SIMPLE", "XTENSION", "EXTEND", "PCOUNT", "GCOUNT"].contains(&key.as_str())
            };
            ours.retain(made_up);
            theirs.retain(made_up);
        }
        assert_same_header(what, &ours, &theirs, !compressed);
    }
}

/// Same keys (in the same order when `ordered`), same values; integers beyond i64 (BZERO =
/// 2**63) are floats for us.
fn assert_same_header(
    what: &str,
    ours: &serde_json::Map<String, Value>,
    theirs: &serde_json::Map<String, Value>,
    ordered: bool,
) {
    let keys = |m: &serde_json::Map<String, Value>| {
        let mut keys: Vec<String> = m.keys().cloned().collect();
        if !ordered {
            keys.sort();
        }
        keys
    };
    assert_eq!(keys(ours), keys(theirs), "{what}: header keys");
    for (key, value) in ours {
        let expected = &theirs[key];
        let same = value == expected
            || (expected.is_u64()
                && expected.as_i64().is_none()
                && value.as_f64() == expected.as_f64());
        assert!(
            same,
            "{what}: header {key}: ours {value}, astropy {expected}"
        );
    }
}

// --- generated files ----------------------------------------------------------------------

#[test]
fn generated_files_read_as_astropy_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases = reference(&["make", dir.path().to_str().unwrap()]);
    assert!(cases.len() > 40, "fits_make.py made {} cases", cases.len());
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        check_against(name, &dir.path().join(name), &case["expect"]);
        if let Some(original) = case.get("original") {
            // Compressed data against what was compressed: exact for integers and lossless
            // GZIP, within the quantization step (noise σ 30 over 16 or 4 levels) otherwise.
            let tolerance = match name {
                "rice_f32.fits.fz" => Some(30.0 / 16.0),
                "hcompress_f32.fits.fz" => Some(2.0 * 30.0 / 4.0),
                _ => None,
            };
            let data = FitsReader::open(&dir.path().join(name))
                .unwrap()
                .read_all()
                .unwrap();
            assert_pixels(
                &format!("{name} vs original"),
                data.as_slice().unwrap(),
                &as_values(original),
                tolerance,
            );
        }
    }
}

#[test]
fn bad_requests_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cube.fits");
    write_image(
        &path,
        Array3::<f32>::zeros((3, 10, 8)).view(),
        OutputType::UInt16,
        &Header::new(),
    )
    .unwrap();
    let mut reader = FitsReader::open(&path).unwrap();
    let mut out = vec![0f32; 16];
    reader.read_rows(2, 8, &mut out).unwrap();
    for (channel, row0, len) in [(3, 0, 8), (0, 9, 16), (0, 0, 7), (0, 11, 0)] {
        let mut out = vec![0f32; len];
        let err = reader.read_rows(channel, row0, &mut out).unwrap_err();
        assert!(matches!(err, FitsError::OutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("cube.fits"), "{err}");
        let mut raw = vec![0u16; len];
        assert!(matches!(
            reader.read_rows_u16(channel, row0, &mut raw),
            Err(FitsError::OutOfRange { .. })
        ));
    }
    let err = FitsReader::open(dir.path()).err().unwrap();
    assert!(matches!(err, FitsError::Io { .. }), "{err}");
}

// --- writing ------------------------------------------------------------------------------

fn sample_header() -> Header {
    let mut h = Header::new();
    h.set(
        "OBJECT",
        CardValue::Str("M 94 'core'".into()),
        Some("target"),
    );
    h.set("EXPTIME", CardValue::Float(10.0), Some("[s]"));
    h.set("RA", CardValue::Float(192.7213), None);
    h.set("TRICKY", CardValue::Float(0.1 + 0.2), None);
    h.set("GAIN", CardValue::Int(80), None);
    h.set("BIGINT", CardValue::Int(1 << 40), None);
    h.set("FLAG", CardValue::Bool(true), None);
    h.set("NOTHING", CardValue::Undefined, Some("undefined value"));
    h.set(
        "BADSTAT",
        CardValue::Float(f64::NAN),
        Some("NaN has no FITS form"),
    );
    h.set(
        "LONGSTR",
        CardValue::Str(format!("{} and more", "z".repeat(90))),
        None,
    );
    h.set("ESO DET DIT", CardValue::Float(1.5), None);
    h.set("UNICODE", CardValue::Str("5°C".into()), None);
    h.push_comment("a comment");
    h.push_history("calibrated: dark, flat");
    h.push_history(&"h".repeat(100));
    h.push_history("");
    // Structural cards in the caller's header are replaced by the writer's own.
    h.set("BITPIX", CardValue::Int(8), None);
    h.set("NAXIS1", CardValue::Int(1), None);
    h.set("BZERO", CardValue::Float(1.0), None);
    h.set("EXTNAME", CardValue::Str("SCI".into()), None);
    h
}

/// The non-structural cards `sample_header` must produce in the file, as astropy reads them.
fn expected_cards() -> Vec<(&'static str, Value)> {
    use serde_json::json;
    vec![
        ("OBJECT", json!("M 94 'core'")),
        ("EXPTIME", json!(10.0)),
        ("RA", json!(192.7213)),
        ("TRICKY", json!(0.1 + 0.2)),
        ("GAIN", json!(80)),
        ("BIGINT", json!(1u64 << 40)),
        ("FLAG", json!(true)),
        ("NOTHING", Value::Null),
        ("BADSTAT", Value::Null),
        ("LONGSTR", json!(format!("{} and more", "z".repeat(90)))),
        ("ESO DET DIT", json!(1.5)),
        ("UNICODE", json!("5?C")),
        ("COMMENT", json!("a comment")),
        ("HISTORY", json!("calibrated: dark, flat")),
        ("HISTORY", json!("h".repeat(72))),
        ("HISTORY", json!("h".repeat(28))),
        ("HISTORY", json!("")),
    ]
}

fn test_image(channels: usize, height: usize, width: usize) -> Array3<f32> {
    Array3::from_shape_fn((channels, height, width), |(c, y, x)| {
        (c * 20000 + y * 300 + x * 7) as f32 + 0.25 * ((x + y) % 4) as f32 - 100.0
    })
}

#[test]
fn written_files_round_trip_through_astropy() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("out dir (v2) [x] !");
    std::fs::create_dir(&sub).unwrap();
    let header = sample_header();
    let mut image = test_image(3, 13, 11);
    image[[0, 0, 1]] = f32::NAN;
    image[[1, 2, 3]] = 70000.0;

    let mut jobs = Vec::new();
    for (dtype, channels) in [
        (OutputType::Float32, 1),
        (OutputType::Float32, 3),
        (OutputType::UInt16, 1),
        (OutputType::UInt16, 3),
    ] {
        let path = sub.join(format!("!out {dtype:?} {channels}ch[1].fits"));
        let data = image.slice(s![..channels, .., ..]);
        write_image(&path, data, dtype, &header).unwrap();
        let expected: Array3<f32> = match dtype {
            OutputType::Float32 => data.to_owned(),
            OutputType::UInt16 => data.mapv(|v| {
                if v.is_nan() {
                    0.0
                } else {
                    v.round().clamp(0.0, 65535.0)
                }
            }),
        };
        jobs.push((path, dtype, expected));
    }
    let names: Vec<String> = std::fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "only the outputs are left: {names:?}");

    let paths: Vec<&Path> = jobs.iter().map(|(p, _, _)| p.as_path()).collect();
    let views = describe(&paths);
    for ((path, dtype, expected), view) in jobs.iter().zip(&views) {
        let what = path.file_name().unwrap().to_str().unwrap().to_string();
        // astropy's reading.
        let (channels, height, width) = expected.dim();
        let mut shape = vec![width, height];
        if channels > 1 {
            shape.push(channels);
        }
        assert_eq!(as_usizes(&view["shape"]), shape, "{what}");
        let expected_values: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
        let astropy_values = as_values(&view["data"]);
        assert_pixels(
            &format!("{what} (astropy)"),
            &expected.iter().copied().collect::<Vec<_>>(),
            &astropy_values,
            None,
        );

        // The cards, in order: the structural ones cfitsio writes, then exactly ours.
        let cards = view["cards"].as_array().unwrap();
        let keys: Vec<&str> = cards.iter().map(|c| c[0].as_str().unwrap()).collect();
        let mut structural = vec!["SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2"];
        if channels > 1 {
            structural.push("NAXIS3");
        }
        structural.push("EXTEND");
        if *dtype == OutputType::UInt16 {
            structural.extend(["BZERO", "BSCALE"]);
        }
        assert_eq!(
            keys[..structural.len()],
            structural[..],
            "{what}: structural cards"
        );
        let ours: Vec<(&str, &Value)> = cards[structural.len()..]
            .iter()
            .map(|c| (c[0].as_str().unwrap(), &c[1]))
            .collect();
        let expected_cards = expected_cards();
        let wanted: Vec<(&str, &Value)> = expected_cards.iter().map(|(k, v)| (*k, v)).collect();
        assert_eq!(ours, wanted, "{what}: header cards");
        assert_eq!(
            cards[structural.len()][2],
            "target",
            "{what}: comments are kept"
        );
        let header = &view["header"];
        assert_eq!(
            header["BITPIX"],
            if *dtype == OutputType::Float32 {
                -32
            } else {
                16
            },
            "{what}"
        );
        if *dtype == OutputType::UInt16 {
            assert_eq!(header["BZERO"], 32768, "{what}");
            assert_eq!(header["BSCALE"], 1, "{what}");
        }
        assert!(header.get("EXTNAME").is_none(), "{what}: no EXTNAME");

        // Our reading.
        let mut reader = FitsReader::open(path).unwrap();
        assert_eq!(reader.info().shape, shape, "{what}");
        let data = reader.read_all().unwrap();
        assert_pixels(
            &format!("{what} (ours)"),
            data.as_slice().unwrap(),
            &expected_values,
            None,
        );
        check_bands(&what, &mut reader, &data, 4, *dtype == OutputType::UInt16);
        let read_header = &reader.info().header;
        assert_eq!(read_header.get_str("OBJECT"), Some("M 94 'core'"));
        assert_eq!(
            read_header.get_f64("TRICKY"),
            Some(0.1 + 0.2),
            "floats keep every digit"
        );
        assert_eq!(read_header.get("ESO DET DIT"), Some(&CardValue::Float(1.5)));
        assert_eq!(read_header.get("EXTNAME"), None);

        // Writing what we read gives the same header again (nothing accumulates).
        let again = path.with_file_name("again.fits");
        write_image(&again, data.view(), *dtype, read_header).unwrap();
        let reread = FitsReader::open(&again).unwrap();
        assert_eq!(reread.info().header, *read_header, "{what}: rewrite");
    }
}

#[test]
fn writes_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let image = test_image(1, 5, 4);
    let header = Header::new();
    let files = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };

    // Into a directory that does not exist: a clear error, nothing created.
    let missing = dir.path().join("no such dir").join("out.fits");
    let err = write_image(&missing, image.view(), OutputType::Float32, &header).unwrap_err();
    assert!(matches!(err, FitsError::Write { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("out.fits") && message.contains("does not exist"),
        "{message}"
    );
    assert!(files(dir.path()).is_empty());

    // An existing file is replaced.
    let path = dir.path().join("out.fits");
    std::fs::write(&path, b"old").unwrap();
    write_image(&path, image.view(), OutputType::Float32, &header).unwrap();
    assert_eq!(FitsReader::open(&path).unwrap().read_all().unwrap(), image);
    assert_eq!(files(dir.path()), vec![path.clone()]);

    // A failure after the data is written (the target is a directory, so the rename fails)
    // leaves neither a partial file nor the temporary one.
    let target_dir = dir.path().join("a directory.fits");
    std::fs::create_dir(&target_dir).unwrap();
    std::fs::write(target_dir.join("keep"), b"x").unwrap();
    let err = write_image(&target_dir, image.view(), OutputType::UInt16, &header).unwrap_err();
    assert!(
        matches!(err, FitsError::Write { .. }) && err.to_string().contains("a directory.fits"),
        "{err}"
    );
    let mut left = files(dir.path());
    left.sort();
    assert_eq!(left, vec![target_dir.clone(), path.clone()]);

    // A failure while writing (a keyword cfitsio refuses) leaves the old file as it was, and
    // no temporary file.
    let mut bad = Header::new();
    bad.set("GOOD", CardValue::Int(1), None);
    bad.set("BAD=KEY", CardValue::Int(2), None);
    let err = write_image(&path, image.view(), OutputType::Float32, &bad).unwrap_err();
    assert!(err.to_string().contains("BAD=KEY"), "{err}");
    let mut left = files(dir.path());
    left.sort();
    assert_eq!(left, vec![target_dir.clone(), path.clone()]);

    // Nothing to write.
    let err = write_image(
        &path,
        Array3::<f32>::zeros((1, 0, 4)).view(),
        OutputType::Float32,
        &header,
    )
    .unwrap_err();
    assert!(matches!(err, FitsError::Write { .. }), "{err}");
    assert_eq!(
        FitsReader::open(&path).unwrap().read_all().unwrap(),
        image,
        "the old file is intact"
    );

    // Many threads writing and reading at once (cfitsio is used from rayon workers).
    let outputs: Vec<PathBuf> = (0..16)
        .map(|i| dir.path().join(format!("t{i}.fits")))
        .collect();
    std::thread::scope(|scope| {
        for (i, out) in outputs.iter().enumerate() {
            let image = test_image(1, 40 + i, 30);
            scope.spawn(move || {
                for _ in 0..5 {
                    write_image(out, image.view(), OutputType::UInt16, &Header::new()).unwrap();
                    let back = FitsReader::open(out).unwrap().read_all().unwrap();
                    assert_eq!(back, image.mapv(|v| v.round().clamp(0.0, 65535.0)));
                }
            });
        }
    });
}

/// Readers of the same file in several threads at once (stacks read frames in parallel) do not
/// disturb each other.
#[test]
fn one_file_read_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.fits");
    let image = test_image(3, 120, 90);
    write_image(&path, image.view(), OutputType::Float32, &Header::new()).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (path, image) = (&path, &image);
            scope.spawn(move || {
                let mut reader = FitsReader::open(path).unwrap();
                let mut band = vec![0f32; 7 * 90];
                for i in 0..200 {
                    let (c, row0) = ((i + t) % 3, (i * 37 + t * 11) % (120 - 7));
                    reader.read_rows(c, row0, &mut band).unwrap();
                    let expected = image.slice(s![c, row0..row0 + 7, ..]);
                    assert!(
                        band.iter().zip(expected.iter()).all(|(a, b)| a == b),
                        "thread {t}"
                    );
                }
            });
        }
    });
}

// --- third-party test files ---------------------------------------------------------------

/// Every FITS file in astropy's `io/fits/tests/data` and fitsio's `test_images`: images read
/// as astropy (or, for the LZW-compressed `.Z` file astropy cannot read without an optional
/// package, fitsio) reads them; files without an image (tables, random groups, empty
/// primaries, zero-size images, 1-D images) give the matching typed error.
#[test]
fn astropy_and_fitsio_test_files() {
    let files = reference(&["testdata"]);
    assert!(files.len() >= 35, "found {} files", files.len());
    // Where cfitsio is stricter than astropy, with the reason.
    let deviations = [
        // NAXIS comes before BITPIX: invalid FITS, which astropy reads leniently (and reports
        // with `verify`); it holds no image either way.
        ("verify.fits", serde_json::json!({"error": "Corrupt"})),
    ];
    let mut images = 0;
    for file in &files {
        let path = PathBuf::from(file["path"].as_str().unwrap());
        let name = path.file_name().unwrap().to_str().unwrap();
        let what = format!("{name} ({})", file["reference"]);
        let expect = deviations
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&file["expect"], |(_, e)| e);
        check_against(&what, &path, expect);
        images += usize::from(file["expect"].get("error").is_none());
    }
    assert!(images >= 15, "only {images} images compared");
}

// --- real frames and speed ----------------------------------------------------------------

#[test]
fn seestar_subs_match_astropy() {
    let Some(dir) = common::seestar_dir() else {
        return;
    };
    let paths = common::fits_files(&dir);
    assert!(!paths.is_empty());
    let mut args = vec!["stats"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let stats = reference(&args);
    for (path, stats) in paths.iter().zip(&stats) {
        let mut reader = FitsReader::open(path).unwrap();
        let info = reader.info().clone();
        assert_eq!(info.shape, as_usizes(&stats["shape"]));
        assert_eq!(info.bitpix, 16);
        assert_eq!(info.header.get_str("BAYERPAT"), Some("GRBG"));
        let data = reader.read_all().unwrap();
        let values: Vec<f64> = data.iter().map(|&v| v as f64).collect();
        assert_eq!(
            values.iter().filter(|v| v.is_nan()).count() as u64,
            stats["nan_count"].as_u64().unwrap()
        );
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert_eq!(min, stats["min"].as_f64().unwrap());
        assert_eq!(max, stats["max"].as_f64().unwrap());
        assert!((mean - stats["mean"].as_f64().unwrap()).abs() < 1e-9 * mean);
        for p in stats["pixels"].as_array().unwrap() {
            let p = as_values(p);
            assert_eq!(
                data[[p[0] as usize, p[1] as usize, p[2] as usize]] as f64,
                p[3],
                "{p:?}"
            );
        }
        check_bands(&path.display().to_string(), &mut reader, &data, 64, true);
    }
}
