"""Canvas (chain, group, chord, link_error) on astroworker, compared with a pure Python fleet.

Every workflow runs twice on one Redis: once with all steps routed to astroworker (queue
`celery`), once routed to a Python `celery worker` (queue `py`), and the results must agree.
"""

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError

pytestmark = pytest.mark.timeout(180)

ADD = "astroworker.diag.add"
TSUM = "astroworker.diag.tsum"
FAIL = "astroworker.diag.fail"
ECHO = "astroworker.diag.echo"
AW, PY = "celery", "py"


@pytest.fixture
def workers(fleet):
    aw = fleet.astroworker("-c", "4")
    py = fleet.python_worker("-Q", PY, "-c", "4", "-P", "threads")
    aw.wait_log(r" ready\.")
    py.wait_log(r"ready\.")
    return aw, py


def sig(app, name, *args, queue, immutable=False):
    s = app.signature(name, args=args, immutable=immutable)
    return s.set(queue=queue)


def both(build):
    """The result of the workflow built for astroworker and for the Python worker."""
    return build(AW), build(PY)


def chain_results(result):
    """Every step's value, first step first (walking `parent` from the last step)."""
    values = []
    while result is not None:
        values.append(result.get(timeout=60))
        result = result.parent
    return values[::-1]


def test_chain_of_ten_steps(app, workers):
    def run(q):
        steps = [sig(app, ADD, 0, 1, queue=q)] + [sig(app, ADD, i, queue=q) for i in range(2, 11)]
        return chain(*steps).apply_async()

    aw, py = both(run)
    assert chain_results(aw) == chain_results(py) == [sum(range(i + 1)) for i in range(1, 11)]
    # The first step's stored result names the second step as its child, as Celery stores it.
    first = aw
    while first.parent is not None:
        first = first.parent
    meta = app.backend.get_task_meta(first.id)
    assert meta["children"] and meta["children"][0][0][0] == first.children[0].id


def test_group_of_one_hundred(app, workers):
    aw, py = both(lambda q: group(sig(app, ADD, i, i, queue=q) for i in range(100)).apply_async())
    assert aw.get(timeout=90) == py.get(timeout=90) == [2 * i for i in range(100)]
    meta = app.backend.get_task_meta(aw.results[7].id)
    assert meta["group_id"] == aw.id


def test_chord_of_one_hundred(app, workers, redis_server):
    aw, py = both(lambda q: chord(
        (sig(app, ADD, i, i, queue=q) for i in range(100)), sig(app, TSUM, queue=q)
    ).apply_async())
    assert aw.get(timeout=90) == py.get(timeout=90) == 9900
    # The completing worker cleaned up the join keys and left Celery 5.7's "done" marker.
    gid = aw.parent.id
    r = redis_server.client()
    assert not r.exists(f"celery-taskset-meta-{gid}.j", f"celery-taskset-meta-{gid}.s")
    assert r.get(f"celery-taskset-meta-{gid}.c") == b"done"


def test_chord_with_a_failing_member(app, workers):
    def run(q):
        header = [sig(app, ADD, i, i, queue=q) for i in range(5)]
        header.insert(3, sig(app, FAIL, "bad frame", queue=q))
        return chord(header, sig(app, TSUM, queue=q)).apply_async()

    aw, py = both(run)
    errors = []
    for r in (aw, py):
        # (`get()` would re-raise the failed header task's own error first, on the client.)
        exc = r.get(timeout=60, propagate=False)
        assert isinstance(exc, ChordError) and r.state == "FAILURE"
        failed = r.parent.results[3].id
        errors.append(str(exc).replace(failed, "<id>"))
    assert errors[0] == errors[1] == "Dependency <id> raised DiagnosticError('bad frame')"


def test_chain_mixing_python_and_astroworker_steps(app, workers):
    queues = [PY, AW, PY, AW, AW, PY]
    steps = [sig(app, ADD, 1, 1, queue=queues[0])] + [
        sig(app, ADD, i, queue=q) for i, q in enumerate(queues[1:], start=2)
    ]
    result = chain(*steps).apply_async()
    assert chain_results(result) == [2, 4, 7, 11, 16, 22]
    aw_log, py_log = workers[0].log(), workers[1].log()
    step = result
    for q in reversed(queues):
        ran_here = f"{ADD}[{step.id}] succeeded"
        assert ran_here in (aw_log if q == AW else py_log), (q, step.id)
        step = step.parent


def test_failure_fails_the_rest_of_the_chain(app, workers):
    def run(q):
        return chain(sig(app, ADD, 1, 1, queue=q), sig(app, FAIL, "broken", queue=q, immutable=True),
                     sig(app, ADD, 1, queue=q), sig(app, ADD, 2, queue=q)).apply_async()

    for r in both(run):
        with pytest.raises(Exception) as info:
            r.get(timeout=60)
        assert type(info.value).__name__ == "DiagnosticError"
        assert r.state == r.parent.state == "FAILURE"
        assert r.parent.parent.state == "FAILURE"
        assert r.parent.parent.parent.get(timeout=5) == 2


def test_link_error_gets_the_failed_task_id(app, workers):
    for q in (AW, PY):
        errback = sig(app, ECHO, queue=q)
        called = errback.freeze()
        failing = sig(app, FAIL, "no stars", queue=q).apply_async(link_error=errback)
        assert called.get(timeout=60) == failing.id
        assert failing.state == "FAILURE"


def test_link_callback_gets_the_result(app, workers):
    for q in (AW, PY):
        callback = sig(app, ADD, 10, queue=q)
        called = callback.freeze()
        first = sig(app, ADD, 2, 3, queue=q).apply_async(link=callback)
        assert first.get(timeout=30) == 5
        assert called.get(timeout=30) == 15


def test_chain_with_a_group_inside(app, workers):
    aw, py = both(lambda q: (
        sig(app, ADD, 1, 1, queue=q)
        | group(sig(app, ADD, 1, queue=q), sig(app, ADD, 2, queue=q))
        | sig(app, TSUM, queue=q)
    ).apply_async())
    assert aw.get(timeout=60) == py.get(timeout=60) == 7
