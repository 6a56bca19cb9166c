"""Astronomus's FITS tasks through real Python Celery, with job progress in real PostgreSQL.

Plays the app's side: the exact `.delay()` calls of astronomus-compat.md §2 on a folder of
frames named like a Seestar session ("M 94_sub"), then checks results, output files (astropy,
Pillow), the auto-stretch of §3.5 recomputed with numpy, and the `processing_jobs` rows. The
tables live in a schema created (and dropped) by the test in the local database `test`; the
tests skip when no PostgreSQL answers on 127.0.0.1:5432. Also: `/health` and `/metrics`.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits as afits
from PIL import Image

from conftest import BIN, RedisServer, free_port, make_app, wait_for

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.timeout(300)

PG = "postgresql://root@127.0.0.1:5432/test"
SCHEMA_SQL = """
CREATE TABLE processing_files (id serial PRIMARY KEY, filename varchar(255) NOT NULL,
  file_type varchar(20) NOT NULL, file_path varchar(500) NOT NULL, file_size_bytes bigint NOT NULL,
  exposure_seconds float, filter_name varchar(10), temperature_celsius float, quality_score float,
  file_metadata json, uploaded_at timestamp);
CREATE TABLE processing_pipelines (id serial PRIMARY KEY, user_id int, name varchar(100) NOT NULL,
  description text, pipeline_steps json NOT NULL, is_preset bool, created_at timestamp,
  updated_at timestamp);
CREATE TABLE processing_jobs (id serial PRIMARY KEY,
  file_id integer REFERENCES processing_files(id), pipeline_id integer REFERENCES processing_pipelines(id),
  container_id varchar(64), status varchar(20), progress_percent float, current_step varchar(50),
  started_at timestamp, completed_at timestamp, output_files json, error_message text,
  processing_log text, gpu_used boolean, created_at timestamp);
