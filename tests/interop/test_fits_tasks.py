"""The fits.* tasks through real Python Celery: result dicts, PROGRESS, files, and errors."""

import json
import subprocess
import time

import numpy as np
import pytest
from astropy.io import fits as afits
from PIL import Image

from conftest import BIN

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """Synthetic Seestar-like frames (half size) and a table-only FITS file, under one root."""
    root = tmp_path_factory.mktemp("fitsdata")
    subprocess.run([str(BIN), "fixtures", str(root / "raw"), "--width", "540", "--height", "960",
                    "--lights", "8", "--biases", "5", "--darks", "5", "--flats", "5"],
                   check=True, capture_output=True)
    afits.HDUList([afits.PrimaryHDU(), afits.BinTableHDU.from_columns(
        [afits.Column(name="a", format="E", array=np.arange(3, dtype=np.float32))])]
    ).writeto(root / "raw" / "table.fits")
    return root


@pytest.fixture
def fits_worker(fleet, data):
    return fleet.astroworker("-c", "2", "--data-root", str(data), diag=False)


def lights(data):
    return str(data / "raw" / "light_*.fit")


def test_info(fits_worker, app, data):
    path = data / "raw" / "light_0001.fit"
    r = app.send_task("fits.info", args=[str(path)]).get(timeout=30)
    assert r["path"] == str(path)
    assert r["hdu"] == 0 and r["shape"] == [540, 960] and r["bitpix"] == 16
    assert r["bayer"] == "GRBG"
    assert r["header"]["BAYERPAT"] == "GRBG" and r["header"]["EXPTIME"] == 10.0
    ref = afits.getdata(path).astype(np.float64)
    for key, value in [("min", ref.min()), ("max", ref.max()), ("mean", ref.mean()),
                       ("median", np.median(ref)), ("std", ref.std())]:
        assert r["stats"][key] == pytest.approx(value, rel=1e-6), key
    assert r["stats"]["nan_count"] == 0


def test_master_calibrate_stack_preview_pipeline(fits_worker, app, data, tmp_path):
    out = data / "out"
    bias = app.send_task("fits.master", args=["bias", str(data / "raw" / "bias_*.fit"), str(out / "bias.fits")])
    bias = bias.get(timeout=60)
    assert bias["frames"] == 5 and bias["output"] == str(out / "bias.fits")
    assert 500 < bias["stats"]["median"] < 530
    dark = app.send_task("fits.master", kwargs={"kind": "dark", "inputs": [str(p) for p in sorted((data / "raw").glob("dark_*.fit"))],
                                                "output": str(out / "dark.fits"), "method": "sigma_clip"}).get(timeout=60)
    assert dark["frames"] == 5
    flat = app.send_task("fits.master", args=["flat", str(data / "raw" / "flat_*.fit"), str(out / "flat.fits")],
                         kwargs={"bias": str(out / "bias.fits")}).get(timeout=60)
    assert flat["stats"]["median"] == pytest.approx(1.0, abs=0.01)

    cal = app.send_task("fits.calibrate", args=[lights(data), str(out / "cal")],
                        kwargs={"bias": str(out / "bias.fits"), "dark": str(out / "dark.fits"),
                                "flat": str(out / "flat.fits")}).get(timeout=120)
    assert cal["frames"] == 8 and len(cal["outputs"]) == 8
    calibrated = afits.getdata(cal["outputs"][0])
    assert calibrated.dtype.kind == "f" and 200 < np.median(calibrated) < 400  # the sky, bias gone

    r = app.send_task("fits.stack", args=[lights(data), str(out / "stack.fits")],
                      kwargs={"bias": str(out / "bias.fits"), "dark": str(out / "dark.fits"),
                              "flat": str(out / "flat.fits"), "preview": str(out / "stack.jpg")})
    result = r.get(timeout=120)
    assert set(result) == {"output", "preview", "frames_used", "width", "height", "channels", "method",
                           "rejected_fraction", "device", "elapsed_s"}
    assert result["frames_used"] == 8 and (result["width"], result["height"], result["channels"]) == (540, 960, 3)
    assert result["method"] == "sigma_clip" and result["device"] == "cpu"
    assert 0 < result["rejected_fraction"] < 0.05
    with afits.open(result["output"]) as hdul:
        assert hdul[0].data.shape == (3, 960, 540)
        h = hdul[0].header
        assert h["STACKCNT"] == 8 and h["EXPTIME"] == 80.0 and "EXTNAME" not in h and "BAYERPAT" not in h
        assert any("sigma_clip" in str(c) for c in h["HISTORY"])
    img = Image.open(result["preview"])
    assert img.size == (540, 960) and img.mode == "RGB"

    deb = app.send_task("fits.debayer", args=[str(data / "raw" / "light_0001.fit"), str(out / "deb.fits")],
                        kwargs={"method": "vng"}).get(timeout=60)
    assert deb == {"output": str(out / "deb.fits"), "pattern": "GRBG"}
    assert afits.getdata(out / "deb.fits").shape == (3, 960, 540)

    prev = app.send_task("fits.preview", args=[result["output"], str(out / "p.tiff")], kwargs={"stretch": "asinh"}).get(timeout=60)
    assert prev == {"output": str(out / "p.tiff"), "width": 540, "height": 960}
    tiff = Image.open(out / "p.tiff")
    assert tiff.size == (540, 960)


