"""A worker's processes (issue #22, items 10-12 and the plugin loader): a kill takes setsid() children and
daemons with it, nothing among the plugin's files stands in for the standard library or moltbot, the worker
cannot read the service's /proc/<pid>/environ, and worker and manager load plugins by the same rules. Real
worker processes."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from moltbot.plugins.errors import PluginTimeout
from moltbot.plugins.manager import PluginManager
from plugin_helpers import REPO, make_settings, write_plugin

pytestmark = pytest.mark.anyio

SPAWNER = '''
import os, subprocess, sys, time
from moltbot.plugins import BasePlugin


def daemon():
    """The classic double fork: a setsid() grandchild whose parent has exited (an orphan)."""
    read, write = os.pipe()
    if os.fork() == 0:
        os.setsid()
        pid = os.fork()
        if pid == 0:
            os.execvp("sleep", ["sleep", "300"])
        os.write(write, str(pid).encode())
        os._exit(0)
    os.close(write)
    pid = int(os.read(read, 32))
    os.wait()
    return pid


class Spawner(BasePlugin):
    def execute(self, context):
        if context.input.get("loop"):
            while True:
                time.sleep(0.05)
        return {"setsid_child": subprocess.Popen(["sleep", "300"], start_new_session=True).pid,
                "daemon": daemon(), "worker": os.getpid()}
'''


def pidfd(pid: int) -> int:
    return os.pidfd_open(pid)


def exits_within(fd: int, seconds: float) -> bool:
    """A pidfd turns readable when its process has exited."""
    return bool(select.select([fd], [], [], seconds)[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tree kill is Linux's (/proc, pidfd)")
async def test_a_killed_worker_takes_setsid_children_and_daemons_with_it(plugins_root, tmp_path):
    write_plugin(plugins_root, "spawner", SPAWNER, {"timeout": 2})
    manager = PluginManager(make_settings(plugins_root, tmp_path, plugin_isolation="process"))
    await manager.load_all()
    try:
        started = await manager.execute("spawner", {}, request_id="t")
        fds = {name: pidfd(started[name]) for name in ("setsid_child", "daemon")}
        assert not any(exits_within(fd, 0) for fd in fds.values())  # running, outside the worker's group
        assert all(os.getpgid(started[name]) != started["worker"] for name in fds)
        with pytest.raises(PluginTimeout):
            await manager.execute("spawner", {"loop": True}, request_id="t")
        assert all(exits_within(fd, 5) for fd in fds.values())  # killed with the worker
        again = await manager.execute("spawner", {}, request_id="t")  # and a worker that ends on its own
        fds = {name: pidfd(again[name]) for name in ("setsid_child", "daemon")}
        shutil.rmtree(plugins_root / "spawner")
        await manager.reload()  # unloaded: close, the worker exits
        assert all(exits_within(fd, 5) for fd in fds.values())
    finally:
        await manager.close()


SHADOWED = '''
import os, resource, sys
import moltbot
from moltbot.plugins import BasePlugin


class Shadowed(BasePlugin):
    def execute(self, context):
        return {"rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0], "resource": resource.__file__,
                "moltbot": moltbot.__file__, "cwd": os.getcwd(), "isolated": sys.flags.isolated}
'''


async def test_plugin_files_cannot_shadow_the_standard_library_or_the_runtime(plugins_root, tmp_path):
    """A `resource.py` in the plugin folder used to replace the module the worker sets its memory limit with, and
    a `moltbot/` folder the runtime itself: the plugin folder was the worker's working directory, first on
    sys.path. Now the worker runs as `python -I` in the plugin's data folder."""
    folder = write_plugin(plugins_root, "shadowed", SHADOWED, {"memory_mb": 700})
    (folder / "resource.py").write_text("RLIMIT_AS = 9\ndef setrlimit(*args):\n    pass\n"
                                        "def getrlimit(which):\n    return (-1, -1)\n")
    (folder / "moltbot").mkdir()
    (folder / "moltbot" / "__init__.py").write_text("raise SystemExit('the plugin replaced moltbot')\n")
    manager = PluginManager(make_settings(plugins_root, tmp_path, plugin_isolation="process"))
    try:
        [outcome] = await manager.load_all()
        assert outcome["status"] == "loaded", outcome
        result = await manager.execute("shadowed", {}, request_id="t")
    finally:
        await manager.close()
    assert result["rlimit_as"] == 700 * 1024 * 1024 and not result["resource"].startswith(str(folder))
    assert result["moltbot"] == str(REPO / "runtime" / "moltbot" / "__init__.py")
    assert result["cwd"] == str(manager.data_root() / "shadowed") and result["isolated"] == 1


