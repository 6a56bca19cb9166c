//! `fits.master`, `fits.calibrate`, `fits.debayer`, `fits.preview`, the master frames shared
//! with `fits.stack`, and the parsing of their text parameters.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayView3, Axis};
use rayon::prelude::*;
use serde_json::{Value, json};

use super::frames::{FrameSet, bayer_pattern, exposure};
use super::{PipelineError, Progress, Result, ensure_parent};
use crate::compute::Compute;
use crate::fits::{self, CardValue, FitsReader, Header, OutputType};
use crate::science::calibrate::{
    self, ApplyOptions, DarkScaling, DefectMap, FramePrep, MasterDark, Masters, combine_band,
    frame_levels, normalize_flat,
};
use crate::science::cfa::{BayerPattern, DebayerMethod};
use crate::science::preview::write_preview;
use crate::science::stack::Method;
use crate::science::stats::image_stats;
use crate::science::stretch::{self, Stretch};

impl From<calibrate::CalibrateError> for PipelineError {
    fn from(e: calibrate::CalibrateError) -> Self {
        PipelineError::Invalid(format!("calibration: {e}"))
    }
}

pub fn parse_dtype(s: &str) -> Result<OutputType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "float32" | "float" | "f32" => Ok(OutputType::Float32),
        "uint16" | "u16" => Ok(OutputType::UInt16),
        other => Err(PipelineError::Invalid(format!(
            "dtype must be float32 or uint16, not {other:?}"
        ))),
    }
}

pub fn parse_dark_scaling(s: &str) -> Result<DarkScaling> {
    DarkScaling::parse(s).ok_or_else(|| {
        PipelineError::Invalid(format!("dark_scaling must be exposure or none, not {s:?}"))
    })
}

/// `auto` → `None` (read the header); otherwise a pattern name.
pub fn parse_pattern(s: &str) -> Result<Option<BayerPattern>> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    BayerPattern::parse(s).map(Some).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "pattern must be auto, RGGB, BGGR, GRBG or GBRG, not {s:?}"
        ))
    })
}

pub fn parse_debayer_method(s: &str) -> Result<DebayerMethod> {
    DebayerMethod::parse(s).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "method must be bilinear, vng, rcd or superpixel, not {s:?}"
        ))
    })
}

pub fn parse_stretch(s: &str) -> Result<Stretch> {
    Stretch::parse(s).ok_or_else(|| {
        PipelineError::Invalid(format!("stretch must be auto, asinh or linear, not {s:?}"))
    })
}

/// Master frame files given to `calibrate` and `stack`.
#[derive(Debug, Clone, Default)]
pub struct MasterFiles {
    pub bias: Option<PathBuf>,
    pub dark: Option<PathBuf>,
    pub flat: Option<PathBuf>,
    pub dark_scaling: DarkScaling,
    pub cosmetic: bool,
}

/// Masters loaded for a set of lights, and the defects found in the dark.
pub struct LoadedMasters {
    pub masters: Masters,
    pub defects: Option<DefectMap>,
    /// One HISTORY line per master used.
    pub history: Vec<String>,
}

impl LoadedMasters {
    pub fn is_empty(&self) -> bool {
        self.masters == Masters::default()
    }

    /// Per-light options (the exposure comes from each light's header).
    pub fn options(&self, scaling: DarkScaling, frames: &FrameSet) -> Vec<ApplyOptions> {
        frames
            .frames
            .iter()
            .map(|f| ApplyOptions {
                dark_scaling: scaling,
                light_exposure: f.exposure(),
            })
            .collect()
    }
}

