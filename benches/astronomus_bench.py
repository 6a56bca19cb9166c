#!/usr/bin/env python3
"""Astronomus's `stack_and_stretch` on N Seestar-size subs: astroworker vs the Python task.

    cargo build --release
    .venv/bin/python benches/astronomus_bench.py --frames 100 --json benches/results/astronomus_cpu2.json

Both sides get the same folder of N synthetic 1080×1920 uint16 GRBG subs (`astroworker bench`
generates them once) and produce the stacked FITS plus one JPEG preview:

- python: the algorithm of Astronomus's task as astronomus-compat.md §3 describes it, in numpy
  and astropy in a child process (every frame loaded as float32, 3-pass mean/std sigma clip with
  a growing mask, RGGB debayer by 3×3 convolution with edge replication, uint16 FITS, the §3.5
  auto-stretch, Pillow JPEG quality 95). Timed from process start to exit; peak RSS from wait4.
- astroworker: `stack_and_stretch.delay(...)` through real Celery to a running
  `astroworker worker --astronomus` (private redis-server), timed from `.delay()` to the result;
  peak RSS of the worker process (`VmHWM`). astroworker does more than the Python task: it
  registers every sub on its stars (Astronomus bug 3), debayers with the frames' pattern (RCD)
  and rejects around a median centre.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))


def python_task(folder, sigma, out_dir):
    """Astronomus's stack_and_stretch (compat doc §3.1–3.5), CPU path."""
    import numpy as np
    from astropy.io import fits
    from PIL import Image

    files = sorted(Path(folder).glob("light_*.fit"))
    frames = [fits.getdata(f).astype(np.float32) for f in files]
    data = np.stack(frames)
    mask = np.zeros(data.shape, bool)
    for _ in range(3):
        kept = np.where(mask, np.nan, data)
        count = (~mask).sum(0)
        m = np.where(count > 0, np.nanmean(kept, 0), 0)
        s = np.where(count > 0, np.nanstd(kept, 0), 1)
        mask |= np.abs(data - m) > sigma * s
    kept = np.where(mask, 0, data)
    count = (~mask).sum(0)
    stacked = np.where(count > 0, kept.sum(0) / np.maximum(count, 1), 0).astype(np.float32)

    h, w = stacked.shape
    planes = np.zeros((3, h, w), np.float32)
    planes[0, 0::2, 0::2] = stacked[0::2, 0::2]
    planes[1, 0::2, 1::2] = stacked[0::2, 1::2]
    planes[1, 1::2, 0::2] = stacked[1::2, 0::2]
    planes[2, 1::2, 1::2] = stacked[1::2, 1::2]
    k_rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4
    k_g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4

    def convolve(p, k):
        padded = np.pad(p, 1, mode="edge")
        out = np.zeros_like(p)
        for dy in range(3):
            for dx in range(3):
                if k[dy, dx]:
                    out += k[dy, dx] * padded[dy:dy + h, dx:dx + w]
        return out

    rgb = np.stack([convolve(planes[0], k_rb), convolve(planes[1], k_g), convolve(planes[2], k_rb)])
    out = Path(out_dir) / f"Stacked_{len(files)}_python.fit"
    fits.PrimaryHDU(np.clip(rgb, 0, 65535).astype(np.uint16)).writeto(out, overwrite=True)

    hwc = np.moveaxis(rgb.astype(np.float64), 0, -1)
    bp, wp = np.percentile(hwc, 0.5), np.percentile(hwc, 99.95)
    n = np.clip((hwc - bp) / (wp - bp + 1e-10), 0, 1)
    cv = n.std() / (n.mean() + 1e-10)
    a = 20 if cv > 0.5 else 10 if cv > 0.3 else 5
    y = np.arcsinh(a * n) / np.arcsinh(a)
    Image.fromarray(np.floor(255 * y).astype(np.uint8), "RGB").save(
        out.with_suffix(".jpg"), quality=95, optimize=True)


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--fixtures-dir", default=str(ROOT / "target/bench-fixtures"))
    ap.add_argument("--sigma", type=float, default=2.5)
    ap.add_argument("--repeat", type=int, default=1, help="astroworker runs (best is kept)")
    ap.add_argument("--json")
    ap.add_argument("--python-child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.python_child:
        python_task(a.python_child[0], a.sigma, a.python_child[1])
        return

    from conftest import RedisServer, make_app
    from stack_bench import measure

    binary = ROOT / "target/release/astroworker"
    fixtures = Path(a.fixtures_dir).resolve()
    subprocess.run([binary, "bench", "--frames", str(a.frames), "--fixtures-dir", fixtures,
                    "--methods", "mean", "--device", "cpu", "-l", "warning"],
                   check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="astronomus-bench-"))
    folder = work / "Bench_sub"
    folder.mkdir()
    for f in sorted(fixtures.glob("light_*.fit"))[: a.frames]:
        (folder / f.name).symlink_to(f)
        f.read_bytes()
    results = {"frames": a.frames, "machine": platform.machine(), "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d")}

    wall, rss, _ = measure([sys.executable, __file__, "--sigma", str(a.sigma),
                            "--python-child", str(folder), str(work)])
    results["python"] = {"seconds": round(wall, 2), "peak_rss_mib": round(rss)}
    print(f"python (numpy/astropy, compat §3): {wall:.2f} s, {rss:.0f} MiB", flush=True)

    server = RedisServer(work / "redis")
    env = dict(os.environ, PROCESSING_DIR=str(work / "processing"))
    env.pop("DATABASE_URL", None)
    worker = subprocess.Popen([binary, "worker", "-b", server.url(), "--astronomus", "-c", "1",
                               "--data-root", str(work), "-l", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        app = make_app(server.url())
        app.send_task("cleanup_old_jobs", args=[0]).get(timeout=30)  # the worker is up
        best = None
        for _ in range(a.repeat):
            start = time.perf_counter()
            r = app.send_task("stack_and_stretch",
                              args=[str(folder), "light_*.fit", a.sigma, ["jpg"], 1]).get(timeout=600)
            elapsed = time.perf_counter() - start
            assert r["num_frames"] == a.frames
            best = elapsed if best is None else min(best, elapsed)
        rss = peak_rss_mib(worker.pid)
        results["astroworker"] = {"seconds": round(best, 2), "peak_rss_mib": round(rss)}
        print(f"astroworker (Celery round trip, best of {a.repeat}): {best:.2f} s, {rss:.0f} MiB",
              flush=True)
        del r
        app.close()
    finally:
        import gc
        gc.collect()
        worker.terminate()
        worker.wait(30)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["speedup"] = round(results["python"]["seconds"] / results["astroworker"]["seconds"], 1)
    print(f"astroworker is {results['speedup']}× faster")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
