#!/usr/bin/env bash
# Start, stop or restart Switchboard's services where systemd does not run them
# (deploy/supervisor.py runs the units in @UNIT_DIR@).
# Written by deploy.sh from deploy/switchboard-supervisor.sh.
set -euo pipefail

supervisor=("@VENV@/bin/python" "@APP_DIR@/deploy/supervisor.py")
start=(start --units "@UNIT_DIR@" --run-dir "@RUN_DIR@" --log-dir "@LOG_DIR@")
case "${1:-}" in
    start) exec "${supervisor[@]}" "${start[@]}" ;;
    stop | status) exec "${supervisor[@]}" "$1" --run-dir "@RUN_DIR@" ;;
    restart)
        "${supervisor[@]}" stop --run-dir "@RUN_DIR@"
        exec "${supervisor[@]}" "${start[@]}"
        ;;
    *)
        printf 'Usage: %s start|stop|restart|status\n' "$0" >&2
        exit 2
        ;;
esac
