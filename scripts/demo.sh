#!/usr/bin/env bash
# The main job on sample data, with nothing but this checkout: generates a synthetic
# Seestar-like night (bias, dark, flat and 12 light frames, GRBG 1080×1920, with known truth),
# starts a private redis-server and an astroworker, and has a real Python Celery producer
# build the masters, then calibrate + stack (sigma clipping) + debayer the lights with a
# preview — the `fits.*` tasks, called with .delay() exactly as a telescope app calls them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet

work=$(mktemp -d)
data="$work/night"
./target/release/astroworker fixtures "$data/raw" --lights 12 --biases 8 --darks 8 --flats 8 -l warning >/dev/null
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes \
  --logfile "$work/redis.log" --pidfile "$work/redis.pid"
url="redis://127.0.0.1:$port/0"
./target/release/astroworker worker -b "$url" -c 2 --data-root "$data" >"$work/worker.log" 2>&1 &
worker=$!
cleanup() { kill -TERM "$worker" 2>/dev/null; wait "$worker" 2>/dev/null; kill "$(cat "$work/redis.pid")"; }
trap cleanup EXIT
until grep -q "ready\." "$work/worker.log"; do sleep 0.1; done

.venv/bin/python - "$url" "$data" <<'PY'
import json, sys
from celery import Celery
url, data = sys.argv[1], sys.argv[2]
app = Celery("demo", broker=url, backend=url)
call = lambda name, *args, **kwargs: app.send_task(name, args=args, kwargs=kwargs).get(timeout=300)
out = f"{data}/out"
for kind in ("bias", "dark", "flat"):
    extra = {"bias": f"{out}/bias.fits"} if kind == "flat" else {}
    m = call("fits.master", kind, f"{data}/raw/{kind}_*.fit", f"{out}/{kind}.fits", **extra)
    print(f"fits.master({kind!r}) -> {m['frames']} frames, median {m['stats']['median']:.3f}")
r = call("fits.stack", f"{data}/raw/light_*.fit", f"{out}/stack.fits",
         bias=f"{out}/bias.fits", dark=f"{out}/dark.fits", flat=f"{out}/flat.fits",
         method="sigma_clip", normalize="additive_scale", preview=f"{out}/stack.jpg")
print("fits.stack ->", json.dumps(r, indent=2))
info = call("fits.info", r["output"])
print("fits.info(stack) -> shape", info["shape"], "EXPTIME", info["header"].get("EXPTIME"),
      "HISTORY lines", len(info["header"].get("HISTORY", [])))
PY
echo "outputs: $data/out (stack.fits, stack.jpg); worker log: $work/worker.log"
