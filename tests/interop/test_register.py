"""Registration through real Celery: `fits.register` and `fits.stack(register=True)` on the real
Seestar S50 subs in ../shared/data/seestar (skipped when absent), checked against the shifts
measured in that folder's README and against astroalign on the same frames."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits as afits

pytestmark = pytest.mark.timeout(300)

SEESTAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "seestar"
needs_subs = pytest.mark.skipif(not (SEESTAR / "M94").is_dir(), reason="../shared/data/seestar is absent")


def subs():
    return sorted(str(p) for p in (SEESTAR / "M94").glob("*.fit"))


@pytest.fixture
def worker(fleet, tmp_path):
    roots = ["--data-root", str(tmp_path)]
    if SEESTAR.is_dir():  # ../shared may be absent: then only the tests that need it skip
        roots += ["--data-root", str(SEESTAR)]
    w = fleet.astroworker("-c", "2", *roots, diag=False)
    w.wait_log(r" ready\.")
    return w


def apply(t, x, y):
    w = t[2][0] * x + t[2][1] * y + t[2][2]
    return ((t[0][0] * x + t[0][1] * y + t[0][2]) / w, (t[1][0] * x + t[1][1] * y + t[1][2]) / w)


def grid_rms(a, b, h=1920, w=1080):
    d = [np.subtract(apply(a, x, y), apply(b, x, y)) for y in range(0, h, 64) for x in range(0, w, 64)]
    return float(np.sqrt(np.mean(np.sum(np.square(d), axis=1))))


def superpixel(path):
    d = afits.getdata(path).astype(np.float64)
    return d[0::2, 0::2] + d[0::2, 1::2] + d[1::2, 0::2] + d[1::2, 1::2]


@needs_subs
def test_register_matches_the_readme_and_astroalign(worker, app):
    astroalign = pytest.importorskip("astroalign")
    files = subs()
    r = app.send_task("fits.register", args=[files], kwargs={"reference": files[0]}).get(timeout=120)
    assert r["reference"] == files[0] and r["dropped"] == [] and r["transform"] == "similarity"
    rows = {row["name"]: row for row in json.loads((SEESTAR / "frames.json").read_text())}
    ref_sp = superpixel(files[0])
    for frame in r["frames"]:
        row = rows[Path(frame["input"]).name]["reg_to_first"]
        assert frame["output"] is None and frame["matched"] >= 20 and frame["stars"] >= 30
        t = frame["transform"]
        # The README's shifts (astroalign on superpixels, ×2): within 0.5 px.
        assert abs(t[0][2] - row["dx_px"]) < 0.5 and abs(t[1][2] - row["dy_px"]) < 0.5, (frame, row)
        if frame["input"] == files[0]:
            continue
        # astroalign on the same frames (2×2 superpixels, mapped back to full-resolution
        # pixels: x_full = 2·x_sp + 0.5): within 0.3 px over the frame.
        sp, _ = astroalign.find_transform(superpixel(frame["input"]), ref_sp)
        m = sp.params
        to_full = np.array([[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1.0]])
        theirs = to_full @ m @ np.linalg.inv(to_full)
        assert grid_rms(t, theirs.tolist()) < 0.3, frame["input"]


@needs_subs
def test_registered_stack_keeps_stars_sharp(worker, app, tmp_path):
    files = subs()
    out = tmp_path / "registered.fits"
    r = app.send_task("fits.stack", args=[files, str(out)],
                      kwargs={"register": True, "method": "sigma_clip",
                              "preview": str(tmp_path / "registered.jpg")}).get(timeout=180)
    for key in ("output", "preview", "frames_used", "width", "height", "channels", "method",
                "rejected_fraction", "device", "elapsed_s", "registration"):
        assert key in r, key
    assert r["frames_used"] == 6 and (r["channels"], r["height"], r["width"]) == (3, 1920, 1080)
    assert len(r["registration"]["frames"]) == 6 and r["registration"]["dropped"] == []
    data = afits.getdata(out)
    assert data.shape == (3, 1920, 1080)
    assert np.isfinite(data).mean() > 0.95  # only the borders the dither uncovered are NaN

    plain = tmp_path / "plain.fits"
    app.send_task("fits.stack", args=[files, str(plain)],
                  kwargs={"method": "sigma_clip", "normalize": "none"}).get(timeout=180)

    def fwhm(path):
        m = app.send_task("fits.register", args=[[str(path)]]).get(timeout=60)
        return m["frames"][0]["fwhm"]

    # Each sub measured like the stacks: debayered (RCD) at full resolution.
    singles = []
    for i, f in enumerate(files):
        single = tmp_path / f"single_{i}.fits"
        app.send_task("fits.stack", args=[[f], str(single)], kwargs={"method": "mean", "normalize": "none"}).get(timeout=60)
        singles.append(fwhm(single))
    sub_fwhm = float(np.median(singles))
    registered, unregistered = fwhm(out), fwhm(plain)
    assert abs(registered - sub_fwhm) / sub_fwhm < 0.15, (registered, sub_fwhm)
    assert abs(unregistered - sub_fwhm) / sub_fwhm > 0.15, (unregistered, sub_fwhm)


def test_register_errors(worker, app, tmp_path):
    with pytest.raises(ValueError, match="transform must be"):
        app.send_task("fits.register", args=[[str(tmp_path / "x.fit")]],
                      kwargs={"transform": "warp"}).get(timeout=30)
    with pytest.raises(FileNotFoundError):
        app.send_task("fits.register", args=[str(tmp_path / "none_*.fit")]).get(timeout=30)
