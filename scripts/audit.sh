#!/usr/bin/env bash
# Dependency audit: pip-audit over the exact versions installed, not over pyproject's ranges (which pip would
# resolve to today's latest releases, not to what is installed and shipped): a `pip freeze` of the project venv
# (.venv: the runtime with its cpu variant, export path, plugins, monitoring, Pulumi and test tools, as far as
# they are installed there), of the model builder's and Ansible's venvs where they exist, and the gpu variant's
# exact pins from pyproject.toml (installed in no venv here). Each list is audited with --no-deps: nothing is
# resolved or installed (no GPU wheels pulled in). Vulnerability database: OSV (api.osv.dev) first, else PyPI's
# JSON API; when neither answers, it says so and exits 2: an audit that could not run is not a pass.
#   AUDIT_VENV=build/audit-venv PROJECT_VENV=.venv BUILDER_VENV=build/builder-venv \
#   ANSIBLE_VENV=build/ansible-venv scripts/audit.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${AUDIT_VENV:-$root/build/audit-venv}"
project="${PROJECT_VENV:-$root/.venv}"
builder="${BUILDER_VENV:-$root/build/builder-venv}"
ansible="${ANSIBLE_VENV:-$root/build/ansible-venv}"
work="${AUDIT_WORK:-$root/build/audit}"
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
if [ ! -x "$project/bin/python" ]; then
  echo "audit: NOT RUN - no project venv at $project to audit (\`make venv\` makes it)." >&2
  exit 2
fi

# A venv's packages, exactly as installed. Only releases pinned with == can be audited without resolution: what
# pip freeze lists otherwise (a direct URL, a local wheel) is named as not audited. A local version label
# (torch==2.13.0+cpu) is audited as its release.
pin='^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^]]*\])?=='
freeze() {  # venv, output file
  local all="$2.freeze"
  "$1/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check >"$all"
  { grep -E "$pin" "$all" || true; } | sed -E 's/\+[A-Za-z0-9._]+$//' >"$2"
  { grep -vE "$pin|^#|^-e |^\s*$" "$all" || true; } | while read -r line; do
    echo "audit: not audited (not a release pinned with ==): ${line%% @*}" >&2
  done
}

files=()
for spec in "project:$project" "builder:$builder" "ansible:$ansible"; do
  label="${spec%%:*}" dir="${spec#*:}"
  if [ ! -x "$dir/bin/python" ]; then
    echo "audit: no $label venv at $dir: not audited"
    continue
  fi
  freeze "$dir" "$work/$label-venv.txt"
  files+=("$work/$label-venv.txt")
done
# The gpu image's ONNX Runtime: pyproject's exact pins of the gpu extra.
"$venv/bin/python" - "$root/pyproject.toml" "$work/gpu-variant.txt" <<'PY'
import re, sys, tomllib
from pathlib import Path
gpu = tomllib.loads(Path(sys.argv[1]).read_text())["project"]["optional-dependencies"]["gpu"]
Path(sys.argv[2]).write_text("".join(f"{r}\n" for r in gpu if re.search(r"==[^,;]+$", r)))
PY
files+=("$work/gpu-variant.txt")

status=0
for file in "${files[@]}"; do
  echo "audit: ${file#"$root"/}, $(grep -c . "$file" || true) packages (vulnerability service: $service)"
  (cd "$(dirname "$file")" && "$venv/bin/pip-audit" --vulnerability-service "$service" --progress-spinner off \
     --no-deps -r "$(basename "$file")") || status=1
done
[ "$status" = 0 ] && echo "audit: no known vulnerability in the audited packages"
exit "$status"
