"""The deployment contract (deploy/contract.json) is the one place the image's uid, ports, in-container paths
and CUDA major version are stated: every generated copy is current, the copies that cannot be generated (the
Dockerfile's ARG defaults, the runtime's default ports) equal it, and no deploy file states them again."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moltbot.settings import Settings

REPO = Path(__file__).resolve().parents[1]
CONTRACT = json.loads((REPO / "deploy" / "contract.json").read_text())
GENERATOR = REPO / "scripts" / "deploy_contract.py"


def _generated() -> set[Path]:
    sys.path.insert(0, str(GENERATOR.parent))
    try:
        import deploy_contract
    finally:
        sys.path.pop(0)
    return set(deploy_contract.generated_files(deploy_contract.load()))


def test_generated_copies_are_current():
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_generator_check_fails_when_a_copy_drifts(tmp_path):
    copy = tmp_path / "repo"
    for relative in ["deploy/contract.json", "scripts/deploy_contract.py",
                     *(str(p.relative_to(REPO)) for p in _generated())]:
        (copy / relative).parent.mkdir(parents=True, exist_ok=True)
        (copy / relative).write_text((REPO / relative).read_text())
    vars_file = copy / "ansible/roles/moltbot/vars/main.yml"
    vars_file.write_text(vars_file.read_text().replace("10001", "1000"))
    result = subprocess.run([sys.executable, str(copy / "scripts/deploy_contract.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "ansible/roles/moltbot/vars/main.yml" in result.stderr


def _dockerfile_arg_defaults() -> dict[str, str]:
    text = (REPO / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))


def test_dockerfile_defaults_equal_the_contract():
    args = _dockerfile_arg_defaults()
    paths = CONTRACT["paths"]
    assert {name: args.get(name) for name in [
        "MOLTBOT_UID", "MOLTBOT_GID", "MOLTBOT_HTTP_PORT", "MOLTBOT_HTTPS_PORT", "MODELS_DIR", "PLUGINS_DIR",
        "LOGS_DIR", "DEFAULTS_DIR", "CUDA_MAJOR"]} == {
        "MOLTBOT_UID": str(CONTRACT["service_user"]["uid"]), "MOLTBOT_GID": str(CONTRACT["service_user"]["gid"]),
        "MOLTBOT_HTTP_PORT": str(CONTRACT["ports"]["http"]), "MOLTBOT_HTTPS_PORT": str(CONTRACT["ports"]["https"]),
        "MODELS_DIR": paths["models"], "PLUGINS_DIR": paths["plugins"], "LOGS_DIR": paths["logs"],
        "DEFAULTS_DIR": paths["defaults"], "CUDA_MAJOR": str(CONTRACT["gpu"]["cuda_major"])}


def test_runtime_default_ports_equal_the_contract():
    settings = Settings.load(environ={})
    assert (settings.port, settings.https_port) == (CONTRACT["ports"]["http"], CONTRACT["ports"]["https"])


def test_the_gpu_extra_pulls_the_contracts_cuda_major():
    """onnxruntime-gpu's CUDA wheels decide the image's CUDA; the Dockerfile checks the installed one at build."""
    import tomllib
    gpu = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert gpu == ["onnxruntime-gpu[cuda,cudnn]==1.31.1"], "check the CUDA major of a new onnxruntime-gpu"
    assert CONTRACT["gpu"]["cuda_major"] == 13


# Literal values the contract states; a deploy file that writes one of them again is a copy that can drift.
_CONTRACT_LITERALS = [
    re.compile(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])") for value in (
        CONTRACT["service_user"]["uid"], CONTRACT["ports"]["http"], CONTRACT["ports"]["https"])
] + [re.compile(rf"{re.escape(path)}(?![\w-])") for path in CONTRACT["paths"].values()]


def _deploy_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "Dockerfile", "scripts", "ansible/roles", "ansible/playbooks",
                              "ansible/inventories", "infra/pulumi"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    generated = {p.relative_to(REPO) for p in _generated()}
    return [REPO / name for name in tracked if Path(name) not in generated
            and Path(name).suffix in {"", ".py", ".sh", ".yml", ".yaml", ".j2"}
            and not name.endswith("README.md")
            and not Path(name).name.startswith("Pulumi.")]  # stack files: the operator's chosen host ports


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines that are code, not comments or docstrings."""
    text = path.read_text()
    if path.suffix == ".py":
        docstrings = set()
        for node in ast.walk(ast.parse(text)):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                docstrings.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
        return [(n, line.split("#")[0]) for n, line in enumerate(text.splitlines(), 1) if n not in docstrings]
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", _deploy_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_deploy_file_states_the_contract_again(path):
    allowed = re.compile(r"^ARG \w+=") if path.name == "Dockerfile" else None
    copies = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for n, line in _code_lines(path)
              if any(p.search(line) for p in _CONTRACT_LITERALS) and not (allowed and allowed.match(line))]
    assert not copies, "read these from deploy/contract.json (or its generated copies):\n" + "\n".join(copies)


# The READMEs that describe these deployments name deploy/contract.json instead of copying its image pins and
# runtime limits (a hand copy went stale before).
_CONTRACT_README_LITERALS = [CONTRACT["images"]["grafana"].rsplit(":", 1)[1], CONTRACT["images"]["grafana"]]


@pytest.mark.parametrize("readme", ["monitoring/README.md", "infra/pulumi/README.md",
                                    "ansible/roles/moltbot/README.md"])
def test_deploy_readmes_refer_to_the_contract_instead_of_copying_it(readme):
    text = (REPO / readme).read_text()
    copies = [value for value in _CONTRACT_README_LITERALS if value in text]
    limits = CONTRACT["runtime_limits"]
    copies += [m.group(0) for m in re.finditer(
        rf"(?<![\w.])({re.escape(str(limits['memory']))}|{re.escape(str(limits['pids']))})(?![\w.])", text)
        if not _is_example(text, m.start())]
    assert not copies, f"{readme} copies deploy/contract.json's values {copies}: refer to the contract instead"


def _is_example(text: str, start: int) -> bool:
    """`512m`, `4g` in a list of size examples are the size syntax, not the default."""
    line = text[text.rfind("\n", 0, start) + 1:text.find("\n", start)]
    return "Docker-style size" in line
