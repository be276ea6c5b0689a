#!/usr/bin/env bash
# Dependency audit: pip-audit over the project's requirements (the runtime's pins from pyproject.toml with the
# cpu and gpu variants' ONNX Runtime, the plugins', monitoring's, Pulumi's and Ansible's requirement files),
# when a vulnerability database can be reached: OSV (api.osv.dev) first, else PyPI's JSON API. When neither
# answers, it says so and exits 2: an audit that could not run is not a pass.
#   AUDIT_VENV=build/audit-venv scripts/audit.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${AUDIT_VENV:-$root/build/audit-venv}"
work="$root/build/audit"
mkdir -p "$work"

reachable() {  # url, method
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X "$2" -H 'content-type: application/json' \
          ${3:+--data "$3"} "$1" || true)"
  [ "${code:-000}" != 000 ] && [ "${code:0:1}" != 5 ] && [ "$code" != 404 ] && [ "$code" != 403 ]
}
service=""
if reachable https://api.osv.dev/v1/query POST '{"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "20.0"}'; then
  service=osv
elif reachable https://pypi.org/pypi/pip/20.0/json GET; then
  service=pypi
fi
if [ -z "$service" ]; then
  echo "audit: NOT RUN - no vulnerability database is reachable from this machine (tried OSV at api.osv.dev and" \
       "PyPI's JSON API at pypi.org/pypi/<name>/json). Run \`make audit\` where one of them is reachable." >&2
  exit 2
fi

# The runtime's requirements as the image installs them (Dockerfile: pyproject's dependencies, then a variant).
"$venv/bin/python" - "$root/pyproject.toml" "$work" <<'PY'
import sys, tomllib
from pathlib import Path
project = tomllib.loads(Path(sys.argv[1]).read_text())["project"]
extras = project["optional-dependencies"]
for variant in ("cpu", "gpu"):
    Path(sys.argv[2], f"runtime-{variant}.txt").write_text("\n".join(project["dependencies"] + extras[variant]) + "\n")
PY
files=("$work/runtime-cpu.txt" "$work/runtime-gpu.txt")
for name in plugins monitoring pulumi ansible; do
  files+=("$root/requirements/$name.txt")
done

status=0
for file in "${files[@]}"; do
  echo "audit: ${file#"$root"/} (vulnerability service: $service)"
  (cd "$(dirname "$file")" && "$venv/bin/pip-audit" --vulnerability-service "$service" --progress-spinner off \
     -r "$(basename "$file")") || status=1
done
[ "$status" = 0 ] && echo "audit: no known vulnerability in the audited requirements"
exit "$status"
