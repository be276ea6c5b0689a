#!/usr/bin/env bash
# Runs Molecule scenarios one after the other with the shared base configuration and prints the time each
# took; removes the scenario volumes afterwards. `--clean` only removes leftovers of an interrupted run.
#   ANSIBLE_VENV=build/ansible-venv MOLECULE_IMAGE=... scripts/ansible-molecule.sh SCENARIO...
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ANSIBLE_VENV:-$root/build/ansible-venv}"
export PATH="$venv/bin:$PATH"
export MOLECULE_IMAGE="${MOLECULE_IMAGE:-moltbot-test/debian-systemd:bookworm}"
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
  docker volume rm moltbot-molecule-apt-archives >/dev/null 2>&1 || true
  exit 0
fi

failed=()
for scenario in "$@"; do
  [ -f "molecule/$scenario/molecule.yml" ] || { echo "ansible-molecule: no scenario '$scenario' in ansible/molecule/" >&2; exit 2; }
  started=$SECONDS
  if molecule --base-config molecule-base.yml test -s "$scenario"; then
    echo "ansible-molecule: $scenario passed in $((SECONDS - started)) s"
  else
    echo "ansible-molecule: $scenario FAILED after $((SECONDS - started)) s" >&2
    failed+=("$scenario")
    molecule --base-config molecule-base.yml destroy -s "$scenario" >/dev/null 2>&1 || true
  fi
  remove_leftovers "$scenario"
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "ansible-molecule: failed scenarios: ${failed[*]}" >&2
  exit 1
fi