def test_stack_reports_progress(fits_worker, app, data):
    r = app.send_task("fits.stack", args=[lights(data), str(data / "out" / "progress.fits")],
                      kwargs={"method": "winsorized"})
    seen = []
    while not r.ready():
        # One backend read per poll: reading .state then .info races with the task finishing.
        meta = app.backend.get_task_meta(r.id)
        if meta["status"] == "PROGRESS":
            info = meta["result"]
            seen.append((info["current"], info["total"], info["step"]))
        time.sleep(0.02)
    assert r.get(timeout=60)["method"] == "winsorized"
    assert seen, "no PROGRESS state seen"
    assert all(c <= t for c, t, _ in seen)
    assert {s for _, _, s in seen} & {"measuring frames", "stacking", "debayering", "writing"}


@pytest.mark.parametrize("call, exc_name, text", [
    (("fits.info", ["/nonexistent/x.fit"]), "PermissionError", "outside the allowed data roots"),
    (("fits.stack", ["{root}/raw/missing_*.fit", "{root}/out/x.fits"]), "FileNotFoundError", "no files match"),
    (("fits.info", ["{root}/raw/nope.fit"]), "FileNotFoundError", "no such file"),
    (("fits.info", ["{root}/raw/table.fits"]), "FitsError", "no image data"),
    (("fits.stack", ["{root}/raw/light_*.fit", "{root}/../escape.fits"]), "PermissionError", "outside"),
    (("fits.stack", ["{root}/raw/light_*.fit", "{root}/out/x.fits"], {"method": "loudest"}), "ValueError", "method must be"),
    (("fits.stack", ["{root}/raw/light_*.fit", "{root}/out/x.fits"], {"register": True, "interpolation": "nearest"}), "ValueError", "interpolation must be"),
    (("fits.stack", ["{root}/raw/light_*.fit", "{root}/out/x.fits"], {"register": True, "bias": "{root}/raw/bias_0001.fit"}), "ValueError", "calibrate them first"),
    (("fits.stack", ["{root}/raw/light_*.fit"], {}), "TypeError", "missing field"),
])
def test_errors_fail_cleanly(fits_worker, app, data, call, exc_name, text):
    name, args, *kwargs = call
    args = [a.replace("{root}", str(data)) for a in args]
    kwargs = {k: v.replace("{root}", str(data)) if isinstance(v, str) else v
              for k, v in (kwargs[0] if kwargs else {}).items()}
    r = app.send_task(name, args=args, kwargs=kwargs)
    with pytest.raises(Exception) as info:
        r.get(timeout=30)
    assert type(info.value).__name__ == exc_name
    assert text in str(info.value)
    assert r.state == "FAILURE"
    # The worker serves on.
    assert app.send_task("fits.info", args=[str(data / "raw" / "light_0002.fit")]).get(timeout=30)["bitpix"] == 16