async def test_worker_and_manager_load_by_the_same_rules(plugins_root, tmp_path):
    """One loader (loader.py) for both: the same errors, with the file and line, in a worker and in-process."""
    broken = "from moltbot.plugins import BasePlugin\nimport json\n\nclass A(BasePlugin):\n    pass\n\n" \
             "class B(BasePlugin):\n    pass\n"
    failing = "from moltbot.plugins import BasePlugin\nfrom .helper import VALUE\n"
    outcomes = {}
    for isolation in ("process", "thread"):
        root = plugins_root / isolation
        write_plugin(root, "two", broken, {"isolation": isolation})
        (write_plugin(root, "fails", failing, {"isolation": isolation}) / "helper.py").write_text(
            "VALUE = 1 / 0\n")
        manager = PluginManager(make_settings(root, tmp_path))
        try:
            outcomes[isolation] = {o["name"]: o["error"] for o in await manager.load_all()}
        finally:
            await manager.close()
    assert outcomes["process"] == outcomes["thread"]
    assert outcomes["thread"]["two"].startswith("plugin.py defines several BasePlugin subclasses (A, B)")
    assert outcomes["thread"]["fails"] == "import failed: ZeroDivisionError: division by zero (helper.py line 1)"


ENVIRON = '''
import os
from moltbot.plugins import BasePlugin


class Environ(BasePlugin):
    def execute(self, context):
        try:
            with open(f"/proc/{os.getppid()}/environ", "rb") as environ:
                return {"read": environ.read().decode(errors="replace")}
        except OSError as exc:
            return {"refused": type(exc).__name__}
'''

READ_PARENT = '''
import asyncio, json, os, sys
from pathlib import Path
from moltbot.plugins.manager import PluginManager
from moltbot.settings import Settings


async def main(root):
    manager = PluginManager(Settings(plugins_dir=Path(root) / "plugins", cache_dir=Path(root) / "cache",
                                     plugin_isolation="process").validate())
    await manager.load_all()
    result = await manager.execute("environ", {}, request_id="t")
    own = len(os.listdir("/proc/self/fd")) > 0  # the service still reads its own (process_open_fds)
    await manager.close()
    print(json.dumps({"result": result, "own": own}))


asyncio.run(main(sys.argv[1]))
'''


READ_PARENT_AS_NOBODY = '''
import json, os, subprocess, sys
from moltbot.plugins.processes import protect_service_process

protected = protect_service_process()
reader = "import os\\ntry:\\n    print(open(f'/proc/{os.getppid()}/environ').read())\\nexcept OSError as e:\\n" \\
         "    print(type(e).__name__)"
worker = subprocess.run([sys.executable, "-I", "-c", reader], capture_output=True, text=True)  # as a worker starts
print(json.dumps({"protected": protected, "result": worker.stdout.strip(),
                  "own": len(os.listdir("/proc/self/fd")) > 0}))  # still its own (process_open_fds)
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_DUMPABLE is Linux's")
def test_a_worker_cannot_read_the_services_environment(tmp_path):
    """The service (a fresh process with a key in its environment) is not dumpable, so its /proc/<pid>/environ is
    closed to its workers (same uid, `python -I`). As a plain user: a real PluginManager and worker. As root (this
    sandbox) root reads any process's environ, so the same service start-up runs as `nobody` with the system
    Python (the venv's interpreter may live under root's home) and a worker started as PluginManager starts it."""
    import json

    env = {**os.environ, "MOLTBOT_API_KEYS": "sk-the-service-key"}
    if os.geteuid() != 0:
        root = tmp_path / "service"
        write_plugin(root / "plugins", "environ", ENVIRON, {})
        (root / "run.py").write_text(textwrap.dedent(READ_PARENT))
        done = subprocess.run([sys.executable, str(root / "run.py"), str(root)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        assert outcome["result"] == {"refused": "PermissionError"} and outcome["own"] is True
    else:
        # `nobody` must be able to read the package: a checkout may sit under a folder closed to other users
        # (CI's clone in a mktemp -d folder, pytest's tmp_path), so it gets a world-readable copy.
        readable = Path(tempfile.mkdtemp(prefix="moltbot-nobody-"))
        shutil.copytree(REPO / "runtime" / "moltbot", readable / "moltbot",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for path in [readable, *readable.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        env["PYTHONPATH"] = str(readable)
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                               "-c", READ_PARENT_AS_NOBODY], cwd="/", env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        assert outcome == {"protected": True, "result": "PermissionError", "own": True}
        shutil.rmtree(readable)
    assert "sk-the-service-key" not in done.stdout
