"""ONNX Runtime's thread pools follow the CPUs a container may use, not the host's cores (cgroup v2 and v1
quotas, read from files laid out as the kernel lays them out)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moltbot.engine.sessions import cpu_budget

CPUS = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "100000 100000\n"}, 1),  # --cpus=1
    ({"cpu.max": "150000 100000\n"}, min(CPUS, 2)),  # --cpus=1.5: rounded up
    ({"cpu.max": "5000 100000\n"}, 1),  # a twentieth of a CPU still gets one thread
    ({"cpu.max": "max 100000\n"}, CPUS),  # no limit: the CPUs it may run on
    ({"cpu.max": f"{(CPUS + 8) * 100000} 100000\n"}, CPUS),  # a quota above the cpuset: the cpuset
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, min(CPUS, 2)),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, CPUS),
    ({"cpu.max": "garbage\n"}, CPUS),
    ({}, CPUS),
])
def test_the_budget_is_the_cpuset_capped_by_the_quota(tmp_path: Path, files: dict[str, str], expected: int):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_budget(tmp_path) == expected


def test_this_machine_gets_at_most_its_cpus():
    assert 1 <= cpu_budget() <= CPUS


def test_a_session_under_a_quota_gets_that_many_threads(monkeypatch: pytest.MonkeyPatch):
    from moltbot.engine import sessions

    monkeypatch.setattr(sessions, "cpu_budget", lambda: 1)
    limited = sessions._session_options(sessions.DeviceOptions(), optimise=False)
    assert limited.intra_op_num_threads == (1 if (os.cpu_count() or 1) > 1 else 0)
    monkeypatch.setattr(sessions, "cpu_budget", lambda: os.cpu_count())
    assert sessions._session_options(sessions.DeviceOptions(), optimise=False).intra_op_num_threads == 0  # ORT's
    assert sessions._session_options(sessions.DeviceOptions(intra_op_threads=3),
                                     optimise=False).intra_op_num_threads == 3  # the setting wins