/// Reads the masters (single planes of the lights' size). A flat is normalised again per CFA
/// channel, which changes nothing for a flat made by `fits.master`. With `cosmetic`, hot and
/// cold pixels are located in the dark (its thermal part when a bias is given).
pub fn load_masters(
    files: &MasterFiles,
    width: usize,
    height: usize,
    cfa: bool,
) -> Result<LoadedMasters> {
    let read_plane = |path: &Path| -> Result<(Array2<f32>, Header)> {
        let mut reader = FitsReader::open(path)?;
        let info = reader.info().clone();
        if (info.width(), info.height(), info.channels()) != (width, height, 1) {
            return Err(PipelineError::ShapeMismatch {
                path: path.to_path_buf(),
                width: info.width(),
                height: info.height(),
                channels: info.channels(),
                expected: format!("{width}×{height}×1 (the lights)"),
            });
        }
        let data = reader.read_all()?.index_axis_move(Axis(0), 0);
        Ok((data, info.header))
    };
    let mut history = Vec::new();
    let bias = files
        .bias
        .as_deref()
        .map(|p| {
            history.push(format!("calibration: master bias {}", p.display()));
            read_plane(p).map(|(d, _)| d)
        })
        .transpose()?;
    let dark = files
        .dark
        .as_deref()
        .map(|p| {
            let (data, header) = read_plane(p)?;
            let exposure = header
                .get_f64("EXPTIME")
                .or_else(|| header.get_f64("EXPOSURE"));
            history.push(format!(
                "calibration: master dark {} ({} s, scaling {:?})",
                p.display(),
                exposure.map_or_else(|| "?".into(), |e| e.to_string()),
                files.dark_scaling
            ));
            Ok::<_, PipelineError>(MasterDark { data, exposure })
        })
        .transpose()?;
    let flat = files
        .flat
        .as_deref()
        .map(|p| {
            let (mut data, _) = read_plane(p)?;
            normalize_flat(data.view_mut(), cfa)?;
            history.push(format!(
                "calibration: master flat {} (normalised per CFA channel)",
                p.display()
            ));
            Ok::<_, PipelineError>(data)
        })
        .transpose()?;
    let defects = match (&dark, files.cosmetic) {
        (Some(d), true) => {
            let thermal = match &bias {
                Some(b) => &d.data - b,
                None => d.data.clone(),
            };
            let map = DefectMap::from_dark(thermal.view(), calibrate::DEFAULT_COSMETIC_KAPPA);
            history.push(format!(
                "cosmetic: {} hot/cold pixels from the master dark (kappa {})",
                map.len(),
                calibrate::DEFAULT_COSMETIC_KAPPA
            ));
            Some(map)
        }
        _ => None,
    };
    Ok(LoadedMasters {
        masters: Masters { bias, dark, flat },
        defects,
        history,
    })
}

/// The output header: the first input's meaningful cards, plus what every output gets.
/// `cfa` keeps the Bayer cards (the output is still a mosaic).
pub fn output_header(first: &Header, cfa: bool) -> Header {
    const CARRIED: &[&str] = &[
        "OBJECT", "INSTRUME", "TELESCOP", "OBSERVER", "FILTER", "GAIN", "OFFSET", "DATE-OBS", "RA",
        "DEC", "OBJCTRA", "OBJCTDEC", "EQUINOX", "SITELAT", "SITELONG", "FOCALLEN", "XPIXSZ",
        "YPIXSZ", "XBINNING", "YBINNING", "CCD-TEMP", "IMAGETYP",
    ];
    const CFA: &[&str] = &["BAYERPAT", "XBAYROFF", "YBAYROFF", "ROWORDER"];
    let mut h = Header::new();
    for card in first.cards() {
        let key = card.key.as_str();
        if CARRIED.contains(&key) || (cfa && CFA.contains(&key)) {
            h.set(key, card.value.clone(), card.comment.as_deref());
        }
    }
    h.set(
        "CREATOR",
        CardValue::Str(format!("astroworker {}", env!("CARGO_PKG_VERSION"))),
        Some("software that created this file"),
    );
    h
}

/// The cards every stack carries: EXPTIME and LIVETIME as the exposure total (when known) and
/// STACKCNT.
pub fn set_stack_totals(h: &mut Header, exposure: f64, frames: usize) {
    if exposure > 0.0 {
        for key in ["EXPTIME", "LIVETIME"] {
            h.set(
                key,
                CardValue::Float(exposure),
                Some("[s] total exposure of the stacked frames"),
            );
        }
    }
    h.set(
        "STACKCNT",
        CardValue::Int(frames as i64),
        Some("frames stacked"),
    );
}

/// Writes one plane or cube, creating the directory.
pub fn write_output(
    path: &Path,
    data: ArrayView3<f32>,
    dtype: OutputType,
    header: &Header,
) -> Result<()> {
    ensure_parent(path)?;
    fits::write_image(path, data, dtype, header)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterKind {
    Bias,
    Dark,
    Flat,
}

impl MasterKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bias" | "offset" => Some(Self::Bias),
            "dark" => Some(Self::Dark),
            "flat" => Some(Self::Flat),
            _ => None,
        }
    }

    fn imagetyp(&self) -> &'static str {
        match self {
            Self::Bias => "Master Bias",
            Self::Dark => "Master Dark",
            Self::Flat => "Master Flat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterMethod {
    Median,
    /// Sigma-clipped mean (κ = 3, 5 iterations).
    SigmaClip,
}

