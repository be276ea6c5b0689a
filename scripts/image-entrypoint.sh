#!/bin/sh
# Container entrypoint (installed as /usr/local/bin/moltbot-entrypoint). Started as root, it hands the writable
# volume folders to the service user when they are not writable by it (an operator's `mkdir -p /data/moltbot/...`
# makes them root-owned), then replaces itself with tini running the command as that user: tini is PID 1 (it reaps
# orphans and passes `docker stop`'s SIGTERM on), the runtime its child. Started with `--user`, it changes nothing
# and just runs tini with the command.
set -eu
service_user=moltbot

if [ "$(id -u)" = 0 ]; then
  uid="$(id -u "$service_user")"
  gid="$(id -g "$service_user")"
  # The image sets both variables (Dockerfile, from deploy/contract.json).
  for dir in "${MOLTBOT_LOGS_DIR:-}" "${MOLTBOT_MODELS_DIR:-}"; do
    [ -n "$dir" ] && [ -d "$dir" ] || continue
    if ! setpriv --reuid="$uid" --regid="$gid" --clear-groups test -w "$dir"; then
      echo "moltbot-entrypoint: $dir is not writable by $service_user ($uid:$gid); changing its owner to $uid:$gid" >&2
      chown "$uid:$gid" "$dir" ||
        echo "moltbot-entrypoint: cannot change the owner of $dir (no CAP_CHOWN?); run with --user $uid or" \
             "chown $uid:$gid the host folder" >&2
    fi
  done
  exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs --inh-caps=-all -- /usr/bin/tini -- "$@"
fi
exec /usr/bin/tini -- "$@"
