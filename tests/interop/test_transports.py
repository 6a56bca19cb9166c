"""Broker/backend URL forms: TLS (rediss://) and unix sockets, with real redis-servers."""

import gc
import shutil
import subprocess
import time

import pytest

from conftest import Fleet, make_app, wait_for

ECHO = "astroworker.diag.echo"

pytestmark = pytest.mark.timeout(120)


class CustomRedis:
    """A redis-server started with arbitrary listen options."""

    def __init__(self, args, workdir):
        self.proc = subprocess.Popen(["redis-server", "--save", "", "--appendonly", "no", "--dir", str(workdir),
                                      "--logfile", str(workdir / "redis.log"), *args])
        time.sleep(0.3)
        assert self.proc.poll() is None, (workdir / "redis.log").read_text()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def roundtrip(server, tmp_path, producer_url, worker_url):
    fleet = Fleet(server, tmp_path, url=worker_url)
    app = make_app(producer_url)
    try:
        fleet.astroworker()
        r = app.send_task(ECHO, args=["over the wire"])
        assert r.get(timeout=15) == "over the wire"
        del r
    finally:
        fleet.stop_all()
        gc.collect()  # a pending AsyncResult unsubscribes when collected: while Redis is up
        app.close()


def test_unix_socket(tmp_path):
    sock = tmp_path / "redis.sock"
    server = CustomRedis(["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"], tmp_path)
    try:
        wait_for(sock.exists, 5, "unix socket")
        # Celery's own spelling on the producer side, both spellings on the worker side.
        roundtrip(server, tmp_path, f"redis+socket://{sock}?virtual_host=3", f"unix://{sock}?db=3")
        roundtrip(server, tmp_path, f"redis+socket://{sock}?virtual_host=3",
                  worker_url=f"redis+socket://{sock}?virtual_host=3")
    finally:
        server.stop()


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl CLI not installed")
def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    from conftest import free_port

    port = free_port()
    server = CustomRedis(["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                          "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                          "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"], tmp_path)
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none"
    try:
        roundtrip(server, tmp_path, url, url)
    finally:
        server.stop()