impl MasterMethod {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "median" => Some(Self::Median),
            "sigma_clip" | "sigma-clip" | "mean" => Some(Self::SigmaClip),
            _ => None,
        }
    }

    fn method(&self) -> Method {
        match self {
            Self::Median => Method::Median,
            Self::SigmaClip => Method::SigmaClip {
                low: 3.0,
                high: 3.0,
                iterations: 5,
            },
        }
    }
}

pub struct MasterParams {
    pub kind: MasterKind,
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub method: MasterMethod,
    /// Subtracted from flats (a flat-dark in `dark` takes precedence: it contains the bias).
    pub bias: Option<PathBuf>,
    pub dark: Option<PathBuf>,
}

/// `fits.master` → `{"output", "frames", "stats"}`. Bias and dark frames are combined as they
/// are (a master dark keeps its bias; calibration removes it). Flats have the flat-dark or the
/// bias subtracted, are scaled to a common level, combined and normalised per CFA channel.
/// Frames are combined band by band, so memory stays bounded.
pub fn master(p: &MasterParams, progress: &dyn Progress) -> Result<Value> {
    if p.kind != MasterKind::Flat && (p.bias.is_some() || p.dark.is_some()) {
        return Err(PipelineError::Invalid(
            "bias and dark only apply to flats (bias and dark masters keep their pedestal; \
             calibration removes it)"
                .into(),
        ));
    }
    let frames = FrameSet::open(&p.inputs)?;
    if frames.channels != 1 {
        return Err(PipelineError::Invalid(
            "masters are made from 2-D frames".into(),
        ));
    }
    let (w, h, n) = (frames.width, frames.height, frames.len());
    let cfa = bayer_pattern(&frames.frames[0].info).is_some();
    let offset_path = p.dark.as_ref().or(p.bias.as_ref());
    let offset = offset_path
        .map(|path| {
            load_masters(
                &MasterFiles {
                    bias: Some(path.clone()),
                    ..MasterFiles::default()
                },
                w,
                h,
                cfa,
            )
        })
        .transpose()?
        .and_then(|m| m.masters.bias);
    let bands = band_rows(n, w, h, super::stack::DEFAULT_MEMORY_BUDGET);
    let total = (if p.kind == MasterKind::Flat { n } else { 0 } + h.div_ceil(bands) + 1) as u64;
    let mut done = 0u64;
    let levels = if p.kind == MasterKind::Flat {
        let levels = frames
            .frames
            .iter()
            .map(|f| {
                progress.checkpoint()?;
                let data = f.read_all()?.index_axis_move(Axis(0), 0);
                let l = frame_levels(data.view(), offset.as_ref().map(|o| o.view()), cfa)?;
                done += 1;
                progress.report(done, total, "measuring flats");
                Ok(l)
            })
            .collect::<Result<Vec<_>>>()?;
        Some(levels)
    } else {
        None
    };
    let prep = FramePrep {
        offset: offset.as_ref().map(|o| o.view()),
        levels: levels.as_deref(),
    };
    let method = p.method.method();
    let mut master = Array2::<f32>::zeros((h, w));
    let mut buffer = ndarray::Array3::<f32>::zeros((n, bands, w));
    for row0 in (0..h).step_by(bands) {
        progress.checkpoint()?;
        let rows = bands.min(h - row0);
        let mut band = buffer.slice_mut(ndarray::s![.., ..rows, ..]);
        frames.read_band(0, row0, band.view_mut())?;
        combine_band(
            &method,
            band,
            row0,
            &prep,
            master.slice_mut(ndarray::s![row0..row0 + rows, ..]),
        )?;
        done += 1;
        progress.report(done, total, "combining");
    }
    if p.kind == MasterKind::Flat {
        normalize_flat(master.view_mut(), cfa)?;
    }
    let first = &frames.frames[0].info.header;
    let mut header = output_header(first, true);
    header.set("IMAGETYP", CardValue::Str(p.kind.imagetyp().into()), None);
    let exposures: Vec<f64> = frames.frames.iter().filter_map(|f| f.exposure()).collect();
    if !exposures.is_empty() {
        let mean = exposures.iter().sum::<f64>() / exposures.len() as f64;
        header.set(
            "EXPTIME",
            CardValue::Float(mean),
            Some("[s] exposure of the combined frames"),
        );
    }
    header.set(
        "STACKCNT",
        CardValue::Int(n as i64),
        Some("frames combined"),
    );
    header.push_history(&format!(
        "master {}: {n} frames combined by {}",
        p.kind.imagetyp().to_lowercase(),
        method.name()
    ));
    if let Some(path) = offset_path {
        header.push_history(&format!(
            "master flat: {} subtracted from each flat",
            path.display()
        ));
    }
    if p.kind == MasterKind::Flat {
        header.push_history("master flat: normalised per CFA channel (median 1)");
    }
    let cube = master.insert_axis(Axis(0));
    write_output(&p.output, cube.view(), OutputType::Float32, &header)?;
    progress.report(total, total, "done");
    let stats = image_stats(cube.as_slice().expect("contiguous"));
    Ok(json!({
        "output": p.output.display().to_string(),
        "frames": n,
        "stats": serde_json::to_value(stats).expect("serializable"),
    }))
}

