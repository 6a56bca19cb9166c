"""A Python Celery app with the same task names as astroworker's diagnostic tasks.

Used to run a real Python `celery worker` beside astroworker (mixed fleets, redelivery of
messages an astroworker left unacked). Broker/backend come from CELERY_BROKER_URL /
CELERY_RESULT_BACKEND; the visibility timeout from AW_VISIBILITY_TIMEOUT.
"""

import os
import time

from celery import Celery

app = Celery("pyapp")
app.conf.broker_url = os.environ["CELERY_BROKER_URL"]
app.conf.result_backend = os.environ["CELERY_RESULT_BACKEND"]
app.conf.broker_transport_options = {
    "visibility_timeout": float(os.environ.get("AW_VISIBILITY_TIMEOUT", "3600"))
}
app.conf.accept_content = ["json"]
app.conf.worker_hijack_root_logger = False
app.conf.task_acks_late = os.environ.get("AW_ACKS_LATE") == "1"


@app.task(name="astroworker.diag.echo")
def echo(value):
    return value


@app.task(name="astroworker.diag.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


class DiagnosticError(Exception):
    """Named like the error astroworker's `astroworker.diag.fail` raises."""


@app.task(name="astroworker.diag.fail")
def fail(message):
    raise DiagnosticError(message)


@app.task(name="astroworker.diag.add")
def add(x, y):
    return x + y


@app.task(name="astroworker.diag.tsum")
def tsum(values):
    return sum(values)
