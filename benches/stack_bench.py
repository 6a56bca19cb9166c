#!/usr/bin/env python3
"""Stacking benchmark: astroworker vs numpy/astropy vs Siril on the same frames, in one run.

    cargo build --release
    .venv/bin/python benches/stack_bench.py --frames 100 --json benches/results/stack_cpu2.json

Frames: N synthetic Seestar-size CFA frames (1080×1920, uint16, `astroworker bench` generates
them once in --fixtures-dir). Each stacker runs in its own process, once per method, the
frames already in the page cache (a warm-up run reads them first); reported: wall time of
the process (start-up and output write included) and its peak RSS (wait4).

- astroworker: `astroworker bench FRAMES --methods M --device cpu` (no normalisation).
- numpy/astropy: the frames read by bands of rows (astropy `section`), stacked with
  `np.mean` / `np.median` / `astropy.stats.sigma_clip(..., cenfunc='median', stdfunc='std')`
  then mean. numpy has no winsorized sigma clipping, so that cell is empty.
- Siril (`siril-cli`, 1.0.6 on Debian): the frames linked as a sequence (not timed), then a
  script with one `stack` command: `rej n` (mean), `med`, `rej s 3 3`, `rej w 3 3`, all
  `-nonorm`.

The memory-bandwidth floor of a stack is the bytes of pixel data read (N × 1080 × 1920 × 2)
divided by the bandwidth of one large `memcpy` (numpy `copyto` of 256 MiB, best of 5).
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["mean", "median", "sigma_clip", "winsorized"]
SIRIL_STACK = {
    "mean": "rej n",
    "median": "med",
    "sigma_clip": "rej s 3 3",
    "winsorized": "rej w 3 3",
}


def measure(cmd, cwd=None, env=None):
    """Wall seconds, peak RSS (MiB) and stdout of one process, reaped with os.wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                           f"{stdout[-2000:]}\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def memcpy_gbps():
    """Measured in a child: a big parent would inflate its children's peak RSS (Linux counts
    the parent's resident memory at fork in the child's maximum)."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           "import stack_bench; print(stack_bench.memcpy_gbps_here())"
    return float(subprocess.run([sys.executable, "-c", code], check=True,
                                capture_output=True, text=True).stdout)


def memcpy_gbps_here():
    import numpy as np

    a = np.ones(64 << 20, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    return a.nbytes / best / 1e9


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


# --- the numpy/astropy stacker (run in a child process) -------------------------------------

def numpy_stack(method, frames, out_path, band_rows=64):
    import numpy as np
    from astropy.io import fits
    from astropy.stats import sigma_clip

    # Raw stored values by band (astropy cannot memory-map scaled data), scaled here.
    hduls = [fits.open(f, memmap=True, do_not_scale_image_data=True) for f in frames]
    h, w = hduls[0][0].shape
    scale = [(hd[0].header.get("BSCALE", 1.0), hd[0].header.get("BZERO", 0.0)) for hd in hduls]
    out = np.empty((h, w), np.float32)
    for r0 in range(0, h, band_rows):
        r1 = min(h, r0 + band_rows)
        cube = np.stack([hd[0].section[r0:r1, :].astype(np.float32) * np.float32(bs) + np.float32(bz)
                         for hd, (bs, bz) in zip(hduls, scale)])
        if method == "mean":
            out[r0:r1] = cube.mean(axis=0, dtype=np.float64)
        elif method == "median":
            out[r0:r1] = np.median(cube, axis=0)
        elif method == "sigma_clip":
            clipped = sigma_clip(cube, sigma_lower=3, sigma_upper=3, maxiters=5,
                                 cenfunc="median", stdfunc="std", axis=0, masked=True)
            out[r0:r1] = clipped.mean(axis=0).filled(np.nan)
        else:
            raise SystemExit(f"numpy has no {method}")
    fits.PrimaryHDU(out).writeto(out_path, overwrite=True)


# --- the benchmark ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--fixtures-dir", default=str(ROOT / "target/bench-fixtures"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeat", type=int, default=3, help="astroworker runs per method (best)")
    ap.add_argument("--skip", default="", help="comma-separated: numpy, siril")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--numpy-child", nargs=2, metavar=("METHOD", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.numpy_child:
        numpy_stack(a.numpy_child[0], a.inputs, a.numpy_child[1])
        return

    binary = ROOT / "target/release/astroworker"
    if not binary.exists():
        sys.exit("build first: cargo build --release")
    fixtures = Path(a.fixtures_dir).resolve()
    methods = [m for m in a.methods.split(",") if m]
    skip = set(a.skip.split(","))

    # Generate (once) and warm the page cache.
    subprocess.run([binary, "bench", "--frames", str(a.frames), "--fixtures-dir", fixtures,
                    "--methods", "mean", "--device", "cpu", "-l", "warning"],
                   check=True, stdout=subprocess.DEVNULL)
    frames = sorted(fixtures.glob("light_*.fit"))
    assert len(frames) == a.frames, f"{len(frames)} frames in {fixtures}"
    for f in frames:
        f.read_bytes()
    pixels_bytes = a.frames * 1080 * 1920 * 2
    bandwidth = memcpy_gbps()
    floor = pixels_bytes / (bandwidth * 1e9)
    print(f"{a.frames} frames, {pixels_bytes / 1e6:.0f} MB of pixels; memcpy {bandwidth:.1f} GB/s "
          f"-> floor {floor * 1e3:.1f} ms", flush=True)

    siril = shutil.which("siril-cli")
    work = Path(tempfile.mkdtemp(prefix="stack-bench-"))
    siril_version = None
    if siril and "siril" not in skip:
        for i, f in enumerate(frames, 1):
            (work / f"light_{i:05d}.fit").symlink_to(f)
        (work / "link.ssf").write_text("requires 1.0.0\nlink light -out=seq\n")
        _, _, log = measure([siril, "-d", work, "-s", work / "link.ssf"],
                            env={**os.environ, "XDG_CONFIG_HOME": str(work / "cfg")})
        siril_version = re.search(r"siril v([\d.]+)", log).group(1)

    rows = []
    for method in methods:
        row = {"method": method}
        runs = []
        for _ in range(a.repeat):
            wall, rss, out = measure([binary, "bench", *frames, "--methods", method,
                                      "--device", "cpu", "-l", "warning"])
            runs.append((wall, rss, json.loads(out)["results"][0]))
        wall, rss, inner = min(runs, key=lambda r: r[0])
        row["astroworker"] = {"wall_s": wall, "rss_mib": rss,
                              "stack_elapsed_s": inner["elapsed_s"],
                              "rejected_fraction": inner["rejected_fraction"]}
        if "numpy" not in skip and method in ("mean", "median", "sigma_clip"):
            wall, rss, _ = measure([sys.executable, __file__, "--numpy-child", method,
                                    work / f"numpy_{method}.fits", *frames])
            row["numpy_astropy"] = {"wall_s": wall, "rss_mib": rss}
        if siril_version:
            script = work / "seq" / f"stack_{method}.ssf"
            script.write_text(f"requires 1.0.0\nstack light {SIRIL_STACK[method]} -nonorm "
                              f"-out=siril_{method}\n")
            wall, rss, log = measure([siril, "-d", work / "seq", "-s", script],
                                     env={**os.environ, "XDG_CONFIG_HOME": str(work / "cfg")})
            inner = re.search(r"log: Execution time: ([\d.]+) (m?s)", log)
            row["siril"] = {"wall_s": wall, "rss_mib": rss,
                            "stack_execution_s": float(inner.group(1)) / (1000 if inner.group(2) == "ms" else 1)
                            if inner else None}
        aw = row["astroworker"]["wall_s"]
        for other in ("numpy_astropy", "siril"):
            if other in row:
                row[other]["astroworker_speedup"] = row[other]["wall_s"] / aw
        if method == "mean":
            row["astroworker"]["floor_ratio"] = aw / floor
        rows.append(row)
        print(json.dumps(row), flush=True)

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine(),
                    "kernel": platform.release()},
        "frames": a.frames,
        "frame_shape": [1920, 1080],
        "pixel_bytes": pixels_bytes,
        "memcpy_gbps": bandwidth,
        "floor_s": floor,
        "siril_version": siril_version,
        "results": rows,
    }
    shutil.rmtree(work, ignore_errors=True)
    print(table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


def table(r):
    lines = ["| method | astroworker s (RSS MiB) | numpy/astropy s (RSS MiB) | Siril s (RSS MiB) "
             "| vs numpy | vs Siril |", "|---|---:|---:|---:|---:|---:|"]
    for row in r["results"]:
        def cell(k):
            c = row.get(k)
            return f"{c['wall_s']:.2f} ({c['rss_mib']:.0f})" if c else "—"

        def ratio(k):
            c = row.get(k)
            return f"{c['astroworker_speedup']:.1f}×" if c else "—"

        lines.append(f"| {row['method']} | {cell('astroworker')} | {cell('numpy_astropy')} | "
                     f"{cell('siril')} | {ratio('numpy_astropy')} | {ratio('siril')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