"""


@pytest.fixture(scope="module")
def schema():
    try:
        conn = psycopg.connect(PG, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {e}")
    name = f"aw_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE SCHEMA {name}")
    conn.execute(f"SET search_path TO {name}")
    conn.execute(SCHEMA_SQL)
    yield conn, name
    conn.execute(f"DROP SCHEMA {name} CASCADE")
    conn.close()


def new_job(schema):
    """A row as the API inserts it (file_id/pipeline_id NULL, Astronomus bug 9)."""
    conn, _ = schema
    return conn.execute("INSERT INTO processing_jobs (status, progress_percent, gpu_used, created_at) "
                        "VALUES ('queued', 0, false, now()) RETURNING id").fetchone()[0]


def job_row(schema, job_id):
    conn, _ = schema
    cur = conn.execute("SELECT status, progress_percent, current_step, started_at, completed_at, "
                       "output_files, error_message, processing_log FROM processing_jobs WHERE id = %s",
                       (job_id,))
    cols = [d.name for d in cur.description]
    return dict(zip(cols, cur.fetchone()))


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("astronomus")
    subprocess.run([str(BIN), "fixtures", str(root / "gen"), "--width", "270", "--height", "480",
                    "--lights", "8", "--biases", "1", "--darks", "1", "--flats", "1"],
                   check=True, capture_output=True)
    session = root / "fits" / "M 94_sub"
    session.mkdir(parents=True)
    for i, f in enumerate(sorted((root / "gen").glob("light_*.fit")), start=1):
        shutil.copy(f, session / f"Light_M 94_{i:03d}.fit")
    (session / "Light_broken_999.fit").write_bytes(b"SIMPLE  = not a FITS file")
    return root


@pytest.fixture
def astro_worker(fleet, frames, schema, tmp_path):
    _, name = schema
    env = dict(os.environ,
               DATABASE_URL=f"{PG}?options=-csearch_path%3D{name}",
               PROCESSING_DIR=str(tmp_path / "processing"))
    w = fleet.astroworker("-c", "2", "--astronomus", "--data-root", str(frames / "fits"),
                          "--data-root", str(tmp_path), env=env, diag=False)
    w.wait_log(r" ready\.")
    return w


def expected_stretch(hwc):
    """astronomus-compat.md §3.5 in numpy: the params and the 8-bit preview."""
    bp = np.percentile(hwc, 0.5)
    wp = np.percentile(hwc, 99.95)
    n = np.clip((hwc - bp) / (wp - bp + 1e-10), 0, 1)
    cv = n.std() / (n.mean() + 1e-10)
    a = 20 if cv > 0.5 else 10 if cv > 0.3 else 5
    y = np.arcsinh(a * n) / np.arcsinh(a)
    return {"stretch_factor": a, "black_point": bp, "white_point": wp}, np.floor(255 * y)


def test_stack_and_stretch(astro_worker, app, frames, schema):
    job = new_job(schema)
    folder = frames / "fits" / "M 94_sub"
    r = app.send_task("stack_and_stretch",
                      args=[str(folder), "Light_*.fit", 2.5, ["jpg", "png", "tiff"], job])
    result = r.get(timeout=120)
    out_dir = frames / "fits" / "M 94"
    stacked = out_dir / "Stacked_8_M 94.fit"
    previews = [str(out_dir / f"Stacked_8_M 94_astroplanner.{f}") for f in ("jpg", "png", "tiff")]
    assert result["status"] == "complete" and result["num_frames"] == 8
    assert result["stacked_file"] == str(stacked)
    assert result["output_files"] == previews

    with afits.open(stacked) as hdul:
        hdu = hdul[0]
        assert hdu.header["BITPIX"] == 16 and hdu.header["BZERO"] == 32768
        assert hdu.header["STACKED"] == 8 and "BAYERPAT" not in hdu.header
        assert "Stacked from 8 sub-frames" in str(hdu.header["COMMENT"])
        data = hdu.data.astype(np.float64)
    assert data.shape == (3, 480, 270)
    # The stack of the noisy subs is close to the noiseless truth (debayered, GRBG honoured).
    params, png = expected_stretch(np.moveaxis(data, 0, -1))
    assert result["params"]["stretch_factor"] == params["stretch_factor"]
    assert result["params"]["black_point"] == pytest.approx(params["black_point"], rel=1e-12)
    assert result["params"]["white_point"] == pytest.approx(params["white_point"], rel=1e-12)
    np.testing.assert_array_equal(np.asarray(Image.open(previews[1])), png.astype(np.uint8))
    jpg = Image.open(previews[0])
    assert jpg.mode == "RGB" and jpg.size == (270, 480)
    tiff = Image.open(previews[2])
    assert tiff.size == (270, 480)

    row = job_row(schema, job)
    assert row["status"] == "complete" and row["progress_percent"] == 100.0
    assert row["current_step"] == "Complete" and row["output_files"] == previews
    assert row["started_at"] <= row["completed_at"] and row["error_message"] is None
    assert "Stacked 8 frames from M 94_sub" in row["processing_log"]


def test_auto_process_debayers_a_raw_sub(astro_worker, app, frames, schema):
    job = new_job(schema)
    sub = frames / "fits" / "M 94_sub" / "Light_M 94_001.fit"
    result = app.send_task("auto_process", args=[str(sub), ["png", "bmp"], job]).get(timeout=60)
    out = str(sub.with_name("Light_M 94_001_astroplanner.png"))
    assert result["status"] == "complete" and result["output_files"] == [out]
    assert result["params"]["stretch_factor"] in (5, 10, 20)
    img = np.asarray(Image.open(out))
    assert img.shape == (480, 270, 3)
    # Debayered, not the mosaic copied into grey: the channels differ.
    assert not np.array_equal(img[..., 0], img[..., 1])
    row = job_row(schema, job)
    assert row["status"] == "complete" and row["output_files"] == [out]
    log = row["processing_log"].splitlines()
    assert log[0] == "Processed Light_M 94_001.fit" and log[1] == "Input shape: (480, 270, 3)"
    assert len(log) == 6 and log[-1] == "Output files: 1"


def test_failures_mark_the_row_failed(astro_worker, app, frames, schema):
    job = new_job(schema)
    missing = frames / "fits" / "nope.fit"
    r = app.send_task("auto_process", args=[str(missing), ["jpg"], job])
    with pytest.raises(Exception) as info:
        r.get(timeout=30)
    assert type(info.value).__name__ == "FileNotFoundError"
    row = job_row(schema, job)
    assert row["status"] == "failed" and "no such file" in row["error_message"]
    assert row["completed_at"] is not None

    r = app.send_task("auto_process", args=[str(missing), ["jpg"], 987654])
    with pytest.raises(ValueError, match="Job 987654 not found"):
        r.get(timeout=30)

    job = new_job(schema)
    with pytest.raises(Exception) as info:
        app.send_task("stack_and_stretch", args=["/etc", "*.conf", 2.5, ["jpg"], job]).get(timeout=30)
    assert type(info.value).__name__ == "PermissionError"
    assert job_row(schema, job)["status"] == "failed"


def test_cancel_job_and_cleanup(astro_worker, app, schema, tmp_path):
    job = new_job(schema)
    assert app.send_task("cancel_job", args=[job]).get(timeout=10) is True
    row = job_row(schema, job)
    assert row["status"] == "cancelled" and row["completed_at"] is not None
    assert app.send_task("cancel_job", args=[999999]).get(timeout=10) is False

    processing = tmp_path / "processing"
    old, new, other = processing / "job_1", processing / "job_2", processing / "keep"
    for d in (old, new, other):
        d.mkdir(parents=True)
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    os.utime(other, (ten_days_ago, ten_days_ago))
    assert app.send_task("cleanup_old_jobs").get(timeout=10) == {"success": True, "days": 7}
    assert not old.exists() and new.exists() and other.exists()


def test_process_file_presets(astro_worker, app, frames, schema, tmp_path):
    conn, _ = schema
    sub = frames / "fits" / "M 94_sub" / "Light_M 94_002.fit"
    file_id = conn.execute(
        "INSERT INTO processing_files (filename, file_type, file_path, file_size_bytes) "
        "VALUES (%s, 'stacked', %s, %s) RETURNING id", (sub.name, str(sub), sub.stat().st_size)
    ).fetchone()[0]
    presets = {
        "quick_dso": [{"step": "histogram_stretch", "params": {"algorithm": "auto", "midtones": 0.25}},
                      {"step": "export", "params": {"format": "jpeg", "quality": 95, "bit_depth": 8}}],
        "export pixinsight": [{"step": "export", "params": {"format": "tiff", "bit_depth": 16,
                                                            "compression": "none"}}],
    }
    for name, steps in presets.items():
        pipeline_id = conn.execute(
            "INSERT INTO processing_pipelines (name, pipeline_steps, is_preset) VALUES (%s, %s, true) "
            "RETURNING id", (name, json.dumps(steps))).fetchone()[0]
        job = new_job(schema)
        result = app.send_task("process_file", args=[file_id, pipeline_id, job]).get(timeout=60)
        ext = "jpg" if name == "quick_dso" else "tif"
        (out,) = result["output_files"]
        assert out.startswith(str(tmp_path / "processing" / f"M 94_sub_{name.replace(' ', '_')}_"))
        assert out.endswith(f".{ext}") and os.path.exists(out)
        assert (tmp_path / "processing" / f"job_{job}" / "outputs" / f"Light_M 94_002.{ext}").exists()
        assert result["gpu_used"] is False and result["status"] == "complete"
        assert Image.open(out).size == (270, 480)
        row = job_row(schema, job)
        assert row["status"] == "complete" and row["output_files"] == [out]


def test_database_down_does_not_fail_the_task(fleet, frames, app, tmp_path):
    env = dict(os.environ, DATABASE_URL=f"postgresql://root@127.0.0.1:{free_port()}/none")
    w = fleet.astroworker("-c", "1", "--astronomus", env=env, diag=False, name="nodb")
    w.wait_log(r" ready\.")
    sub = frames / "fits" / "M 94_sub" / "Light_M 94_003.fit"
    result = app.send_task("auto_process", args=[str(sub), ["jpg"], 5]).get(timeout=60)
    assert result["status"] == "complete"
    w.wait_log("job progress not recorded")


def http(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_and_metrics(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    server = RedisServer(tmp_path / "redis")
    port = free_port()
    app = make_app(server.url())
    from conftest import Fleet
    fleet = Fleet(server, tmp_path)
    try:
        fleet.astroworker("-c", "1", "--http", f"127.0.0.1:{port}", "--heartbeat-interval", "1",
                          "-Q", "celery,fits")
        base = f"http://127.0.0.1:{port}"
        code, body = wait_for(lambda: http(f"{base}/health") if _up(base) else None, 10, "/health")
        health = json.loads(body)
        assert code == 200 and health["status"] == "ok" and health["broker"] == "connected"
        assert health["last_heartbeat_s"] < 3 and health["devices"][0].startswith("cpu")
        # NVML's GPUs: a list where a driver answers, null without one; /metrics then carries
        # per-GPU gauges exactly when there are GPUs.
        gpus = health["gpus"]
        assert gpus is None or all({"index", "name", "memory_total_bytes"} <= g.keys() for g in gpus)

        def samples():
            _, text = http(f"{base}/metrics")
            out = {}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
            return out

        before = samples()
        assert app.send_task("astroworker.diag.echo", args=[1]).get(timeout=10) == 1
        with pytest.raises(Exception):
            app.send_task("astroworker.diag.fail", args=["x"]).get(timeout=10)
        after = samples()
        echo = (("task", "astroworker.diag.echo"),)
        assert after[("astroworker_tasks_received_total", echo)] == \
            before.get(("astroworker_tasks_received_total", echo), 0) + 1
        assert after[("astroworker_tasks_total", (("outcome", "succeeded"),) + echo)] == 1
        assert after[("astroworker_tasks_total", (("outcome", "failed"), ("task", "astroworker.diag.fail")))] == 1
        assert after[("astroworker_task_runtime_seconds_count", echo)] == 1
        assert after[("astroworker_queue_depth", (("queue", "celery"),))] == 0
        assert ("astroworker_queue_depth", (("queue", "fits"),)) in after
        gpu_series = {name for name, _ in after if name.startswith("astroworker_gpu_")}
        assert bool(gpu_series) == bool(gpus), (gpu_series, gpus)

        server.stop()
        code, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(http(f"{base}/health")),
                              15, "/health to report the broker down")
        assert json.loads(body)["status"] == "unhealthy"
    finally:
        fleet.stop_all()
        server.stop()


def _up(base):
    try:
        http(f"{base}/health")
        return True
    except OSError:
        return False


SEESTAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "seestar" / "M94"


@pytest.mark.skipif(not SEESTAR.is_dir(), reason="../shared/data/seestar is not here")
def test_stack_and_stretch_on_real_seestar_subs(astro_worker, app, schema, tmp_path):
    session = tmp_path / "seestar" / "M 94_sub"
    shutil.copytree(SEESTAR, session)
    job = new_job(schema)
    result = app.send_task("stack_and_stretch",
                           args=[str(session), "Light_*.fit", 2.5, ["jpg"], job]).get(timeout=180)
    stacked = tmp_path / "seestar" / "M 94" / "Stacked_6_M 94.fit"
    assert result["stacked_file"] == str(stacked) and result["num_frames"] == 6
    data = afits.getdata(stacked).astype(np.float64)
    assert data.shape == (3, 1920, 1080)
    r, g, b = (np.median(c) for c in data)
    # GRBG honoured: green sky above red above blue, as in the raw cells (G 700, R 628, B 609);
    # Astronomus's RGGB assumption gave R ≈ B ≈ 700 (a magenta cast).
    assert g > r + 30 and r > b
    assert Image.open(result["output_files"][0]).size == (1080, 1920)
    assert job_row(schema, job)["status"] == "complete"
