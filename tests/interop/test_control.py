"""Remote control (pidbox): the real `celery inspect`/`celery control` CLI and API against
astroworker, a mixed fleet, and astroworker's own `inspect`/`control` subcommands."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
from celery.exceptions import TaskRevokedError

from conftest import BIN, wait_for

ECHO = "astroworker.diag.echo"
SLEEP = "astroworker.diag.sleep"

pytestmark = pytest.mark.timeout(120)

HOST = socket.gethostname()


def node(name):
    return f"{name}@{HOST}"


def inspect(app, name, timeout=3):
    return app.control.inspect(destination=[node(name)], timeout=timeout)


def celery_cli(redis_server, *args, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "celery", "-b", redis_server.url(), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def astroworker_cli(redis_server, *args, timeout=30):
    return subprocess.run([str(BIN), *args, "-b", redis_server.url()],
                          capture_output=True, text=True, timeout=timeout)


def test_ping_stats_registered_queues_conf(fleet, app, redis_server):
    w = fleet.astroworker("-c", "2", name="aw")
    me = node("aw")
    i = inspect(app, "aw")
    assert i.ping() == {me: {"ok": "pong"}}
    assert app.send_task(ECHO, args=[1]).get(timeout=10) == 1

    stats = i.stats()[me]
    assert stats["pid"] == w.proc.pid
    assert stats["total"] == {ECHO: 1}
    assert stats["pool"]["max-concurrency"] == 2
    assert stats["prefetch_count"] == 8
    assert stats["broker"]["port"] == redis_server.port
    assert stats["broker"]["virtual_host"] == str(redis_server.db)
    assert stats["broker"]["transport"] == "redis"
    assert int(stats["clock"]) > 0
    assert stats["uptime"] >= 0
    assert stats["rusage"]["maxrss"] > 0

    registered = i.registered()[me]
    assert registered == sorted(registered)
    assert SLEEP in registered and "fits.stack" in registered
    assert not any(n.startswith("celery.") for n in registered)

    queues = i.active_queues()[me]
    assert [q["name"] for q in queues] == ["celery"]
    assert queues[0]["exchange"] == {"name": "celery", "type": "direct", "arguments": None,
                                     "durable": True, "passive": False, "auto_delete": False,
                                     "delivery_mode": None, "no_declare": False}
    assert i.conf()[me]["broker_url"] == redis_server.url()
    assert i.revoked() == {me: []}

    # The real CLI, with a destination, and the exact reply to an unknown command.
    out = celery_cli(redis_server, "inspect", "ping", "-d", me)
    assert out.returncode == 0, out.stderr
    assert f"{me}: OK" in out.stdout and "pong" in out.stdout
    assert app.control.broadcast("nosuch", reply=True, timeout=2, destination=[me]) == [
        {me: {"error": "KeyError('nosuch')"}}]
    w.wait_log(r"No such control command: nosuch")


def test_malformed_pidbox_messages_are_dropped(fleet, app, redis_server):
    w = fleet.astroworker(name="aw")
    channel = f"/{redis_server.db}.celery.pidbox"
    client = redis_server.client()
    for garbage in [b"not json", b"[1, 2]", json.dumps({"body": "e30=", "properties": {"body_encoding": "base64"}}).encode(),
                    json.dumps({"body": json.dumps({"method": 5}), "properties": {}}).encode(),
                    json.dumps({"body": json.dumps({"method": "ping", "destination": 7}), "properties": {}}).encode()]:
        assert client.publish(channel, garbage) == 1
    w.wait_log(r"Discarding malformed remote control message", count=5)
    assert inspect(app, "aw").ping() == {node("aw"): {"ok": "pong"}}


def test_active_reserved_query_task_and_revoke_queued(fleet, app):
    w = fleet.astroworker("-c", "1", name="aw")
    me = node("aw")
    running = app.send_task(SLEEP, args=[3])
    queued = app.send_task(SLEEP, args=[0.1])
    w.wait_log(rf"\[{queued.id}\] received")
    i = inspect(app, "aw")
    active = wait_for(lambda: i.active()[me], 10, "the sleep task to start")
    assert [a["id"] for a in active] == [running.id]
    a = active[0]
    assert a["name"] == SLEEP and a["type"] == SLEEP and a["args"] == [3] and a["kwargs"] == {}
    assert a["hostname"] == me and a["acknowledged"] is True and a["worker_pid"] == w.proc.pid
    assert abs(a["time_start"] - time.time()) < 10
    assert a["delivery_info"] == {"exchange": "", "routing_key": "celery", "priority": 0,
                                  "redelivered": False}
    safe = app.control.inspect(destination=[me], timeout=3).active(safe=True)[me][0]
    assert safe["args"] == "[3]"
    reserved = i.reserved()[me]
    assert [r["id"] for r in reserved] == [queued.id]
    assert reserved[0]["time_start"] is None and reserved[0]["worker_pid"] is None
    assert reserved[0]["acknowledged"] is False
    states = i.query_task([running.id, queued.id, "no-such-id"])[me]
    assert states[running.id][0] == "active" and states[queued.id][0] == "reserved"
    assert set(states) == {running.id, queued.id}

    replies = app.control.revoke(queued.id, reply=True, destination=[me], timeout=3)
    assert replies == [{me: {"ok": f"tasks {{'{queued.id}'}} flagged as revoked"}}]
    assert running.get(timeout=20) == 3
    with pytest.raises(TaskRevokedError):
        queued.get(timeout=10)
    assert queued.state == "REVOKED"
    w.wait_log(rf"Discarding revoked task: {SLEEP}\[{queued.id}\]")
    assert f"[{queued.id}] succeeded" not in w.log()
    assert i.revoked()[me] == [queued.id]

    # A message arriving after the revocation is discarded at receipt.
    late = app.send_task(ECHO, args=["late"], task_id=queued.id)
    w.wait_log(rf"Discarding revoked task: {ECHO}\[{late.id}\]")
    assert app.send_task(ECHO, args=["after"]).get(timeout=10) == "after"


def test_scheduled_and_revoked_eta_task_is_not_given_back(fleet, app, redis_server):
    w = fleet.astroworker(name="aw")
    me = node("aw")
    r = app.send_task(ECHO, args=["later"], countdown=60)
    w.wait_log(rf"\[{r.id}\] received")
    scheduled = inspect(app, "aw").scheduled()[me]
    assert len(scheduled) == 1
    entry = scheduled[0]
    assert entry["priority"] == 6 and entry["request"]["id"] == r.id
    assert entry["request"]["time_start"] is None
    assert entry["eta"].endswith("+00:00")
    assert inspect(app, "aw").reserved()[me] == []
    app.control.revoke(r.id)  # a cast, as Celery's default
    wait_for(lambda: inspect(app, "aw").revoked()[me] == [r.id], 10, "the revocation")
    w.send(signal.SIGTERM)
    assert w.proc.wait(20) == 0
    w.wait_log(rf"Discarding revoked task: {ECHO}\[{r.id}\]")
    assert r.state == "REVOKED"
    assert redis_server.client().llen("celery") == 0
    assert redis_server.client().hlen("unacked") == 0


def test_revoke_terminate_running_task(fleet, app):
    w = fleet.astroworker("-c", "1", name="aw")
    me = node("aw")
    r = app.send_task(SLEEP, args=[30])
    wait_for(lambda: inspect(app, "aw").active()[me], 10, "the sleep task to start")
    start = time.monotonic()
    replies = app.control.revoke(r.id, terminate=True, reply=True, destination=[me], timeout=3)
    assert replies == [{me: {"ok": f"terminate: {r.id}"}}]
    with pytest.raises(TaskRevokedError) as exc:
        r.get(timeout=10)
    assert "terminated" in str(exc.value)
    assert r.state == "REVOKED"
    # The slot is free again: the next task runs at once.
    assert app.send_task(ECHO, args=["next"]).get(timeout=10) == "next"
    assert time.monotonic() - start < 10
    w.wait_log(rf"{SLEEP}\[{r.id}\] terminated")
    assert inspect(app, "aw").active()[me] == []
    # Unknown ids are still flagged revoked.
    assert app.control.revoke("nope", terminate=True, reply=True, destination=[me], timeout=3) == [
        {me: {"ok": "terminate: tasks unknown"}}]
    assert inspect(app, "aw").revoked()[me] == [r.id, "nope"]


def test_add_and_cancel_consumer(fleet, app, redis_server):
    w = fleet.astroworker(name="aw")
    me = node("aw")
    client = redis_server.client()
    first = app.send_task(ECHO, args=["extra-1"], queue="extra")
    time.sleep(1.5)
    assert client.llen("extra") == 1  # nobody consumes "extra" yet
    replies = app.control.add_consumer("extra", reply=True, destination=[me], timeout=3)
    assert replies == [{me: {"ok": "add consumer extra"}}]
    assert first.get(timeout=10) == "extra-1"
    names = [q["name"] for q in inspect(app, "aw").active_queues()[me]]
    assert names == ["celery", "extra"]

    replies = app.control.cancel_consumer("extra", reply=True, destination=[me], timeout=3)
    assert replies == [{me: {"ok": "no longer consuming from extra"}}]
    time.sleep(1.5)  # a BRPOP in flight may still take one
    app.send_task(ECHO, args=["extra-2"], queue="extra")
    time.sleep(2)
    assert client.llen("extra") == 1
    assert [q["name"] for q in inspect(app, "aw").active_queues()[me]] == ["celery"]
    assert app.send_task(ECHO, args=["celery"]).get(timeout=10) == "celery"


def test_time_limit_and_events_toggles(fleet, app):
    w = fleet.astroworker(name="aw")
    me = node("aw")
    reply = app.control.time_limit(SLEEP, soft=None, hard=1, reply=True, destination=[me], timeout=3)
    assert reply == [{me: {"ok": "time limits set successfully"}}]
    assert app.control.time_limit("no.such", hard=1, reply=True, destination=[me], timeout=3) == [
        {me: {"error": "unknown task"}}]
    assert f"{SLEEP} [time_limit=1]" in inspect(app, "aw").registered("time_limit")[me]
    with pytest.raises(Exception) as exc:
        app.send_task(SLEEP, args=[5]).get(timeout=15)
    assert type(exc.value).__name__ == "TimeLimitExceeded"

    def call(cmd):
        return app.control.broadcast(cmd, reply=True, destination=[me], timeout=3)[0][me]

    assert call("disable_events") == {"ok": "task events already disabled"}
    assert call("enable_events") == {"ok": "task events enabled"}
    assert call("enable_events") == {"ok": "task events already enabled"}
    assert call("disable_events") == {"ok": "task events disabled"}


def test_events_toggles_with_task_events_flag(fleet, app):
    fleet.astroworker("-E", name="aw")
    me = node("aw")
    calls = [app.control.broadcast(c, reply=True, destination=[me], timeout=3)[0][me]
             for c in ("disable_events", "enable_events")]
    assert calls == [{"ok": "task events already disabled"}, {"ok": "task events already enabled"}]


def finish_times(app, results):
    """When each task finished (`date_done` of its result), earliest first."""
    from datetime import datetime
    for r in results:
        r.get(timeout=30)
    return sorted(datetime.fromisoformat(app.backend.get_task_meta(r.id)["date_done"])
                  for r in results)


def test_rate_limit_flag_and_control_rate_limit(fleet, app, redis_server):
    w = fleet.astroworker("-c", "4", "--task-rate-limit", f"{ECHO}=5/s", name="aw")
    me = node("aw")
    assert f"{ECHO} [rate_limit=5/s]" in inspect(app, "aw").registered("rate_limit")[me]
    # Five at once on four slots, limited to 5/s: the finishes are spread over >= 4 × 0.2 s.
    done = finish_times(app, [app.send_task(ECHO, args=[i]) for i in range(5)])
    assert (done[-1] - done[0]).total_seconds() >= 0.75
    unlimited = finish_times(app, [app.send_task(SLEEP, args=[0]) for i in range(5)])
    assert (unlimited[-1] - unlimited[0]).total_seconds() < 0.75

    out = celery_cli(redis_server, "control", "rate_limit", ECHO, "2/s", "-d", me)
    assert out.returncode == 0, out.stderr
    assert "new rate limit set successfully" in out.stdout
    w.wait_log(f"New rate limit for tasks of type {ECHO}: 2/s")
    done = finish_times(app, [app.send_task(ECHO, args=[i]) for i in range(3)])
    assert (done[-1] - done[0]).total_seconds() >= 0.9

    def call(**kw):
        return app.control.broadcast("rate_limit", arguments=kw, reply=True, destination=[me],
                                     timeout=3)[0][me]

    assert call(task_name="no.such", rate_limit="1/s") == {"error": "unknown task"}
    assert call(task_name=ECHO, rate_limit="1/x")["error"].startswith("Invalid rate limit string")
    assert call(task_name=ECHO, rate_limit="0") == {"ok": "rate limit disabled successfully"}
    assert f"{ECHO} [rate_limit=" not in " ".join(inspect(app, "aw").registered("rate_limit")[me])


def test_pool_grow_and_shrink(fleet, app):
    fleet.astroworker("-c", "1", "--prefetch-multiplier", "1", name="aw")
    me = node("aw")
    i = inspect(app, "aw")
    assert app.control.pool_grow(2, reply=True, destination=[me], timeout=3) == [
        {me: {"ok": "pool will grow"}}]
    stats = i.stats()[me]
    assert stats["pool"]["max-concurrency"] == 3 and stats["prefetch_count"] == 3
    sleepers = [app.send_task(SLEEP, args=[1.5]) for _ in range(3)]
    wait_for(lambda: len(i.active()[me]) == 3, 10, "three tasks running at once")
    [r.get(timeout=10) for r in sleepers]

    assert app.control.pool_shrink(2, reply=True, destination=[me], timeout=3) == [
        {me: {"ok": "pool will shrink"}}]
    assert i.stats()[me]["pool"]["max-concurrency"] == 1
    sleepers = [app.send_task(SLEEP, args=[0.5]) for _ in range(2)]
    time.sleep(0.3)
    assert len(i.active()[me]) == 1
    [r.get(timeout=10) for r in sleepers]
    reply = app.control.pool_shrink(1, reply=True, destination=[me], timeout=3)
    assert reply == [{me: {"error": "ValueError(\"Can't shrink pool. All processes busy!\")"}}]


def test_shutdown_by_celery_control(fleet, app, redis_server):
    w = fleet.astroworker(name="aw")
    me = node("aw")
    members = redis_server.client().smembers("_kombu.binding.celery.pidbox")
    assert f"\x06\x16\x06\x16{me}.celery.pidbox".encode() in members
    out = celery_cli(redis_server, "control", "shutdown", "-d", me)
    # A Celery worker stops before replying, so Celery's CLI reports no reply (exit 69) for
    # Python workers too; astroworker does the same.
    assert "No nodes replied" in out.stderr
    assert w.proc.wait(20) == 0
    assert "Got shutdown from remote" in w.log()
    assert redis_server.client().smembers("_kombu.binding.celery.pidbox") == set()


def test_mixed_fleet_ping(fleet, app):
    fleet.python_worker("-c", "1", name="py")
    fleet.astroworker(name="aw")
    replies = app.control.inspect(timeout=2).ping()
    assert replies == {node("py"): {"ok": "pong"}, node("aw"): {"ok": "pong"}}
    # Destinations select: only the Python worker answers.
    assert inspect(app, "py").ping() == {node("py"): {"ok": "pong"}}


def test_astroworker_inspect_and_control_cli(fleet, app, redis_server):
    fleet.python_worker("-c", "1", name="py")
    w = fleet.astroworker("-Q", "awq", name="aw")
    out = astroworker_cli(redis_server, "inspect", "ping", "-d", node("aw"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {node("aw"): {"ok": "pong"}}
    # It speaks to Python workers too.
    out = astroworker_cli(redis_server, "inspect", "ping", "-d", node("py"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {node("py"): {"ok": "pong"}}
    out = astroworker_cli(redis_server, "inspect", "ping")
    assert set(json.loads(out.stdout)) == {node("aw"), node("py")}
    # A destination that does not answer fails the health check.
    out = astroworker_cli(redis_server, "inspect", "ping", "-d", "nobody@nowhere", "-t", "0.5")
    assert out.returncode == 1
    assert json.loads(out.stdout) == {}
    assert "no reply from nobody@nowhere" in out.stderr
    out = astroworker_cli(redis_server, "inspect", "stats", "-d", node("aw"))
    assert out.returncode == 0 and json.loads(out.stdout)[node("aw")]["pid"] == w.proc.pid
    out = astroworker_cli(redis_server, "inspect", "registered", "-d", node("aw"))
    assert SLEEP in json.loads(out.stdout)[node("aw")]

    r = app.send_task(ECHO, args=["x"], countdown=60, queue="awq")
    w.wait_log(rf"\[{r.id}\] received")
    out = astroworker_cli(redis_server, "control", "revoke", r.id, "-d", node("aw"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {node("aw"): {"ok": f"tasks {{'{r.id}'}} flagged as revoked"}}
    out = astroworker_cli(redis_server, "control", "shutdown", "-d", node("aw"))
    assert out.returncode == 0, out.stderr
    assert w.proc.wait(20) == 0
    assert r.state == "REVOKED"


def test_inspect_cli_fails_without_workers(redis_server):
    out = astroworker_cli(redis_server, "inspect", "ping", "-t", "0.5")
    assert out.returncode == 1
    assert "No nodes replied" in out.stderr
    out = astroworker_cli(redis_server, "control", "shutdown")
    assert out.returncode == 1
