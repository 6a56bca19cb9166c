#!/usr/bin/env python3
"""Register + stack 100 Seestar-size frames: time per phase (detect, match, warp, stack) vs Siril's
register + stack on the same frames, in one run.

    cargo build --release
    .venv/bin/python benches/register_bench.py --frames 100 --json benches/results/register_cpu2.json

Frames: N synthetic Seestar S50 subs (1080×1920 GRBG uint16, BAYERPAT='GRBG', EXPTIME=10), made
once with numpy (seeded) in --fixtures-dir; a smaller run reuses the first N of a larger set.
They carry what registration meets on a real night: ~1.2 px/frame drift, a 30–50 px dither
jump every 8–12 frames, 0.2° of field rotation over 100 frames (about the centre), ~340
Gaussian stars per frame (FWHM 2.6–3.4 px from frame to frame, a power law of fluxes, a few
saturated), sky 610–700 ADU per colour with a gradient, shot and read noise, fixed hot pixels.
truth.json holds each frame's transform (frame pixel → frame-1 pixel; x = column, y = stored
row, pixel centres at integers).

Each run is its own process, timed from start to exit (output written) with its peak RSS
(wait4), the frames already in the page cache; one run each:

- astroworker: `stack FRAMES --register --reference FRAME1 --method sigma_clip --normalize none
  --debayer rcd --device cpu` (RCD debayer, or `--debayer` as given; similarity transforms,
  Lanczos-3 resampling, 3σ/3σ sigma
  clipping); per phase: the JSON's "timings" when the binary reports them.
- Siril (`siril-cli`, 1.0.6 on Debian), one script per step, private config: the frames linked
  under simple names (not timed), then timed one by one: `convert light -debayer` (RCD; our
  stack debayers inside its run, so it counts in Siril's total), `register light
  -transf=similarity` (star detection, matching, and writing the resampled r_light_ frames, as
  1.0.6 does unless -norot; the command has no interpolation option, and its stacks match our
  `--interpolation bilinear` ones in FWHM and per-pixel noise), `stack r_light rej s 3 3
  -nonorm` (sigma clipping like ours; a bare `rej 3 3` would be Winsorized). Siril also
  registers on frame 1.

Then, on both outputs, the same measurement (tests/interop/starmetrics.py, shared with
test_siril_register.py): median star FWHM and background noise relative to star flux, inside
the area every frame covers; and the error of the transforms our stack used against
truth.json (`corner_distance`: the largest distance between where they send the frame's
corners and centre).
"""

import argparse
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from stack_bench import measure

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("ASTROWORKER_BIN", ROOT / "target/release/astroworker"))
WIDTH, HEIGHT = 1080, 1920
PHASES = ["detect_s", "match_s", "read_debayer_s", "warp_s", "stack_s"]
GRBG = [[1, 0], [2, 1]]  # colour index (R, G, B = 0, 1, 2) at [row % 2][column % 2]

# The synthetic night; changing anything here makes the fixtures again.
NIGHT = {
    "seed": 94,
    "stars": 520,  # over the frame and a 160-px margin: ~340 in each frame
    "margin_px": 160,
    "fwhm_px": [2.6, 3.4],
    "peak_adu": 150,  # faintest G peak; N(> peak) ∝ peak^-0.7, capped at 2 × 65535
    "peak_slope": 0.7,
    "colour": [0.6, 1.3],  # R and B relative to G
    "sky_adu": [628, 700, 609],  # R, G, B: the per-cell medians of the real M 94 subs
    "gradient": [0.02, 0.06],  # relative sky rise across x and across y
    "adu_per_electron": 4.5,
    "read_noise_adu": 10,
    "hot_pixels": 25,
    "drift_px": 1.2,
    "dither_every": [8, 12],
    "dither_px": [30, 50],
    "rotation_deg_per_frame": 0.2 / 99,
}


# --- the synthetic subs (made in a child process, so that the timed runs' RSS is not inflated) --

