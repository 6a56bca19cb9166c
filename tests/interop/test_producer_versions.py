"""Producers from Celery 5.3 (our first user pins 5.3.4) to 5.7 all work with astroworker.

Each version lives in its own virtualenv (scripts/test.sh creates .venv-celery53 and
.venv-celery57); the check script runs there and reports what it saw.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENVS = {
    "5.3": ROOT / ".venv-celery53",
    "5.7": ROOT / ".venv-celery57",
}


@pytest.mark.parametrize("version", sorted(VENVS))
def test_producer_version(fleet, redis_server, version):
    python = VENVS[version] / "bin" / "python"
    if not python.exists():
        if os.environ.get("AW_ALLOW_MISSING_VENVS") == "1":
            pytest.skip(f"{python} missing (AW_ALLOW_MISSING_VENVS=1)")
        pytest.fail(f"{python} is missing: run scripts/test.sh, which creates it")
    fleet.astroworker("-c", "2")
    done = subprocess.run([str(python), str(HERE / "producer_check.py"), redis_server.url()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["celery"].startswith(version)
    assert seen["echo"] == {"ü": [1, None, 2.5]}
    assert seen["kwargs"] == "kw"
    assert seen["failure"] == ["DiagnosticError", "bad sky"]
    assert seen["countdown"] == "later" and seen["waited"] >= 0.9
    assert seen["priority"] == 9
    assert seen["progress"][0] == 3 and "PROGRESS" in seen["progress"][1]
