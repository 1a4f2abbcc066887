#!/bin/sh
# Upstream tunes worker_processes to the cgroup CPU limit only when
# NGINX_ENTRYPOINT_WORKER_PROCESSES_AUTOTUNE is set. This stand-in keeps
# "worker_processes auto;" and just says so.
set -e

ME=$(basename "$0")
if [ -n "${NGINX_ENTRYPOINT_WORKER_PROCESSES_AUTOTUNE:-}" ] && [ -z "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ]; then
    echo "$ME: info: autotune is not implemented by this stand-in image; keeping worker_processes auto"
fi
exit 0
