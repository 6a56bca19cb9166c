"""Fixtures: a private redis-server per test, astroworker processes, a Python Celery app.

Nothing here touches a Redis server the tests did not start.
"""

import gc
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("ASTROWORKER_BIN", ROOT / "target" / "release" / "astroworker"))
HERE = Path(__file__).resolve().parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A redis-server of our own on a free port; can be stopped and restarted with its data."""

    def __init__(self, workdir: Path, persistent: bool = False, databases: int = 16):
        if not shutil.which("redis-server"):
            pytest.fail("redis-server is not installed (scripts/test.sh installs it)")
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.databases = databases
        self.proc = None
        self.start()

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--logfile", str(self.dir / "redis.log"),
                "--databases", str(self.databases)]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args)
        wait_for(self._pings, 10, "redis-server to start")

    def _pings(self):
        try:
            return redis.Redis(port=self.port, socket_timeout=0.5).ping()
        except redis.exceptions.ConnectionError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def url(self, db=0):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db=0):
        return redis.Redis(port=self.port, db=db)


class WorkerProcess:
    """An `astroworker worker` (or Python `celery worker`) subprocess with its log in a file."""

    def __init__(self, args, log_path: Path, env=None, ready_pattern=r" ready\."):
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT, env=full_env)
        self.wait_log(ready_pattern, timeout=30)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern, timeout=20, count=1):
        def found():
            if self.proc.poll() is not None and len(re.findall(pattern, self.log())) < count:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return len(re.findall(pattern, self.log())) >= count

        try:
            wait_for(found, timeout, f"log {pattern!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- log ---\n{self.log()[-4000:]}") from None

    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.log_file.close()


class RedisDB:
    """One database of the session's redis-server: what a test sees as "its" Redis."""

    def __init__(self, server: RedisServer, db: int):
        self.server = server
        self.db = db
        self.port = server.port

    def url(self, db=None):
        return self.server.url(self.db if db is None else db)

    def client(self, db=None):
        return self.server.client(self.db if db is None else db)


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), databases=4096)
    yield server
    server.stop()


_next_db = iter(range(1, 4096))


@pytest.fixture
def redis_server(redis_session):
    """A fresh, empty database on the session's redis-server (tests that stop or restart Redis
    start their own server instead)."""
    view = RedisDB(redis_session, next(_next_db))
    view.client().flushdb()
    yield view
    view.client().flushdb()


def make_app(url, **conf):
    app = Celery("tests", broker=url, backend=url)
    app.conf.update(result_expires=3600, **conf)
    return app


@pytest.fixture
def app(redis_server):
    a = make_app(redis_server.url())
    yield a
    # Pending AsyncResults unsubscribe when collected: do it while Redis is still up.
    gc.collect()
    a.close()


class Fleet:
    """Starts workers against one Redis and stops them all at the end of the test."""

    def __init__(self, server, tmp_path, url=None):
        self.server = server
        self.url = url or server.url()
        self.tmp = tmp_path
        self.workers = []

    def astroworker(self, *extra, name=None, env=None, diag=True):
        if not BIN.exists():
            pytest.fail(f"{BIN} is missing: run `cargo build --release` first")
        name = name or f"aw{len(self.workers)}"
        args = [str(BIN), "worker", "-b", self.url, "-n", f"{name}@%h"]
        if diag:
            args.append("--diagnostic-tasks")
        args += list(extra)
        w = WorkerProcess(args, self.tmp / f"{name}.log", env=env)
        self.workers.append(w)
        return w

    def python_worker(self, *extra, name=None, visibility_timeout=3600, acks_late=False):
        name = name or f"py{len(self.workers)}"
        env = {
            "CELERY_BROKER_URL": self.url,
            "CELERY_RESULT_BACKEND": self.url,
            "AW_VISIBILITY_TIMEOUT": str(visibility_timeout),
            "AW_ACKS_LATE": "1" if acks_late else "0",
            "PYTHONPATH": str(HERE),
        }
        args = [sys.executable, "-m", "celery", "-A", "pyapp", "worker", "-l", "INFO",
                "-n", f"{name}@%h", "--without-mingle", "--without-gossip", *extra]
        w = WorkerProcess(args, self.tmp / f"{name}.log", env=env, ready_pattern=r"ready\.")
        self.workers.append(w)
        return w

    def stop_all(self):
        for w in self.workers:
            if w.proc.poll() is None:
                w.stop(signal.SIGQUIT, timeout=10)


@pytest.fixture
def fleet(redis_server, tmp_path):
    f = Fleet(redis_server, tmp_path)
    yield f
    f.stop_all()


def push_raw(server, queue, payload: bytes):
    server.client().lpush(queue, payload)