/// Rows per band so that `frames × rows × width` f32 fit in `budget` bytes (at least 2).
pub fn band_rows(frames: usize, width: usize, height: usize, budget: usize) -> usize {
    let per_row = frames.max(1) * width.max(1) * std::mem::size_of::<f32>();
    (budget / per_row).clamp(2, height.max(2)) & !1
}

pub struct CalibrateParams {
    pub inputs: Vec<PathBuf>,
    pub output_dir: PathBuf,
    pub masters: MasterFiles,
    pub dtype: OutputType,
}

/// `fits.calibrate` → `{"outputs", "frames"}`: each light calibrated, cosmetically corrected
/// (hot/cold pixels of the dark, plus outliers of the light itself), written under the same
/// file name in `output_dir`.
pub fn calibrate(p: &CalibrateParams, progress: &dyn Progress) -> Result<Value> {
    let frames = FrameSet::open(&p.inputs)?;
    if frames.channels != 1 {
        return Err(PipelineError::Invalid(
            "calibration works on 2-D (mono or CFA) frames".into(),
        ));
    }
    let cfa = bayer_pattern(&frames.frames[0].info).is_some();
    let loaded = load_masters(&p.masters, frames.width, frames.height, cfa)?;
    let options = loaded.options(p.masters.dark_scaling, &frames);
    let outputs: Vec<PathBuf> = frames
        .frames
        .iter()
        .map(|f| p.output_dir.join(f.path().file_name().unwrap_or_default()))
        .collect();
    for (input, output) in p.inputs.iter().zip(&outputs) {
        if same_file(input, output) {
            return Err(PipelineError::Invalid(format!(
                "{}: output_dir would overwrite the input",
                input.display()
            )));
        }
    }
    let total = frames.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    frames
        .frames
        .par_iter()
        .zip(&options)
        .zip(&outputs)
        .try_for_each(|((frame, opts), out)| {
            progress.checkpoint()?;
            let mut plane = frame.read_all()?.index_axis_move(Axis(0), 0);
            calibrate::apply(plane.view_mut(), &loaded.masters, opts)?;
            let mut header = output_header(&frame.info.header, true);
            header.set("IMAGETYP", CardValue::Str("Light".into()), None);
            if let Some(e) = frame.exposure() {
                header.set("EXPTIME", CardValue::Float(e), Some("[s]"));
            }
            for line in &loaded.history {
                header.push_history(line);
            }
            if p.masters.cosmetic {
                let mut defects =
                    DefectMap::from_outliers(plane.view(), calibrate::DEFAULT_COSMETIC_KAPPA, cfa);
                if let Some(dark) = &loaded.defects {
                    defects.merge(dark)?;
                }
                let fixed = calibrate::correct_defects(plane.view_mut(), &defects, cfa)?;
                header.push_history(&format!(
                    "cosmetic: {fixed} pixels replaced by neighbour medians"
                ));
            }
            write_output(out, plane.insert_axis(Axis(0)).view(), p.dtype, &header)?;
            let d = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            progress.report(d, total, "calibrating");
            Ok::<_, PipelineError>(())
        })?;
    Ok(json!({
        "outputs": outputs.iter().map(|o| o.display().to_string()).collect::<Vec<_>>(),
        "frames": frames.len(),
    }))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub struct DebayerParams {
    pub input: PathBuf,
    pub output: PathBuf,
    /// `None`: from the header.
    pub pattern: Option<BayerPattern>,
    pub method: DebayerMethod,
}

/// `fits.debayer` → `{"output", "pattern"}`.
pub fn debayer(p: &DebayerParams, compute: &dyn Compute, progress: &dyn Progress) -> Result<Value> {
    progress.report(0, 2, "reading");
    let mut reader = FitsReader::open(&p.input)?;
    let info = reader.info().clone();
    if info.channels() != 1 {
        return Err(PipelineError::Invalid(format!(
            "{}: already has {} channels; debayering needs a 2-D mosaic",
            p.input.display(),
            info.channels()
        )));
    }
    let pattern = p.pattern.or_else(|| bayer_pattern(&info)).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "{}: no Bayer pattern in the header (BAYERPAT); pass pattern=RGGB|BGGR|GRBG|GBRG",
            p.input.display()
        ))
    })?;
    let mosaic = reader.read_all()?.index_axis_move(Axis(0), 0);
    progress.checkpoint()?;
    progress.report(1, 2, "debayering");
    let rgb = compute.debayer(mosaic.view(), pattern, p.method)?;
    let mut header = output_header(&info.header, false);
    if let Some(e) = exposure(&info) {
        header.set("EXPTIME", CardValue::Float(e), Some("[s]"));
    }
    header.push_history(&format!(
        "debayer: {} with pattern {}",
        method_name(p.method),
        pattern.name()
    ));
    write_output(&p.output, rgb.view(), OutputType::Float32, &header)?;
    progress.report(2, 2, "done");
    Ok(json!({"output": p.output.display().to_string(), "pattern": pattern.name()}))
}

