"""scripts/audit.sh (make audit): with no vulnerability database reachable it says so and exits 2; with one, it
runs pip-audit with --no-deps against that service over the exact versions installed (pip freeze of each venv),
never over pyproject's ranges. curl, pip-audit and (but for one test) the venvs' Pythons are stand-ins, so the
tests need no network; the script itself runs for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FROZEN = """sanic==25.12.0
torch==2.13.0+cpu
-e git+https://example.invalid/moltbot.git@0123abcd#egg=moltbot
localpkg @ file:///tmp/wheels/localpkg-1.0-py3-none-any.whl
"""


def stand_in_venv(path: Path, frozen: str) -> Path:
    """A venv whose python answers `-m pip freeze` with `frozen`."""
    (path / "bin").mkdir(parents=True)
    python = path / "bin" / "python"
    python.write_text(f"#!/bin/sh\ncat <<'EOF'\n{frozen}EOF\n")
    python.chmod(0o755)
    return path


def stand_ins(tmp_path: Path, curl_code: str, **venvs: Path) -> tuple[dict[str, str], Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(f"#!/bin/sh\nprintf '%s' '{curl_code}'\n")
    venv = tmp_path / "audit-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    calls = tmp_path / "calls.txt"
    (venv / "bin" / "pip-audit").write_text(f"#!/bin/sh\necho \"$PWD $*\" >> {calls}\n")
    for script in (bin_dir / "curl", venv / "bin" / "pip-audit"):
        script.chmod(0o755)
    work = tmp_path / "audit"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AUDIT_VENV": str(venv),
           "AUDIT_WORK": str(work), "PROJECT_VENV": str(tmp_path / "no-project-venv"),
           "BUILDER_VENV": str(tmp_path / "no-builder-venv"), "ANSIBLE_VENV": str(tmp_path / "no-ansible-venv")}
    env.update({f"{name.upper()}_VENV": str(path) for name, path in venvs.items()})
    return env, work, calls


def audit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "scripts/audit.sh")], env=env, capture_output=True, text=True,
                          timeout=120)


def audited(calls: Path) -> dict[str, str]:
    """The file each pip-audit call read, with its arguments."""
    return {line.split(" -r ")[1]: line for line in calls.read_text().splitlines()}


def test_no_reachable_database_is_said_clearly_and_is_not_a_pass(tmp_path):
    env, _, calls = stand_ins(tmp_path, "000", project=stand_in_venv(tmp_path / "project", FROZEN))
    result = audit(env)
    assert result.returncode == 2
    assert "NOT RUN - no vulnerability database is reachable" in result.stderr
    assert not calls.exists()


def test_without_a_project_venv_nothing_is_audited_and_it_says_so(tmp_path):
    env, _, calls = stand_ins(tmp_path, "200")
    result = audit(env)
    assert result.returncode == 2
    assert "NOT RUN - no project venv" in result.stderr
    assert not calls.exists()


def test_the_installed_versions_are_audited_without_resolution(tmp_path):
    env, work, calls = stand_ins(tmp_path, "200", project=stand_in_venv(tmp_path / "project", FROZEN),
                                 builder=stand_in_venv(tmp_path / "builder", "transformers==5.24.0\n"))
    result = audit(env)
    assert result.returncode == 0, result.stderr
    lines = audited(calls)
    assert set(lines) == {"project-venv.txt", "builder-venv.txt", "gpu-variant.txt"}  # no Ansible venv here
    assert all("--no-deps" in line and "--vulnerability-service osv" in line for line in lines.values())
    assert all(line.startswith(f"{work} ") for line in lines.values())
    # Exact pins only: the editable project is left out, a local wheel is named as not audited, a local
    # version label is audited as its release.
    assert (work / "project-venv.txt").read_text() == "sanic==25.12.0\ntorch==2.13.0\n"
    assert "not audited (not a release pinned with ==): localpkg" in result.stderr
    assert "file:///" not in result.stderr
    assert (work / "builder-venv.txt").read_text() == "transformers==5.24.0\n"
    assert "no ansible venv at" in result.stdout
    [gpu] = (work / "gpu-variant.txt").read_text().splitlines()
    assert gpu.startswith("onnxruntime-gpu") and "==" in gpu


def test_the_project_venv_is_frozen_as_installed(tmp_path):
    """The venv these tests run in, frozen for real: what is installed, at the versions installed."""
    env, work, calls = stand_ins(tmp_path, "200", project=Path(sys.prefix))
    result = audit(env)
    assert result.returncode == 0, result.stderr
    assert "project-venv.txt" in audited(calls)
    frozen = (work / "project-venv.txt").read_text().splitlines()
    assert "sanic==25.12.0" in frozen and any(line.startswith("onnxruntime==") for line in frozen)
    assert all("==" in line and " @ " not in line for line in frozen)
    assert not any(line.lower().startswith("moltbot") for line in frozen)  # the project itself (editable)
