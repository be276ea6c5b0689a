"""The Linux process controls of plugin isolation: whole-tree kills of a worker and what it started, the worker as
the subreaper of its descendants, and the service's /proc files closed to its workers.

A worker's process group is not enough to stop what a plugin started: a child that calls setsid() (a daemon, a
`start_new_session` subprocess) leaves the group and would outlive the kill. The worker therefore makes itself the
child subreaper of everything it starts (orphans are re-parented to it, not to PID 1), and a kill walks the tree
below it in /proc: every process is frozen with SIGSTOP through a pidfd (so a new one cannot be forked, and a
reused pid is never signalled) until a walk finds no new one, then all are killed with SIGKILL. What is killed is
reaped by its parent, the worker's subreaper chain or, once the worker is gone, PID 1 (the image runs `tini`).
Elsewhere than Linux only the process group is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("moltbot.plugins")
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
# Walks of the tree before the kill gives up freezing (each walk freezes what the last one found; a tree that
# still grows after this many is killed as found: its parents are frozen, so what it forked since is orphaned to
# the worker, which is killed too).
_MAX_WALKS = 50


def _prctl(option: int, value: int) -> bool:
    """prctl(2) through the C library; False where there is none (not Linux) or the call fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def protect_service_process() -> bool:
    """Mark the service not dumpable: its /proc/<pid>/environ, mem, maps, fd and the like become root's, so a
    worker (same uid, a plain exec without the mark) cannot read the service's environment (API keys) or memory,
    nor ptrace it. Core dumps of the service are off too. Linux only; True when it holds."""
    done = _prctl(_PR_SET_DUMPABLE, 0)
    if not done and sys.platform.startswith("linux"):
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: plugin workers can read the service's /proc files")
    return done


def become_subreaper() -> bool:
    """In a worker: orphaned descendants (a setsid child whose parent exited) are re-parented to this process, so
    they stay in the tree that kill_tree() walks."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process in /proc (empty without /proc)."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                ppid = _parent(int(entry.name))
                if ppid is not None:
                    parents[int(entry.name)] = ppid
    return parents


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after the last ')' are plain.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int, parents: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class _Target:
    """One process to signal: through a pidfd where there is one (the pid cannot be reused under it)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd: int | None = None
        self.gone = False
        try:
            self.fd = os.pidfd_open(pid)
        except ProcessLookupError:  # exited already: its pid may be someone else's by now
            self.gone = True
        except (AttributeError, OSError):  # no pidfd_open here (old kernel, not Linux): signal by pid
            pass

    def signal(self, signum: int) -> None:
        if self.gone:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signum)
            else:
                os.kill(self.pid, signum)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def kill_tree(root: int, include_root: bool = True) -> int:
    """SIGKILL every descendant of `root` (and `root` with include_root), frozen first so that none forks or
    escapes meanwhile. Returns how many descendants were killed."""
    targets: dict[int, _Target] = {}
    if include_root:
        targets[root] = _Target(root)
        targets[root].signal(signal.SIGSTOP)
    try:
        for _ in range(_MAX_WALKS):
            parents = _parents()
            tree = {root, *targets}
            new = [pid for pid in _descendants(root, parents) if pid not in targets]
            if not new:
                break
            below = tree.union(new)
            for pid in new:
                target = _Target(pid)
                # Opened after the walk: still below the tree now, so the pidfd holds that process, not a newcomer
                # that got a freed pid.
                if not target.gone and _parent(pid) in below:
                    targets[pid] = target
                    target.signal(signal.SIGSTOP)
                else:
                    target.close()
        for target in targets.values():
            target.signal(signal.SIGKILL)
    finally:
        for target in targets.values():
            target.close()
    return len(targets) - (1 if include_root else 0)