pub fn method_name(m: DebayerMethod) -> &'static str {
    match m {
        DebayerMethod::Bilinear => "bilinear",
        DebayerMethod::Vng => "vng",
        DebayerMethod::Superpixel => "superpixel",
        DebayerMethod::Rcd => "rcd",
    }
}

pub struct PreviewParams {
    pub input: PathBuf,
    pub output: PathBuf,
    pub stretch: Stretch,
}

/// `fits.preview` → `{"output", "width", "height"}`: a stretched 8-bit PNG/JPEG or 16-bit
/// TIFF. A CFA mosaic is debayered (bilinear) first so the preview is in colour.
pub fn preview(p: &PreviewParams, progress: &dyn Progress) -> Result<Value> {
    progress.report(0, 2, "reading");
    let mut reader = FitsReader::open(&p.input)?;
    let info = reader.info().clone();
    let mut data = reader.read_all()?;
    if let Some(pattern) = bayer_pattern(&info) {
        data = crate::science::cfa::debayer(
            data.index_axis(Axis(0), 0),
            pattern,
            DebayerMethod::Bilinear,
        );
    }
    progress.report(1, 2, "stretching");
    let (width, height) = (data.dim().2, data.dim().1);
    write_stretched(&p.output, data.view(), p.stretch)?;
    progress.report(2, 2, "done");
    Ok(json!({"output": p.output.display().to_string(), "width": width, "height": height}))
}

/// Stretches and writes a preview of 1- or 3-channel data (other channel counts: the first).
pub fn write_stretched(path: &Path, data: ArrayView3<f32>, how: Stretch) -> Result<()> {
    let data: Array3<f32> = if matches!(data.dim().0, 1 | 3) {
        data.to_owned()
    } else {
        data.slice(ndarray::s![0..1, .., ..]).to_owned()
    };
    let display = stretch::stretch(data.view(), how);
    ensure_parent(path)?;
    write_preview(path, display.view())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_rows_fit_the_budget() {
        assert_eq!(band_rows(100, 1080, 1920, 256 << 20), 620);
        assert_eq!(band_rows(1000, 6000, 4000, 256 << 20), 10);
        assert_eq!(band_rows(100_000, 6000, 4000, 1 << 20), 2);
        assert_eq!(band_rows(1, 10, 7, 1 << 30), 6);
    }

    #[test]
    fn parses_parameters() {
        assert_eq!(parse_dtype("UINT16").unwrap(), OutputType::UInt16);
        assert!(parse_dtype("int8").is_err());
        assert_eq!(parse_pattern("auto").unwrap(), None);
        assert_eq!(parse_pattern("grbg").unwrap(), Some(BayerPattern::Grbg));
        assert!(parse_pattern("xyz").is_err());
        assert_eq!(MasterKind::parse("Flat"), Some(MasterKind::Flat));
        assert_eq!(
            MasterMethod::parse("sigma_clip"),
            Some(MasterMethod::SigmaClip)
        );
    }
}
