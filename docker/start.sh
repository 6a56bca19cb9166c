#!/bin/sh
# Starts the CUDA MPS control daemon (when this container is allowed to and none runs yet), then
# execs astroworker with the given arguments, so that tini forwards signals to the worker
# (SIGTERM = warm shutdown).
#
# MPS lets several worker processes (or `-c 4` tasks) share one GPU. In Astronomus's set-up the
# daemon runs on the host and /tmp/nvidia-mps is bind-mounted; set START_MPS=1 to run it here.
set -eu

pipe_dir="${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}"
log_dir="${CUDA_MPS_LOG_DIRECTORY:-/tmp/nvidia-log}"
export CUDA_MPS_PIPE_DIRECTORY="$pipe_dir" CUDA_MPS_LOG_DIRECTORY="$log_dir"

if [ "${START_MPS:-0}" = "1" ]; then
    mkdir -p "$pipe_dir" "$log_dir"
    if [ -S "$pipe_dir/control" ]; then
        echo "start.sh: an MPS control daemon already listens in $pipe_dir"
    elif command -v nvidia-cuda-mps-control > /dev/null 2>&1; then
        nvidia-cuda-mps-control -d
        echo "start.sh: started the MPS control daemon ($pipe_dir)"
    else
        echo "start.sh: nvidia-cuda-mps-control not found; GPU tasks run without MPS" >&2
    fi
fi

# Astronomus passes one URL in REDIS_URL; Celery's variables win when set.
: "${CELERY_BROKER_URL:=${REDIS_URL:-redis://localhost:6379/1}}"
: "${CELERY_RESULT_BACKEND:=$CELERY_BROKER_URL}"
export CELERY_BROKER_URL CELERY_RESULT_BACKEND

exec astroworker "$@"
