"""Structural checks of the compose files (no Docker engine here to run `docker compose config`):
each parses as YAML, every service has an image or build, a health check that pings the worker,
and the astroworker service reserves a GPU, mounts /fits and the MPS directories."""

import sys

import yaml


def check(path):
    doc = yaml.safe_load(open(path))
    services = doc["services"]
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{path}: {name} has no image or build"
    aw = services["astroworker"]
    assert "astroworker inspect ping" in " ".join(aw["healthcheck"]["test"]), path
    gpu = aw.get("gpus") == "all" or any(
        d.get("driver") == "nvidia"
        for d in aw["deploy"]["resources"]["reservations"]["devices"])
    assert gpu, f"{path}: no GPU reservation"
    mounts = " ".join(aw["volumes"])
    for target in (":/fits", ":/tmp/nvidia-mps", ":/tmp/nvidia-log"):
        assert target in mounts, f"{path}: {target} not mounted"
    env = aw["environment"]
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/nvidia-mps", path
    print(f"{path}: ok ({', '.join(services)})")


for p in sys.argv[1:]:
    check(p)
