"""At-least-once delivery: kill -9, warm shutdown, mixed fleets, hostile messages, Redis restarts."""

import base64
import gc
import json
import re
import signal
import time
import uuid
from collections import Counter

import pytest

from conftest import RedisServer, make_app, push_raw, wait_for

ECHO = "astroworker.diag.echo"
SLEEP = "astroworker.diag.sleep"

pytestmark = pytest.mark.timeout(240)


def runs_of(task_id, *workers, settle=5.0):
    """How many workers logged the task as finished (astroworker and Celery use the same line).

    A worker stores the result before it logs the success line (Celery's prefork child
    logs through the parent), so wait up to `settle` seconds for the first line to appear
    before counting; a count of 0 is still reported when none shows up.
    """
    pattern = re.compile(rf"\[{re.escape(task_id)}\] succeeded")

    def count():
        return sum(len(pattern.findall(w.log())) for w in workers)

    deadline = time.monotonic() + settle
    while count() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return count()


def test_acks_late_kill9_redelivered_to_astroworker(fleet, app, redis_server):
    first = fleet.astroworker("--acks-late", "--visibility-timeout", "3")
    r = app.send_task(SLEEP, args=[2])
    first.wait_log(rf"\[{r.id}\] received")
    time.sleep(0.5)
    first.kill9()
    assert redis_server.client().hexists("unacked", _tag_of(redis_server, r.id))
    second = fleet.astroworker("--acks-late", "--visibility-timeout", "3")
    assert r.get(timeout=30) == 2
    second.wait_log(r"Restored 1 unacknowledged message")
    assert runs_of(r.id, second) == 1
    assert redis_server.client().hlen("unacked") == 0


def test_acks_late_kill9_redelivered_to_python_worker(fleet, app, redis_server):
    first = fleet.astroworker("--acks-late", "--visibility-timeout", "3")
    r = app.send_task(SLEEP, args=[2])
    first.wait_log(rf"\[{r.id}\] received")
    time.sleep(0.5)
    first.kill9()
    time.sleep(3.5)  # past the visibility timeout: the Python worker restores it at start-up
    py = fleet.python_worker("-c", "1", visibility_timeout=3)
    assert r.get(timeout=30) == 2
    assert runs_of(r.id, py) == 1


def test_python_worker_killed_astroworker_restores(fleet, app):
    py = fleet.python_worker("-c", "1", visibility_timeout=3, acks_late=True)
    r = app.send_task(SLEEP, args=[3])
    py.wait_log(rf"\[{r.id}\] received")
    py.kill9()
    subprocess_children_cleanup()
    aw = fleet.astroworker("--visibility-timeout", "3")
    assert r.get(timeout=30) == 3
    assert runs_of(r.id, aw) == 1


def subprocess_children_cleanup():
    """kill -9 of a prefork parent leaves its children to exit on their own."""
    time.sleep(0.5)


def _tag_of(server, task_id):
    for tag, value in server.client().hgetall("unacked").items():
        env = json.loads(value)[0]
        if env["headers"]["id"] == task_id:
            return tag
    raise AssertionError(f"{task_id} is not in unacked")


def test_warm_shutdown_gives_back_prefetched(fleet, app):
    a = fleet.astroworker("-c", "1", "--prefetch-multiplier", "4")
    results = [app.send_task(SLEEP, args=[0.7]) for _ in range(5)]
    a.wait_log(r"received", count=5)
    a.send(signal.SIGTERM)
    # Wait for the exit: stop() would send a second SIGTERM (cold shutdown) if the running
    # task were still finishing.
    a.proc.wait(timeout=20)
    assert a.stop() == 0
    log = a.log()
    assert "Restoring 4 unacknowledged message(s)" in log, log[-2000:]
    b = fleet.astroworker("-c", "2")
    for r in results:
        assert r.get(timeout=20) == 0.7
    for r in results:
        assert runs_of(r.id, a, b) == 1


def test_cold_shutdown_restores_acks_late_running_task(fleet, app):
    a = fleet.astroworker("-c", "1", "--acks-late")
    r = app.send_task(SLEEP, args=[3])
    a.wait_log(rf"\[{r.id}\] received")
    time.sleep(0.3)
    a.send(signal.SIGTERM)
    time.sleep(0.2)
    a.send(signal.SIGTERM)  # second signal: cold
    assert a.stop(timeout=20) == 1
    b = fleet.astroworker("-c", "1")
    assert r.get(timeout=20) == 3
    assert runs_of(r.id, b) == 1


