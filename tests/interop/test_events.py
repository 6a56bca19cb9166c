"""Celery events from astroworker, as Celery's own event receiver and Flower see them."""

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid

import pytest

from conftest import wait_for, free_port

pytestmark = pytest.mark.timeout(120)

ECHO = "astroworker.diag.echo"
FAIL = "astroworker.diag.fail"
RETRY = "astroworker.diag.retry"
HOST = socket.gethostname()
COMMON = ["hostname", "utcoffset", "pid", "clock"]


class Collector:
    """Celery's `EventReceiver` on a thread, feeding a list and an `events.State`."""

    def __init__(self, app, redis_server):
        self.app = app
        self.events = []
        self.state = app.events.State()
        self.receiver = None
        before = redis_server.client().execute_command("PUBSUB", "NUMPAT")
        threading.Thread(target=self._run, daemon=True).start()
        # Redis drops what is published before the subscription: wait for it.
        wait_for(lambda: redis_server.client().execute_command("PUBSUB", "NUMPAT") > before,
                 10, "the event receiver's subscription")

    def _run(self):
        with self.app.connection() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event):
        self.events.append(event)
        self.state.event(event)

    def of(self, task_id):
        return [e for e in self.events if e.get("uuid") == task_id]

    def types(self, task_id):
        return [e["type"] for e in self.of(task_id)]

    def close(self):
        if self.receiver is not None:
            self.receiver.should_stop = True


@pytest.fixture
def collector(app, redis_server):
    c = Collector(app, redis_server)
    yield c
    c.close()


def test_task_and_worker_events(app, fleet, collector):
    me = f"ev@{HOST}"
    w = fleet.astroworker("-E", "-c", "2", name="ev")
    wait_for(lambda: me in collector.state.workers and collector.state.workers[me].alive, 10,
             "worker-online")

    ok = app.send_task(ECHO, args=[5])
    assert ok.get(timeout=10) == 5
    bad = app.send_task(FAIL, args=["boom"])
    bad.get(timeout=10, propagate=False)
    retried = app.send_task(RETRY, args=[1], kwargs={"countdown": 0})
    assert retried.get(timeout=10) == 1
    revoked_id = str(uuid.uuid4())
    app.control.revoke(revoked_id)
    w.wait_log("Tasks flagged as revoked")
    app.send_task(ECHO, args=[0], task_id=revoked_id)
    wait_for(lambda: app.AsyncResult(revoked_id).state == "REVOKED", 10, "REVOKED")

    wait_for(lambda: collector.types(ok.id)[-1:] == ["task-succeeded"], 10, "task-succeeded")
    assert collector.types(ok.id) == ["task-received", "task-started", "task-succeeded"]
    received, started, succeeded = collector.of(ok.id)
    assert received["name"] == ECHO and received["args"] == "[5]" and received["kwargs"] == "{}"
    assert received["root_id"] == ok.id and received["parent_id"] is None
    assert received["retries"] == 0 and received["eta"] is None and received["expires"] is None
    assert succeeded["result"] == "5" and 0 <= succeeded["runtime"] < 5
    for e in (received, started, succeeded):
        assert list(e)[:4] == COMMON and e["hostname"] == me and e["pid"] == w.proc.pid
    clocks = [e["clock"] for e in (received, started, succeeded)]
    assert clocks == sorted(clocks) and len(set(clocks)) == 3

    wait_for(lambda: "task-failed" in collector.types(bad.id), 10, "task-failed")
    failed = collector.of(bad.id)[-1]
    assert failed["exception"] == "DiagnosticError('boom')"
    assert "DiagnosticError" in failed["traceback"]

    wait_for(lambda: len(collector.types(retried.id)) == 6, 10, "the retried task's 6 events")
    # The retry message is published before task-retried, so with countdown 0 the second
    # run's events may come before it, task-succeeded included on a loaded machine (as with
    # a Python worker, whose other process may run the retry meanwhile).
    kinds = collector.types(retried.id)
    assert sorted(kinds) == sorted(["task-received", "task-started", "task-retried",
                                    "task-received", "task-started", "task-succeeded"])
    assert kinds[:2] == ["task-received", "task-started"]
    assert kinds.index("task-succeeded") > len(kinds) - 1 - kinds[::-1].index("task-started")
    received_again = [e for e in collector.of(retried.id) if e["type"] == "task-received"]
    assert [e["retries"] for e in received_again] == [0, 1]

    wait_for(lambda: collector.types(revoked_id), 10, "task-revoked")
    (rev,) = collector.of(revoked_id)
    assert rev["type"] == "task-revoked"
    assert (rev["terminated"], rev["signum"], rev["expired"]) == (False, None, False)

    # The monitor's state: the worker's tasks with their outcome, and the worker alive on
    # heartbeats (it would be marked offline after 2 × freq seconds without one).
    state = collector.state
    assert state.tasks[ok.id].state == "SUCCESS" and state.tasks[ok.id].result == "5"
    assert state.tasks[bad.id].state == "FAILURE"
    beats = lambda: [e for e in collector.events if e["type"] == "worker-heartbeat"]  # noqa: E731
    wait_for(lambda: len(beats()) >= 2, 10, "two heartbeats")
    beat = beats()[-1]
    assert beat["freq"] == 2.0 and beat["processed"] >= 4 and len(beat["loadavg"]) == 3
    assert beat["sw_ident"] == "astroworker" and beat["sw_sys"] == "Linux"
    assert state.workers[me].alive

    w.stop()
    wait_for(lambda: not state.workers[me].alive, 10, "worker-offline")
    assert any(e["type"] == "worker-offline" for e in collector.events)


