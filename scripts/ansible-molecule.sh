#!/usr/bin/env bash
# Runs Molecule scenarios with the shared base configuration, MOLECULE_JOBS at a time (default 2: the
# scenarios mostly wait on apt, docker load and systemd, so two overlap well on 2 cores). Each scenario's
# output goes to build/molecule/<scenario>.log (printed when it fails); the time each took is reported.
# Scenario containers and volumes are removed afterwards. `--clean` only removes leftovers of an interrupted run.
#   ANSIBLE_VENV=build/ansible-venv MOLECULE_IMAGE=... scripts/ansible-molecule.sh SCENARIO...
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ANSIBLE_VENV:-$root/build/ansible-venv}"
jobs="${MOLECULE_JOBS:-2}"
logs="$root/build/molecule"
export PATH="$venv/bin:$PATH"
export MOLECULE_IMAGE="${MOLECULE_IMAGE:-moltbot-test/ubuntu-systemd:jammy}"
# The image archive `make image-archive` writes; the moltbot and site scenarios ship it to the test host.
export MOLTBOT_IMAGE_ARCHIVE="${MOLTBOT_IMAGE_ARCHIVE:-$root/build/images/moltbot-latest.tar}"
export NO_COLOR=1 PY_COLORS=0 ANSIBLE_NOCOLOR=1
cd "$root/ansible"

remove_leftovers() {
  local scenario=$1
  docker rm -f "moltbot-molecule-$scenario" >/dev/null 2>&1 || true
  docker volume rm "moltbot-molecule-$scenario-docker" >/dev/null 2>&1 || true
}

if [ "${1:-}" = --clean ]; then
  for dir in molecule/*/; do remove_leftovers "$(basename "$dir")"; done
  exit 0
fi

for scenario in "$@"; do
  [ -f "molecule/$scenario/molecule.yml" ] || { echo "ansible-molecule: no scenario '$scenario' in ansible/molecule/" >&2; exit 2; }
done
case "$*" in *moltbot*|*site*|*nvidia*)
  [ -f "$MOLTBOT_IMAGE_ARCHIVE" ] || { echo "ansible-molecule: $MOLTBOT_IMAGE_ARCHIVE is missing (make image-archive)" >&2; exit 2; };;
esac
mkdir -p "$logs"

run_scenario() {
  local scenario=$1 started=$SECONDS rc=0
  molecule --base-config molecule-base.yml test -s "$scenario" >"$logs/$scenario.log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "ansible-molecule: $scenario passed in $((SECONDS - started)) s"
  else
    tail -n 80 "$logs/$scenario.log" | sed "s/^/[$scenario] /" >&2
    echo "ansible-molecule: $scenario FAILED after $((SECONDS - started)) s (log: $logs/$scenario.log)" >&2
    molecule --base-config molecule-base.yml destroy -s "$scenario" >/dev/null 2>&1 || true
  fi
  remove_leftovers "$scenario"
  return "$rc"
}

started=$SECONDS
failed=0
running=0
for scenario in "$@"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  run_scenario "$scenario" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
echo "ansible-molecule: $# scenario(s) in $((SECONDS - started)) s"
[ "$failed" -eq 0 ] || { echo "ansible-molecule: some scenarios failed (see above)" >&2; exit 1; }
