"""Runs infra/pulumi/__main__.py against Pulumi's mock engine and records what it declares.

(A module of its own, not conftest.py: other test folders have conftest modules of the same name.)

Only the Pulumi engine is mocked (no CLI, no provider plugins on CI machines): the program, its config
handling and the resource arguments are the real ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks, rpc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAM_DIR = REPO_ROOT / "infra" / "pulumi"
if str(PROGRAM_DIR) not in sys.path:
    sys.path.insert(0, str(PROGRAM_DIR))

# Stand-ins for what `pulumi config set --secret` stores in a real stack.
SECRETS = {
    "moltbot:apiKeys": "test-key-one,test-key-two",
    "moltbot:grafanaAdminPassword": "grafana-test-password",
}
# The keys an operator sets with --secret (the program refuses them in plain text): a test's override of one of
# these is passed as a secret unless the test names the secret keys itself.
SECRET_KEYS = frozenset({*SECRETS, "moltbot:adminApiKeys", "moltbot:tlsKey", "moltbot:registryPassword",
                         "moltbot:pluginEnv"})


@dataclass
class Declared:
    """One registered resource: its type, logical name, parent URN, inputs and whether they hold secrets."""
    type: str
    name: str
    parent: str
    inputs: dict[str, Any]
    has_secret: bool
    urn: str
    provider: str  # "<provider URN>::<id>" when set explicitly or inherited, else ""


@dataclass
class StackRun:
    resources: list[Declared] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Declared]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str) -> Declared:
        matches = [r for r in self.resources if r.type == type_ and r.name == name]
        assert len(matches) == 1, f"{type_} {name}: {len(matches)} declared; all: {self.summary()}"
        return matches[0]

    def summary(self) -> list[tuple[str, str]]:
        return sorted((r.type, r.name) for r in self.resources)

    def urn_of(self, type_: str, name: str) -> str:
        return self.one(type_, name).urn


# What the mocked engine answers for state the Docker provider computes.
MOCK_GATEWAY = "172.30.0.1"
MOCK_REGISTRY_DIGEST = "sha256:" + "d" * 64


def autoname(logical_name: str) -> str:
    """The name the mocked engine gives a Kubernetes object declared without one (Pulumi's autonaming adds
    a random suffix to the logical name)."""
    return f"{logical_name}-{hashlib.sha256(logical_name.encode()).hexdigest()[:8]}"


def k8s_name(declared: Declared) -> str:
    """A declared Kubernetes object's name: the one given, else the generated one."""
    return declared.inputs["metadata"].get("name") or autoname(declared.name)


def fake_image_state(name: str) -> dict[str, str]:
    """A RemoteImage's computed outputs: the image ID, and a repo digest only for images pulled by digest (an
    image built or loaded locally has none)."""
    repository, _, digest = name.partition("@")
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    return {"imageId": "sha256:" + hashlib.sha256(name.encode()).hexdigest(),
            "repoDigest": f"{repository}@{digest}" if digest else ""}


class Mocks(pulumi.runtime.Mocks):
    def __init__(self, image_state: Callable[[str], dict[str, str]] = fake_image_state,
                 gateway: str = MOCK_GATEWAY):
        self.image_state = image_state
        self.gateway = gateway

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        if args.typ == "docker:index/remoteImage:RemoteImage":
            state.update(self.image_state(args.inputs["name"]))
        elif args.typ == "docker:index/network:Network":
            state["ipamConfigs"] = [{"subnet": self.gateway.rsplit(".", 1)[0] + ".0/24", "gateway": self.gateway}]
        elif args.typ.startswith("kubernetes:") and not (state.get("metadata") or {}).get("name"):
            state["metadata"] = {**(state.get("metadata") or {}), "name": autoname(args.name)}
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "docker:index/getRegistryImage:getRegistryImage":
            return {"name": args.args["name"], "sha256Digest": MOCK_REGISTRY_DIGEST}
        raise AssertionError(f"the program made an unexpected provider call: {args.token}")


class _RecordingMonitor(mocks.MockMonitor):
    """Keeps each registration's parent and whether its inputs carry a secret (the stock monitor drops both)."""

    def __init__(self, run: StackRun, mocks: Mocks):
        super().__init__(mocks)
        self.run = run

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs, has_secret = rpc.deserialize_properties_unwrap_secrets(request.object)
            self.run.resources.append(Declared(request.type, request.name, request.parent, inputs, has_secret,
                                               response.urn, request.provider))
        return response


def stack_config(stack: str) -> dict[str, str]:
    """The committed Pulumi.<stack>.yaml as the engine passes config to a program (objects as JSON)."""
    document = yaml.safe_load((PROGRAM_DIR / f"Pulumi.{stack}.yaml").read_text())
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in document["config"].items()}


def run_program(config: dict[str, str], secret_keys: list[str] | None = None, stack: str = "test",
                mocks: Mocks | None = None) -> StackRun:
    """Runs __main__.py once with `config`; returns every declared resource and the resolved exports.

    `mocks` answers for the provider's computed state (image IDs, the network's gateway); the tests that
    run the declared containers on the real engine pass the real values.
    """
    # Pulumi's mocks run on the thread's current event loop; an earlier asyncio.run() in the same pytest
    # process leaves none set.
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    run = StackRun()
    mocks = mocks or Mocks()
    pulumi.runtime.set_mocks(mocks, project="moltbot", stack=stack, preview=False,
                             monitor=_RecordingMonitor(run, mocks))
    pulumi.runtime.set_all_config(config, secret_keys=secret_keys or [k for k in config if k in SECRET_KEYS])
    exports: dict[str, Any] = {}
    original_export = pulumi.export

    @pulumi.runtime.test
    def program():
        pulumi.export = lambda name, value: exports.__setitem__(name, value)
        try:
            runpy.run_path(str(PROGRAM_DIR / "__main__.py"), run_name="__main__")
        finally:
            pulumi.export = original_export
        return pulumi.Output.all(**exports).apply(run.outputs.update)

    program()
    return run


def run_stack(stack: str, overrides: dict[str, str] | None = None, drop: tuple[str, ...] = (),
              mocks: Mocks | None = None) -> StackRun:
    """The committed stack file plus the secrets an operator would set, with optional changes."""
    config = {**stack_config(stack), **SECRETS, **(overrides or {})}
    for key in drop:
        config.pop(key, None)
    return run_program(config, stack=stack, mocks=mocks)