def pointings(n, rng):
    """Per frame: the 3×3 transform from its pixels to frame 1's. Drift in one direction; each
    dither jumps 30–50 px, towards the target (the best of 8 random directions)."""
    import numpy as np

    a = rng.uniform(0, 2 * math.pi)
    drift = NIGHT["drift_px"] * np.array([math.cos(a), math.sin(a)])
    pos, next_dither = np.zeros(2), rng.integers(*NIGHT["dither_every"], endpoint=True)
    centre = np.array([(WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    out = []
    for i in range(n):
        if i == next_dither:
            angles = rng.uniform(0, 2 * math.pi, 8)
            jumps = rng.uniform(*NIGHT["dither_px"], 8)[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
            pos = pos + jumps[np.argmin(np.hypot(*(pos + jumps).T))]
            next_dither += rng.integers(*NIGHT["dither_every"], endpoint=True)
        elif i:
            pos = pos + drift + rng.normal(0, 0.1, 2)
        th = math.radians(i * NIGHT["rotation_deg_per_frame"])
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        t = np.eye(3)
        t[:2, :2], t[:2, 2] = rot, centre + pos - rot @ centre
        out.append(t)
    return out


def star_field(rng):
    """Stars in frame-1 pixels: (x, y), G-channel peak, (R, G, B) colour."""
    import numpy as np

    n, m = NIGHT["stars"], NIGHT["margin_px"]
    xy = np.stack([rng.uniform(-m, WIDTH - 1 + m, n), rng.uniform(-m, HEIGHT - 1 + m, n)], 1)
    peak = np.minimum(NIGHT["peak_adu"] * rng.uniform(0, 1, n) ** (-1 / NIGHT["peak_slope"]), 2 * 65535)
    colour = np.ones((n, 3))
    colour[:, [0, 2]] = rng.uniform(*NIGHT["colour"], (n, 2))
    return xy, peak, colour


def render(t, fwhm, field, sky, hot, rng):
    """One raw CFA frame (uint16) seen through transform `t`."""
    import numpy as np

    xy, peak, colour = field
    local = (np.linalg.inv(t) @ np.vstack([xy.T, np.ones(len(xy))]))[:2].T
    inside = (local[:, 0] > -8) & (local[:, 0] < WIDTH + 7) & (local[:, 1] > -8) & (local[:, 1] < HEIGHT + 7)
    local, peak, colour = local[inside], peak[inside], colour[inside]
    off = np.arange(-7, 8)
    cx, cy = np.rint(local[:, 0]).astype(int), np.rint(local[:, 1]).astype(int)
    xs = np.broadcast_to(cx[:, None, None] + off[None, None, :], (len(cx), 15, 15))
    ys = np.broadcast_to(cy[:, None, None] + off[None, :, None], (len(cx), 15, 15))
    ok = (xs >= 0) & (xs < WIDTH) & (ys >= 0) & (ys < HEIGHT)
    r2 = (xs - local[:, 0, None, None]) ** 2 + (ys - local[:, 1, None, None]) ** 2
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    channel = np.asarray(GRBG)[ys % 2, xs % 2]
    value = peak[:, None, None] * colour[np.arange(len(cx))[:, None, None], channel] * np.exp(-r2 / (2 * sigma**2))
    signal = sky.copy()
    np.add.at(signal, (ys[ok], xs[ok]), value[ok])
    k = NIGHT["adu_per_electron"]
    adu = rng.poisson(signal / k) * k + rng.normal(0, NIGHT["read_noise_adu"], signal.shape)
    adu[hot[0], hot[1]] += hot[2]
    return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)


def generate(fixtures, n):
    """Writes light_00001.fit … and truth.json; frame i is the same whatever n is."""
    import numpy as np
    from astropy.io import fits

    fixtures.mkdir(parents=True, exist_ok=True)
    for old in fixtures.glob("light_*.fit"):
        old.unlink()
    seed = NIGHT["seed"]
    field = star_field(np.random.default_rng([seed, 0]))
    transforms = pointings(n, np.random.default_rng([seed, 1]))
    rng = np.random.default_rng([seed, 2])
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    gx, gy = NIGHT["gradient"]
    sky = np.asarray(NIGHT["sky_adu"], np.float64)[np.asarray(GRBG)[yy % 2, xx % 2]]
    sky *= 1 + gx * xx / WIDTH + gy * yy / HEIGHT
    nh = NIGHT["hot_pixels"]
    hot = (rng.integers(0, HEIGHT, nh), rng.integers(0, WIDTH, nh), rng.uniform(5000, 65535, nh))
    frames = []
    for i, t in enumerate(transforms):
        frame_rng = np.random.default_rng([seed, 3, i])
        fwhm = float(frame_rng.uniform(*NIGHT["fwhm_px"]))
        header = fits.Header({"BAYERPAT": "GRBG", "EXPTIME": 10.0, "IMAGETYP": "Light", "OBJECT": "register-bench"})
        name = f"light_{i + 1:05d}.fit"
        fits.PrimaryHDU(render(t, fwhm, field, sky, hot, frame_rng), header).writeto(fixtures / name, overwrite=True)
        frames.append({"name": name, "fwhm_px": fwhm, "transform": t.tolist()})
    (fixtures / "truth.json").write_text(json.dumps({"night": NIGHT, "frames": frames}, indent=1) + "\n")


def fixtures_for(fixtures, n):
    """The truth of the first n frames in `fixtures`, made first when missing or stale."""
    truth_path = fixtures / "truth.json"
    truth = json.loads(truth_path.read_text()) if truth_path.exists() else None
    if (truth is None or truth["night"] != json.loads(json.dumps(NIGHT)) or len(truth["frames"]) < n
            or not all((fixtures / f["name"]).exists() for f in truth["frames"][:n])):
        print(f"making {n} frames in {fixtures}", flush=True)
        measure([sys.executable, __file__, "--generate-child", fixtures, "--frames", str(n)])
        truth = json.loads(truth_path.read_text())
    return truth["frames"][:n]


# --- the runs ----------------------------------------------------------------------------------

def run_astroworker(frames, work, device, debayer):
    wall, rss, out = measure([BINARY, "stack", *frames, "-o", work / "astroworker.fits", "--register",
                              "--reference", frames[0], "--method", "sigma_clip", "--normalize", "none",
                              "--debayer", debayer, "--device", device, "-l", "warning"])
    r = json.loads(out)
    return {"wall_s": wall, "rss_mib": rss, "elapsed_s": r.get("elapsed_s"), "timings": r.get("timings"),
            "frames_used": r["frames_used"], "rejected_fraction": r.get("rejected_fraction"),
            "registration": r["registration"], "output": str(work / "astroworker.fits")}


def siril_execution_s(log):
    """Siril's own "Execution time" of a command (its start-up left out), when it logs one."""
    m = re.search(r"log: Execution time: (?:(\d+) h )?(?:(\d+) min )?([\d.]+) (m?s)", log)
    if not m:
        return None
    hours, minutes, value, unit = m.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(value) / (1000 if unit == "ms" else 1)


def run_siril(siril, frames, work):
    seq = work / "siril"  # `convert` takes every image in its directory: only the links there
    seq.mkdir()
    for i, f in enumerate(frames, 1):
        (seq / f"light_{i:05d}.fit").symlink_to(f)
    env = {**os.environ, "XDG_CONFIG_HOME": str(work / "siril-config")}
    steps, logs = {}, {}
    for step, cwd, command in [("convert", seq, "convert light -debayer -out=conv"),
                               ("register", seq / "conv", "register light -transf=similarity"),
                               ("stack", seq / "conv", "stack r_light rej s 3 3 -nonorm -out=siril_stack")]:
        script = work / f"{step}.ssf"
        script.write_text(f"requires 1.0.0\n{command}\n")
        wall, rss, logs[step] = measure([siril, "-d", cwd, "-s", script], env=env)
        steps[step] = {"wall_s": wall, "rss_mib": rss, "execution_s": siril_execution_s(logs[step])}
    stacked = re.search(r"(\d+) images have been stacked", logs["stack"])
    return {"version": re.search(r"siril v([\d.]+)", logs["convert"]).group(1), "steps": steps,
            "frames_used": int(stacked.group(1)) if stacked else None,
            "output": str(seq / "conv" / "siril_stack.fit")}


def starmetrics():
    """tests/interop/starmetrics.py, imported once the timed runs are over (a parent holding
    numpy's pages could inflate its children's peak RSS)."""
    sys.path.insert(0, str(ROOT / "tests" / "interop"))
    import starmetrics as module

    return module


def quality(truth, outputs):
    """starmetrics.compare on every output, inside the area every frame covers."""
    sm = starmetrics()
    box = sm.common_box([t["transform"] for t in truth], WIDTH, HEIGHT)
    return dict(zip(outputs, sm.compare(list(outputs.values()), box)))


def transform_errors(registration, truth):
    """Our transforms against the truth: the worst frame and the median, in pixels."""
    import numpy as np

    ours = {Path(f["input"]).name: f["transform"] for f in registration["frames"]}
    errors = [starmetrics().corner_distance(ours[t["name"]], t["transform"], WIDTH, HEIGHT)
              for t in truth if t["name"] in ours]
    return {"max_px": max(errors), "median_px": float(np.median(errors)), "registered": len(errors),
            "dropped": len(registration["dropped"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--fixtures-dir", default=str(ROOT / "target/register-bench-fixtures"))
    ap.add_argument("--device", default="cpu", help="astroworker's --device")
    ap.add_argument("--debayer", default="rcd", help="astroworker's --debayer (Siril's convert uses RCD)")
    ap.add_argument("--skip", default="", help="comma-separated: siril")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--generate-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate_child:
        generate(Path(a.generate_child), a.frames)
        return

    if not BINARY.exists():
        sys.exit(f"{BINARY} is missing: cargo build --release (or set ASTROWORKER_BIN)")
    fixtures = Path(a.fixtures_dir).resolve()
    truth = fixtures_for(fixtures, a.frames)
    frames = [fixtures / t["name"] for t in truth]
    for f in frames:
        f.read_bytes()
    work = Path(tempfile.mkdtemp(prefix="register-bench-"))
    siril = shutil.which("siril-cli") if "siril" not in a.skip.split(",") else None

    result = {"date": time.strftime("%Y-%m-%d"),
              "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "kernel": platform.release()},
              "frames": a.frames, "frame_shape": [HEIGHT, WIDTH], "night": NIGHT,
              "debayer": a.debayer, "astroworker": run_astroworker(frames, work, a.device, a.debayer)}
    print(f"astroworker: {result['astroworker']['wall_s']:.2f} s", flush=True)
    outputs = {"astroworker": result["astroworker"].pop("output")}
    if siril:
        result["siril"] = run_siril(siril, frames, work)
        outputs["siril"] = result["siril"].pop("output")
        steps = result["siril"]["steps"]
        print("siril: " + ", ".join(f"{k} {v['wall_s']:.2f} s" for k, v in steps.items()), flush=True)
        result["siril"]["total_s"] = sum(s["wall_s"] for s in steps.values())
        result["siril"]["register_stack_s"] = steps["register"]["wall_s"] + steps["stack"]["wall_s"]
    result["quality"] = quality(truth, outputs)
    result["astroworker"]["transform_error"] = transform_errors(result["astroworker"].pop("registration"), truth)
    shutil.rmtree(work, ignore_errors=True)
    print(table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


def table(r):
    aw, siril = r["astroworker"], r.get("siril")
    steps = siril["steps"] if siril else {}
    phases = aw["timings"] or {}

    def secs(wall, rss=None):
        return "—" if wall is None else f"{wall:.2f}" + ("" if rss is None else f" ({rss:.0f})")

    def step(name):
        return secs(steps[name]["wall_s"], steps[name]["rss_mib"]) if name in steps else "—"

    inside = "in register" if siril else "—"
    lines = [f"{r['frames']} frames {r['frame_shape'][1]}×{r['frame_shape'][0]} GRBG"
             + (f", Siril {siril['version']}" if siril else ""), "",
             "| seconds (peak RSS MiB) | astroworker | Siril |", "|---|---:|---:|",
             f"| debayer | in the run | {step('convert')} |"]
    lines += [f"| {p[:-2]} | {secs(phases.get(p))} | {inside} |" for p in PHASES[:-1]]
    lines += [f"| register (Siril: detect, match, write r_ frames) | — | {step('register')} |",
              f"| stack | {secs(phases.get('stack_s'))} | {step('stack')} |"]
    if siril:
        rss = max(s["rss_mib"] for s in steps.values())
        lines += [f"| whole run | {secs(aw['wall_s'], aw['rss_mib'])} | {secs(siril['total_s'], rss)} |",
                  f"| astroworker speed-up (Siril s ÷ astroworker s) | | {siril['total_s'] / aw['wall_s']:.2f}× |",
                  f"| the same, Siril's debayer left out | | {siril['register_stack_s'] / aw['wall_s']:.2f}× |"]
    else:
        lines.append(f"| whole run | {secs(aw['wall_s'], aw['rss_mib'])} | — |")

    q, err = r["quality"], aw["transform_error"]

    def metric(key, fmt):
        return " | ".join(fmt.format(q[k][key]) if k in q else "—" for k in ("astroworker", "siril"))

    lines += ["", "| output | astroworker | Siril |", "|---|---:|---:|",
              f"| frames stacked | {aw['frames_used']} | {siril['frames_used'] if siril else '—'} |",
              f"| stars measured | {metric('stars', '{}')} |",
              f"| median FWHM (px) | {metric('fwhm', '{:.3f}')} |",
              f"| noise / star flux, 8-px aperture | {metric('noise_rel', '{:.5f}')} |",
              f"| noise / star flux, per pixel | {metric('pixel_noise_rel', '{:.6f}')} |",
              f"| transform error vs truth, worst (median) px | {err['max_px']:.3f} ({err['median_px']:.3f}) | — |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
