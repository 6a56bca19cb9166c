"""Python Celery producers → astroworker → AsyncResult: values, errors, scheduling, limits."""

import json
import time
from pathlib import Path
from datetime import datetime, timedelta, timezone

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded

ECHO = "astroworker.diag.echo"
SLEEP = "astroworker.diag.sleep"
FAIL = "astroworker.diag.fail"
RETRY = "astroworker.diag.retry"
PROGRESS = "astroworker.diag.progress"

pytestmark = pytest.mark.timeout(120)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -17,
        2**53,
        3.25,
        "",
        "ünïcödé ✨ 星",
        [1, [2, [3, None]], {"a": "b"}],
        {"nested": {"list": [1.5, False, None], "text": "x\ny\"z'"}},
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip_json_values(fleet, app, value):
    fleet.astroworker("-c", "2")
    assert app.send_task(ECHO, args=[value]).get(timeout=10) == value


def test_delay_and_apply_async_on_declared_task(fleet, app):
    """The producer declares the task like an app does and calls .delay()/.apply_async()."""
    fleet.astroworker()

    @app.task(name=ECHO)
    def echo(value):  # pragma: no cover - runs on the worker, never here
        raise AssertionError("executed in the producer")

    assert echo.delay({"x": [1, 2]}).get(timeout=10) == {"x": [1, 2]}
    assert echo.apply_async(args=["later"], countdown=0.5).get(timeout=10) == "later"
    assert echo.apply_async(kwargs={"value": 3}, priority=7).get(timeout=10) == 3


def test_round_trip_kwargs_and_large_payload(fleet, app):
    fleet.astroworker()
    big = "x" * (1024 * 1024)
    assert app.send_task(ECHO, kwargs={"value": big}).get(timeout=20) == big
    nested = {"rows": [{"i": i, "s": str(i) * 10} for i in range(20000)]}
    assert app.send_task(ECHO, args=[nested]).get(timeout=20) == nested
    assert app.send_task("celery.accumulate", args=[1, "a", None]).get(timeout=10) == [1, "a", None]


def test_failure_reraises_with_type_and_message(fleet, app):
    fleet.astroworker()
    r = app.send_task(FAIL, args=["the sky is cloudy"])
    with pytest.raises(Exception) as info:
        r.get(timeout=10)
    assert type(info.value).__name__ == "DiagnosticError"
    assert str(info.value) == "the sky is cloudy"
    assert r.state == "FAILURE"
    assert "DiagnosticError" in r.traceback
    # Bad arguments fail like a Python call would.
    r = app.send_task(ECHO, args=[1, 2])
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        r.get(timeout=10)


def test_unknown_task_fails_not_registered_and_worker_serves_on(fleet, app):
    w = fleet.astroworker()
    r = app.send_task("proj.nope", args=[1])
    with pytest.raises(Exception) as info:
        r.get(timeout=10)
    assert type(info.value).__name__ == "NotRegistered"
    w.wait_log(r"Received unregistered task of type 'proj\.nope'")
    assert app.send_task(ECHO, args=["still here"]).get(timeout=10) == "still here"


def test_priority_buckets_lower_first(fleet, app, redis_server):
    ids = {}
    for p in [9, 0, 5, 1, 6]:
        ids[p] = app.send_task(ECHO, args=[p], priority=p).id
    assert redis_server.client().llen("celery\x06\x163") == 1
    fleet.astroworker("-c", "1", "--prefetch-multiplier", "1")
    done = {}
    for p, tid in ids.items():
        app.AsyncResult(tid).get(timeout=10)
        meta = json.loads(redis_server.client().get(f"celery-task-meta-{tid}"))
        done[p] = meta["date_done"]
    order = sorted(done, key=lambda p: done[p])
    assert order == [0, 1, 5, 6, 9]


def test_countdown_and_eta_do_not_block_other_work(fleet, app):
    fleet.astroworker("-c", "1")
    sent = time.time()
    later = app.send_task(ECHO, args=["later"], countdown=2)
    eta = app.send_task(ECHO, args=["eta"], eta=datetime.now(timezone.utc) + timedelta(seconds=1))
    now = app.send_task(ECHO, args=["now"])
    assert now.get(timeout=5) == "now"
    assert time.time() - sent < 1.5, "a plain task waited behind ETA tasks"
    assert eta.get(timeout=10) == "eta"
    assert later.get(timeout=10) == "later"
    assert time.time() - sent >= 1.9


def test_eta_past_visibility_timeout_runs_once(fleet, app):
    # Two workers with a 2 s visibility timeout; an ETA 5 s away must not be restored to the
    # other worker while the first one holds it.
    a = fleet.astroworker("--visibility-timeout", "2")
    b = fleet.astroworker("--visibility-timeout", "2")
    r = app.send_task(ECHO, args=["once"], countdown=5)
    assert r.get(timeout=15) == "once"
    time.sleep(1)
    runs = sum(w.log().count(f"[{r.id}] succeeded") for w in (a, b))
    assert runs == 1


