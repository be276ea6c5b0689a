#!/usr/bin/env bash
# Makes sure a Docker engine answers: starts dockerd in the background when none runs
# (CI machines have no systemd), then waits for it, at most 60 s.
set -euo pipefail
docker info >/dev/null 2>&1 && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
  $sudo systemctl start docker
else
  echo "ensure-docker: starting dockerd (log: /tmp/moltbot-dockerd.log)"
  $sudo sh -c 'nohup dockerd >/tmp/moltbot-dockerd.log 2>&1 &'
fi
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "ensure-docker: the Docker engine did not answer within 60 s; see /tmp/moltbot-dockerd.log" >&2
exit 1
