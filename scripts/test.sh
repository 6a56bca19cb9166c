#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests, and the interop
# tests that drive astroworker from real Python Celery against redis-servers they start.
# Installs what it needs first (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --check
step "cargo clippy"
cargo clippy --release --all-targets -- -D warnings
step "cargo build --release"
cargo build --release
step "cargo test --release"
cargo test --release
step "docker/ lint (hadolint, shellcheck, compose files parse)"
.venv/bin/hadolint --config docker/.hadolint.yaml docker/Dockerfile
.venv/bin/shellcheck docker/start.sh scripts/*.sh
.venv/bin/python tests/reference/check_compose.py docker/compose.yml docker/compose.redis.yml
step "interop tests (Python Celery)"
.venv/bin/python -m pytest tests/interop -q "$@"
