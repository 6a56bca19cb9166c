#!/usr/bin/env python3
"""Throughput and latency of astroworker vs a Python `celery worker`, same Redis, one run.

    .venv/bin/python benches/celery_throughput.py [--tasks 5000] [--latency 500] [-c 2]

Throughput: N `celery.accumulate` tasks are queued first, then the worker starts; the rate is
taken from the first to the last result's `date_done` (start-up excluded) and every result is
checked. Latency: `.delay()` → `.get()` round trips, one at a time, against an idle worker.
Both workers run with the same concurrency, acks early, log level WARNING.
"""

import argparse
import gc
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import redis
from celery import Celery

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "astroworker"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp, "--logfile", f"{tmp}/redis.log"])
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc, port, client
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def start_worker(kind, url, concurrency, tmp):
    log = open(f"{tmp}/{kind}.log", "wb")
    if kind == "astroworker":
        args = [str(BIN), "worker", "-b", url, "-c", str(concurrency), "-l", "WARNING"]
        ready = b"ready."
        env = dict(os.environ, RUST_LOG="warn,astroworker::worker=info")
    else:
        app_dir = Path(tmp) / "pyapp"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "benchapp.py").write_text(
            "from celery import Celery\napp = Celery('bench')\n"
            f"app.conf.broker_url = app.conf.result_backend = {url!r}\n"
        )
        args = [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "-P", "prefork", "-c",
                str(concurrency), "-l", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat"]
        ready = b"ready."
        env = dict(os.environ, PYTHONPATH=str(app_dir))
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    path = Path(f"{tmp}/{kind}.log")
    deadline = time.time() + 60
    while ready not in path.read_bytes():
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit(f"{kind} did not start:\n{path.read_text()}")
        time.sleep(0.05)
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def throughput(kind, url, client, n, concurrency, tmp):
    client.flushdb()
    app = Celery("bench", broker=url, backend=url)
    with app.producer_or_acquire() as producer:
        ids = [app.send_task("celery.accumulate", args=[i], producer=producer).id for i in range(n)]
    proc = start_worker(kind, url, concurrency, tmp)
    keys = [f"celery-task-meta-{i}" for i in ids]
    deadline = time.time() + 600
    while client.exists(*keys[-200:]) < 200 or client.llen("celery") > 0:
        if time.time() > deadline:
            raise SystemExit(f"{kind}: not all results arrived")
        time.sleep(0.05)
    while True:
        metas = [m for m in client.mget(keys)]
        if all(metas):
            break
        time.sleep(0.05)
    stop(proc)
    done = []
    for i, raw in enumerate(metas):
        meta = json.loads(raw)
        assert meta["status"] == "SUCCESS" and meta["result"] == [i], meta
        done.append(datetime.fromisoformat(meta["date_done"].replace("Z", "+00:00")))
    span = (max(done) - min(done)).total_seconds()
    app.close()
    return (n - 1) / span


def latency(kind, url, client, n, concurrency, tmp):
    client.flushdb()
    proc = start_worker(kind, url, concurrency, tmp)
    app = Celery("bench", broker=url, backend=url)
    app.send_task("celery.accumulate", args=[0]).get(timeout=30)  # warm up connections
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        assert app.send_task("celery.accumulate", args=[i]).get(timeout=30) == [i]
        samples.append((time.perf_counter() - t0) * 1000)
    stop(proc)
    app.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--latency", type=int, default=500)
    ap.add_argument("-c", "--concurrency", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not BIN.exists():
        raise SystemExit("build first: cargo build --release")
    with tempfile.TemporaryDirectory() as tmp:
        rproc, port, client = start_redis(tmp)
        url = f"redis://127.0.0.1:{port}/0"
        rows = {}
        try:
            for kind in ("python", "astroworker"):
                tps = throughput(kind, url, client, args.tasks, args.concurrency, tmp)
                p50, p99 = latency(kind, url, client, args.latency, args.concurrency, tmp)
                rows[kind] = {"tasks_per_s": tps, "latency_p50_ms": p50, "latency_p99_ms": p99}
        finally:
            gc.collect()  # pending AsyncResults unsubscribe when collected: while Redis is up
            rproc.terminate()
            rproc.wait(10)
    import celery

    print(f"# {args.tasks} celery.accumulate tasks, -c {args.concurrency}, celery {celery.__version__}, "
          f"{platform.machine()} {os.cpu_count()} CPUs, {datetime.now(timezone.utc):%Y-%m-%d}")
    print("| worker | tasks/s | p50 latency (ms) | p99 latency (ms) |")
    print("|---|---:|---:|---:|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['tasks_per_s']:.0f} | {r['latency_p50_ms']:.2f} | {r['latency_p99_ms']:.2f} |")
    ratio = rows["astroworker"]["tasks_per_s"] / rows["python"]["tasks_per_s"]
    print(f"\nastroworker / python throughput: {ratio:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratio": ratio, "tasks": args.tasks,
                                         "concurrency": args.concurrency}, indent=2))


if __name__ == "__main__":
    main()
