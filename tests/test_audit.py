"""scripts/audit.sh (make audit): with no vulnerability database reachable it says so and exits 2; with one, it
runs pip-audit against that service over every requirements file. curl and pip-audit are stand-ins on PATH / in
a stand-in venv, so the test needs no network; the script itself runs for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stand_ins(tmp_path: Path, curl_code: str) -> tuple[dict[str, str], Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(f"#!/bin/sh\nprintf '%s' '{curl_code}'\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    calls = tmp_path / "calls.txt"
    (venv / "bin" / "pip-audit").write_text(f"#!/bin/sh\necho \"$PWD $*\" >> {calls}\n")
    for script in (bin_dir / "curl", venv / "bin" / "pip-audit"):
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AUDIT_VENV": str(venv)}
    return env, venv, calls


def test_no_reachable_database_is_said_clearly_and_is_not_a_pass(tmp_path):
    env, _, calls = stand_ins(tmp_path, "000")
    result = subprocess.run(["bash", str(REPO / "scripts/audit.sh")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "NOT RUN - no vulnerability database is reachable" in result.stderr
    assert not calls.exists()


def test_with_a_database_every_requirements_file_is_audited(tmp_path):
    env, _, calls = stand_ins(tmp_path, "200")
    result = subprocess.run(["bash", str(REPO / "scripts/audit.sh")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    audited = {line.split(" -r ")[1] for line in lines}
    assert audited == {"runtime-cpu.txt", "runtime-gpu.txt", "plugins.txt", "monitoring.txt", "pulumi.txt",
                       "ansible.txt"}
    assert all("--vulnerability-service osv" in line for line in lines)
    runtime = (REPO / "build/audit/runtime-cpu.txt").read_text()
    assert "sanic==25.12.0" in runtime and "onnxruntime==" in runtime
