#!/usr/bin/env bash
# Installs what building and testing astroworker needs, when it is missing:
#   Debian packages (redis-server, siril, libcfitsio-dev, pkg-config, python3-venv),
#   a Rust toolchain (rustup) if cargo is absent,
#   Python virtualenvs: .venv (test tools, Celery 5.5), .venv-celery53, .venv-celery57.
# Safe to run repeatedly; each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
# Siril is the reference for the debayer test on real Seestar subs and the stacking bench.
command -v siril-cli >/dev/null 2>&1 || need_pkgs+=(siril)
pkg-config --exists cfitsio 2>/dev/null || need_pkgs+=(libcfitsio-dev)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl ca-certificates)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}" \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"; }
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "bootstrap: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# venv DIR REQUIREMENT...: (re)creates DIR when the requirement list (or the contents of a
# requirements file it names) changed.
venv() {
  local dir=$1; shift
  local want="$*"
  if [ "$1" = "-r" ]; then want="$want $(sha256sum "$2" | cut -c1-16)"; fi
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.requirements" 2>/dev/null)" = "$want" ]; then
    return
  fi
  echo "bootstrap: creating $dir ($want)"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  echo "$want" > "$dir/.requirements"
}

venv .venv -r tests/requirements.txt
# Producer compatibility matrix: Celery 5.3.4 as pinned by our first user (kombu 5.3 with
# redis-py 5.0.1, as that app pins it) and the newest 5.x.
venv .venv-celery53 "celery==5.3.4" "kombu>=5.3.4,<5.4" "redis==5.0.1"
venv .venv-celery57 "celery[redis]==5.7.0"
