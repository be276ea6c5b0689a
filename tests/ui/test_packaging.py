"""The chat page ships in the wheel (and so in the image, which installs the wheel built from runtime/): every
static file, the vendored JS with its licences; and the page names no file that is not there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from moltbot.ui import STATIC, load_files

REPO = Path(__file__).resolve().parents[2]


def _setuptools_major() -> int:
    try:
        return int(version("setuptools").split(".")[0])
    except PackageNotFoundError:
        return 0


def test_the_wheel_carries_every_static_file(tmp_path: Path) -> None:
    # Built from a copy of what the Dockerfile copies (pyproject.toml, README.md, runtime/), as the image does.
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "runtime", source / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # Offline with the venv's setuptools when it is new enough for pyproject.toml, else in pip's build isolation.
    no_isolation = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *no_isolation,
                             "-w", str(tmp_path / "wheels"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next((tmp_path / "wheels").glob("moltbot-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {"moltbot/ui/static/" + p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert {"moltbot/ui/static/index.html", "moltbot/ui/static/app.js", "moltbot/ui/static/vendor/marked.umd.js",
            "moltbot/ui/static/vendor/purify.min.js", "moltbot/ui/static/vendor/LICENSE.marked"} <= wanted
    assert wanted <= names, sorted(wanted - names)
    assert "moltbot/ui/__init__.py" in names


def test_vendored_versions_match_their_readme() -> None:
    readme = (STATIC / "vendor" / "README.md").read_text()
    marked = (STATIC / "vendor" / "marked.umd.js").read_text()
    purify = (STATIC / "vendor" / "purify.min.js").read_text()
    assert "marked v18.2.1" in marked and "| 18.2.1 |" in readme
    assert "DOMPurify 3.5.0" in purify and "| 3.5.0 |" in readme
    assert "sourceMappingURL" not in marked + purify


def test_the_page_names_only_files_that_exist() -> None:
    files = load_files()
    page = files["index.html"].body.decode()
    assert "{{asset:" not in page
    for name in ("app.js", "app.css", "favicon.svg", "vendor/marked.umd.js", "vendor/purify.min.js"):
        assert f"/ui/{name}?v=" in page
