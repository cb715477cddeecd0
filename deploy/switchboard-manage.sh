#!/usr/bin/env bash
# manage.py of the Switchboard that deploy.sh installed, with its settings (@ENV_FILE@)
# and as its service user, e.g.: switchboard-manage doctor; switchboard-manage createsuperuser
# Written by deploy.sh from deploy/switchboard-manage.sh.
set -euo pipefail

# Only the settings file counts, as for the services: nothing leaks in from this shell.
settings=()
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in '' | '#'* | ';'*) continue ;; esac
    key="${line%%=*}" value="${line#*=}"
    case "$value" in \"*\" | \'*\') value="${value:1:${#value}-2}" ;; esac
    settings+=("$key=$value")
done <"@ENV_FILE@"
# What createsuperuser --noinput reads, and a terminal for its questions.
for name in DJANGO_SUPERUSER_USERNAME DJANGO_SUPERUSER_PASSWORD DJANGO_SUPERUSER_EMAIL TERM; do
    if [ -n "${!name:-}" ]; then settings+=("$name=${!name}"); fi
done

cd "@APP_DIR@"
command=(env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME="@HOME_DIR@" "${settings[@]}"
    "@VENV@/bin/python" manage.py "$@")
if [ "$(id -u)" -eq 0 ] && [ "@USER@" != root ]; then
    exec setpriv --reuid="@USER@" --regid="@GROUP@" --init-groups "${command[@]}"
fi
exec "${command[@]}"
