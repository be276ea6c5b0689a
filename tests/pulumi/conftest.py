"""Module-scoped runs of the committed stacks (see pulumi_harness.py)."""

from __future__ import annotations

import pytest

from pulumi_harness import StackRun, run_stack


@pytest.fixture(scope="module")
def dev_stack() -> StackRun:
    return run_stack("dev")


@pytest.fixture(scope="module")
def prod_stack() -> StackRun:
    return run_stack("prod")


@pytest.fixture(scope="module")
def k8s_stack() -> StackRun:
    return run_stack("k8s")
