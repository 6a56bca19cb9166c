"""Runs under a given Celery version (its own venv) against a running astroworker and prints
what it saw as JSON. Used by test_producer_versions.py to cover Celery 5.3 … 5.7 producers."""

import json
import sys
import time

import celery
from celery import Celery

url = sys.argv[1]
app = Celery("check", broker=url, backend=url)
out = {"celery": celery.__version__}

out["echo"] = app.send_task("astroworker.diag.echo", args=[{"ü": [1, None, 2.5]}]).get(timeout=10)
out["kwargs"] = app.send_task("astroworker.diag.echo", kwargs={"value": "kw"}).get(timeout=10)
try:
    app.send_task("astroworker.diag.fail", args=["bad sky"]).get(timeout=10)
except Exception as e:  # noqa: BLE001 - the point is the rebuilt type
    out["failure"] = [type(e).__name__, str(e)]
t0 = time.time()
out["countdown"] = app.send_task("astroworker.diag.echo", args=["later"], countdown=1).get(timeout=10)
out["waited"] = time.time() - t0
out["priority"] = app.send_task("astroworker.diag.echo", args=[9], priority=9).get(timeout=10)
r = app.send_task("astroworker.diag.progress", args=[3, 0.3])
states = set()
while not r.ready():
    states.add(r.state)
    time.sleep(0.05)
out["progress"] = [r.get(timeout=10), sorted(states)]
print(json.dumps(out))