def test_mixed_fleet_2000_tasks_exactly_once(fleet, app):
    a = fleet.astroworker("-c", "2", name="awa")
    b = fleet.astroworker("-c", "2", name="awb")
    py = fleet.python_worker("-c", "2", "-P", "prefork")
    n = 2000
    with app.producer_or_acquire() as producer:
        results = [app.send_task("celery.accumulate", args=[i, "x"], producer=producer) for i in range(n)]
    values = [r.get(timeout=120) for r in results]
    assert values == [[i, "x"] for i in range(n)]
    counts = Counter()
    pattern = re.compile(r"celery\.accumulate\[([0-9a-f-]{36})\] succeeded")
    for w in (a, b, py):
        per_worker = pattern.findall(w.log())
        assert per_worker, f"{w.log_path.name} ran nothing"
        counts.update(per_worker)
    assert len(counts) == n
    assert set(counts.values()) == {1}


def envelope(body: bytes, content_type="application/json", headers=None, encode=True):
    return json.dumps({
        "body": base64.b64encode(body).decode() if encode else body.decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": headers if headers is not None else {"lang": "py", "task": ECHO, "id": str(uuid.uuid4())},
        "properties": {"delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    }).encode()


@pytest.mark.parametrize(
    "payload, expected_log",
    [
        (b"\x00\xff not json at all", r"not a kombu envelope"),
        (b"[1, 2, 3]", r"not a kombu envelope"),
        (envelope(b"\x80\x04\x95pickle", "application/x-python-serialize"), r"refusing content type"),
        (envelope(b"!!yaml", "application/x-yaml"), r"refusing content type"),
        (envelope(b"\x93msgpack", "application/x-msgpack"), r"refusing content type"),
        (envelope(b"not base64 ~~~", encode=False), r"invalid base64"),
        (envelope(b"{broken json"), r"not valid JSON"),
        (envelope(b"[[], {}, {}]", headers={}), r"not a Celery task"),
        (envelope(b"[[], {}, {}]", headers={"task": ECHO}), r"missing task id"),
        (envelope(b'"just a string"'), r"neither \[args, kwargs, embed\]"),
        (envelope(b"[[], {}, {}]", headers={"task": ECHO, "id": "x", "eta": "tomorrow"}), r"not an ISO 8601 time"),
    ],
    ids=["binary", "json-list", "pickle", "yaml", "msgpack", "bad-base64", "bad-json", "no-headers",
         "no-id", "bad-body", "bad-eta"],
)
def test_hostile_messages_are_logged_and_dropped(fleet, app, redis_server, payload, expected_log):
    w = fleet.astroworker("-c", "1")
    push_raw(redis_server, "celery", payload)
    w.wait_log(expected_log)
    assert app.send_task(ECHO, args=["next"]).get(timeout=10) == "next"
    assert redis_server.client().hlen("unacked") == 0
    assert w.proc.poll() is None


def test_protocol_v1_message_runs(fleet, redis_server):
    w = fleet.astroworker()
    app = make_app(redis_server.url(), task_protocol=1)
    r = app.send_task(ECHO, args=["v1"])
    assert r.get(timeout=10) == "v1"
    app.close()
    w.wait_log(r"succeeded")


def test_unknown_tasks_requeue_for_python_worker(fleet, app):
    aw = fleet.astroworker("--unknown-tasks", "requeue", "-l", "debug", diag=False)
    r = app.send_task(ECHO, args=["for python"])
    aw.wait_log(rf"Requeueing task of unregistered type '{ECHO}'", count=3)
    assert not r.ready()
    py = fleet.python_worker("-c", "1")
    assert r.get(timeout=20) == "for python"
    assert runs_of(r.id, py) == 1
    assert runs_of(r.id, aw) == 0


def test_redis_restart_mid_run(tmp_path):
    server = RedisServer(tmp_path / "redis-p", persistent=True)
    from conftest import Fleet

    f = Fleet(server, tmp_path)
    app = make_app(server.url())
    try:
        w = f.astroworker("-c", "2")
        running = [app.send_task(SLEEP, args=[2]) for _ in range(2)]
        w.wait_log(r"received", count=2)
        server.stop()
        time.sleep(2.5)  # the tasks finish while Redis is down
        server.start()
        for r in running:
            assert r.get(timeout=30) == 2
        w.wait_log(r"Connection to broker .* restored|Redis at .* is back")
        assert app.send_task(ECHO, args=["after"]).get(timeout=20) == "after"
        assert w.proc.poll() is None
    finally:
        f.stop_all()
        running = None
        gc.collect()  # pending AsyncResults unsubscribe when collected: while Redis is up
        app.close()
        server.stop()