def test_expires_revokes(fleet, app):
    w = fleet.astroworker()
    r = app.send_task(ECHO, args=[1], countdown=2, expires=1)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=10)
    assert r.state == "REVOKED"
    # Expired before it is even received.
    r2 = app.send_task(ECHO, args=[2], expires=datetime.now(timezone.utc) - timedelta(seconds=5))
    with pytest.raises(TaskRevokedError):
        r2.get(timeout=10)
    w.wait_log(r"Discarding revoked task.*expired", count=2)


def test_retries_then_succeeds(fleet, app):
    w = fleet.astroworker()
    r = app.send_task(RETRY, args=[3])
    assert r.get(timeout=15) == 3
    w.wait_log(rf"{RETRY}\[{r.id}\] retry: Retry in 0s", count=3)


def test_retry_state_and_message_shape(fleet, app, redis_server):
    w = fleet.astroworker()
    r = app.send_task(RETRY, args=[1], kwargs={"countdown": 30})
    w.wait_log(rf"\[{r.id}\] retry: Retry in 30s")
    assert r.state == "RETRY"
    assert type(r.info).__name__ == "DiagnosticRetry"
    meta = json.loads(redis_server.client().get(f"celery-task-meta-{r.id}"))
    assert meta["children"] == [[[r.id, None], None]]
    assert meta["date_done"] is None
    # The retry message is held by the worker until its ETA: unacked, with Celery's shape.
    w.wait_log(rf"\[{r.id}\] received", count=2)
    (value,) = [v for v in redis_server.client().hvals("unacked")]
    env, exchange, routing_key = json.loads(value)
    golden = json.loads((GOLDEN / "task_retry_message.json").read_text())
    assert list(env["headers"]) == list(golden["headers"])
    assert list(env["properties"]) == list(golden["properties"])
    h = env["headers"]
    assert (h["id"], h["retries"], h["parent_id"], h["root_id"]) == (r.id, 1, r.id, r.id)
    eta = datetime.fromisoformat(h["eta"])
    assert 25 < (eta - datetime.now(timezone.utc)).total_seconds() <= 30
    assert (exchange, routing_key) == ("", "celery")
    assert env["properties"]["origin"].startswith("gen")


def test_soft_and_hard_time_limits(fleet, app):
    fleet.astroworker("-c", "2")
    soft = app.send_task(SLEEP, args=[10], soft_time_limit=1)
    with pytest.raises(SoftTimeLimitExceeded):
        soft.get(timeout=10)
    hard = app.send_task(SLEEP, args=[10], time_limit=1)
    t0 = time.time()
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=10)
    assert time.time() - t0 < 5
    assert app.send_task(ECHO, args=["serving"]).get(timeout=5) == "serving"


def test_worker_default_time_limit_flag(fleet, app):
    fleet.astroworker("--time-limit", "1")
    r = app.send_task(SLEEP, args=[5])
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=10)


def test_progress_visible_while_running(fleet, app):
    fleet.astroworker()
    r = app.send_task(PROGRESS, args=[6, 0.4])
    seen = []
    deadline = time.time() + 10
    while not r.ready() and time.time() < deadline:
        if r.state == "PROGRESS":
            seen.append(r.info["current"])
            assert r.info["total"] == 6
        time.sleep(0.1)
    assert r.get(timeout=10) == 6
    assert len(set(seen)) >= 2, seen
    assert seen == sorted(seen)


def test_track_started(fleet, app, redis_server):
    fleet.astroworker("--track-started")
    r = app.send_task(SLEEP, args=[1.5])
    deadline = time.time() + 5
    while r.state != "STARTED" and time.time() < deadline:
        time.sleep(0.05)
    assert r.state == "STARTED"
    assert r.info["hostname"].startswith("aw0@")
    assert r.get(timeout=5) == 1.5


def test_ignore_result(fleet, app, redis_server):
    w = fleet.astroworker()
    r = app.send_task(ECHO, args=["quiet"], ignore_result=True)
    w.wait_log(rf"\[{r.id}\] succeeded")
    assert redis_server.client().get(f"celery-task-meta-{r.id}") is None
    # Results still expire as configured.
    r2 = app.send_task(ECHO, args=["loud"])
    r2.get(timeout=5)
    ttl = redis_server.client().ttl(f"celery-task-meta-{r2.id}")
    assert 86000 < ttl <= 86400


def test_result_expires_flag(fleet, app, redis_server):
    fleet.astroworker("--result-expires", "120")
    r = app.send_task(ECHO, args=[1])
    r.get(timeout=5)
    assert 0 < redis_server.client().ttl(f"celery-task-meta-{r.id}") <= 120


def test_queues_and_routing(fleet, app):
    fleet.astroworker("-Q", "fits,other")
    a = app.send_task(ECHO, args=["a"], queue="fits")
    b = app.send_task(ECHO, args=["b"], queue="other")
    assert a.get(timeout=10) == "a"
    assert b.get(timeout=10) == "b"
