"""The image's deployment contract: service uid, ports and in-container paths.

contract.json beside this file is generated from the repository's deploy/contract.json (the one place these
facts are stated) by scripts/deploy_contract.py, so the program also runs from a copy of this folder alone.
"""

from __future__ import annotations

import json
from pathlib import Path

_CONTRACT = json.loads((Path(__file__).with_name("contract.json")).read_text())

RUNTIME_UID: int = _CONTRACT["service_user"]["uid"]
RUNTIME_GID: int = _CONTRACT["service_user"]["gid"]
HTTP_PORT: int = _CONTRACT["ports"]["http"]
HTTPS_PORT: int = _CONTRACT["ports"]["https"]
MODELS_DIR: str = _CONTRACT["paths"]["models"]
PLUGINS_DIR: str = _CONTRACT["paths"]["plugins"]
LOGS_DIR: str = _CONTRACT["paths"]["logs"]
TLS_DIR: str = _CONTRACT["paths"]["tls"]
TLS_CERT: str = f"{TLS_DIR}/{_CONTRACT['tls_files']['cert']}"
TLS_KEY: str = f"{TLS_DIR}/{_CONTRACT['tls_files']['key']}"
# The API keys reach the runtime as this file (MOLTBOT_API_KEYS_FILE), never as environment variables.
API_KEYS_FILE: str = _CONTRACT["paths"]["api_keys_file"]
# Admin keys (plugin reload, knowledge base ingest: MOLTBOT_ADMIN_API_KEYS_FILE), beside the API keys file.
ADMIN_API_KEYS_FILE: str = _CONTRACT["paths"]["admin_api_keys_file"]
# The runtime container's default limits (Docker: --memory, the nproc ulimit of its user; Kubernetes: memory).
DEFAULT_MEMORY: str = _CONTRACT["runtime_limits"]["memory"]
DEFAULT_PIDS_LIMIT: int = _CONTRACT["runtime_limits"]["pids"]
# The pinned public images of the monitoring services (also the Ansible dcgm_exporter role's default).
IMAGES: dict[str, str] = _CONTRACT["images"]