def test_without_task_events_only_worker_events_flow(app, fleet, collector):
    me = f"quiet@{HOST}"
    fleet.astroworker("-c", "1", name="quiet")
    wait_for(lambda: me in collector.state.workers, 10, "worker-online")
    r = app.send_task(ECHO, args=[1])
    assert r.get(timeout=10) == 1
    wait_for(lambda: any(e["type"] == "worker-heartbeat" for e in collector.events), 10,
             "a heartbeat")
    assert collector.of(r.id) == []
    # Flower's way to switch them on.
    app.control.enable_events(destination=[me])
    r2 = app.send_task(ECHO, args=[2])
    assert r2.get(timeout=10) == 2
    wait_for(lambda: collector.types(r2.id)[-1:] == ["task-succeeded"], 10, "task events")


def http_json(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_flower_shows_worker_and_tasks(app, fleet, redis_server, tmp_path):
    me = f"fl@{HOST}"
    port = free_port()
    env = dict(os.environ, FLOWER_UNAUTHENTICATED_API="1")
    log = open(tmp_path / "flower.log", "wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-b", redis_server.url(), "flower",
         f"--port={port}", "--address=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"

        def flower_up():
            try:
                return http_json(f"{base}/api/workers") is not None
            except OSError:
                return False
        wait_for(flower_up, 30, "Flower's HTTP API")
        # Started without -E: Flower switches task events on by remote control.
        w = fleet.astroworker("-c", "2", "-Q", "celery,fits", name="fl")
        w.wait_log("Events of group {task} enabled by remote", timeout=30)

        def worker_listed():
            workers = http_json(f"{base}/api/workers?refresh=1")
            return workers.get(me) if workers.get(me, {}).get("registered") else None
        info = wait_for(worker_listed, 30, "the worker in /api/workers", interval=0.5)
        assert ECHO in info["registered"] and "fits.stack" in info["registered"]
        assert sorted(q["name"] for q in info["active_queues"]) == ["celery", "fits"]
        assert info["stats"]["pool"]["max-concurrency"] == 2

        ok = app.send_task(ECHO, args=[7])
        bad = app.send_task(FAIL, args=["flat"])
        assert ok.get(timeout=10) == 7
        bad.get(timeout=10, propagate=False)

        def tasks_seen():
            tasks = http_json(f"{base}/api/tasks")
            if tasks.get(ok.id, {}).get("state") == "SUCCESS" and \
                    tasks.get(bad.id, {}).get("state") == "FAILURE":
                return tasks
        tasks = wait_for(tasks_seen, 30, "the tasks in /api/tasks", interval=0.5)
        assert tasks[ok.id]["name"] == ECHO and tasks[ok.id]["worker"] == me
        assert tasks[ok.id]["result"] == "7" and tasks[ok.id]["runtime"] >= 0
        assert tasks[bad.id]["exception"] == "DiagnosticError('flat')"
    finally:
        flower.terminate()
        flower.wait(timeout=10)
        log.close()
