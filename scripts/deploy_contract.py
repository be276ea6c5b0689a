#!/usr/bin/env python3
"""The deployment contract (deploy/contract.json) and the files generated from it.

The image's service uid, ports, in-container paths and CUDA major version, the runtime container's default
limits and the pinned public images of the monitoring services are stated once, in deploy/contract.json. Ansible roles cannot read a file outside themselves when they are installed elsewhere,
so their copies are generated here as role vars; the Dockerfile's ARG defaults and the runtime's settings
are checked against it by tests/test_deploy_contract.py, and scripts/image-build.sh passes the values as
build arguments.

    python3 scripts/deploy_contract.py          # write the generated files
    python3 scripts/deploy_contract.py --check  # exit 1 when one of them differs from what it would write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "deploy" / "contract.json"
HEADER = "# Generated from deploy/contract.json by scripts/deploy_contract.py: edit that file, then run the script.\n"


def load() -> dict[str, Any]:
    contract: dict[str, Any] = json.loads(CONTRACT.read_text())
    return contract


def _yaml(values: dict[str, Any]) -> str:
    """Role vars as YAML; JSON scalars and flow mappings are valid YAML, so no YAML library is needed."""
    return "---\n" + HEADER + "".join(f"{name}: {json.dumps(value)}\n" for name, value in values.items())


def generated_files(contract: dict[str, Any]) -> dict[Path, str]:
    user, ports, paths, gpu = contract["service_user"], contract["ports"], contract["paths"], contract["gpu"]
    limits, images = contract["runtime_limits"], contract["images"]
    tls_dir = paths["tls"]
    return {
        ROOT / "ansible/roles/moltbot/vars/main.yml": _yaml({
            "moltbot_container_uid": user["uid"],
            "moltbot_container_gid": user["gid"],
            "moltbot_container_http_port": ports["http"],
            "moltbot_container_https_port": ports["https"],
            "moltbot_container_models_dir": paths["models"],
            "moltbot_container_plugins_dir": paths["plugins"],
            "moltbot_container_logs_dir": paths["logs"],
            "moltbot_container_tls_dir": tls_dir,
            "moltbot_container_tls_cert": f"{tls_dir}/{contract['tls_files']['cert']}",
            "moltbot_container_tls_key": f"{tls_dir}/{contract['tls_files']['key']}",
            "moltbot_container_api_keys_file": paths["api_keys_file"],
            "moltbot_container_admin_api_keys_file": paths["admin_api_keys_file"],
            "moltbot_gpu_cuda_major": gpu["cuda_major"],
            "moltbot_contract_memory": limits["memory"],
            "moltbot_contract_pids_limit": limits["pids"],
        }),
        ROOT / "ansible/roles/dcgm_exporter/vars/main.yml": _yaml({
            "dcgm_exporter_contract_image": images["dcgm_exporter"],
        }),
        # Roles that name the moltbot role's published ports fall back to the image's own when those are unset.
        ROOT / "ansible/roles/firewall/vars/main.yml": _yaml({
            "firewall_contract_http_port": ports["http"],
            "firewall_contract_https_port": ports["https"],
        }),
        ROOT / "ansible/roles/prometheus_targets/vars/main.yml": _yaml({
            "prometheus_targets_contract_http_port": ports["http"],
            "prometheus_targets_contract_https_port": ports["https"],
        }),
        ROOT / "ansible/roles/nvidia_container_toolkit/vars/main.yml": _yaml({
            "nvidia_container_toolkit_cuda_major": gpu["cuda_major"],
            "nvidia_container_toolkit_min_driver_version": gpu["min_driver_version"],
        }),
        ROOT / "infra/pulumi/contract.json": json.dumps(contract, indent=2) + "\n",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the generated files are current")
    check = parser.parse_args().check
    stale = []
    for path, text in generated_files(load()).items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date with deploy/contract.json (run scripts/deploy_contract.py): "
              + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
