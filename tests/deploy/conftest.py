"""Fixtures for the deployment tests: the real CLIs' help, manifests, compose, a server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    DEPLOY,
    K8S,
    CliHelp,
    Doc,
    cli_help,
    kustomize,
    load_docs,
    manifest_files,
)
from tests.harness.cli import TrainedModel
from tests.harness.server import RunningServer, start_server


@pytest.fixture(scope="session")
def helps() -> dict[str, CliHelp]:
    """``--help`` of the console scripts (and subcommands) the deployment runs, from the venv."""
    names = ("rbm-serve", "rbm-train", "rbm-registry gc", "rbm-ratings trim")
    return {name: cli_help(name) for name in names}


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """deploy/docker-compose.yml, parsed."""
    (doc,) = load_docs(DEPLOY / "docker-compose.yml")
    return doc


@pytest.fixture(scope="session", params=["", "cuda"], ids=["cpu", "cuda"])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    """What ``kubectl kustomize`` renders for deploy/k8s and deploy/k8s/cuda.

    Without kubectl, the plain manifests of deploy/k8s/base stand in for the CPU rendering
    (so the cross-checks still run) and the CUDA overlay is skipped.
    """
    if shutil.which("kubectl") is None:
        if request.param:
            pytest.skip("kubectl is not installed: the CUDA overlay cannot be rendered")
        return [doc for path in manifest_files() for doc in load_docs(path)]
    return kustomize(K8S / request.param if request.param else K8S)


@pytest.fixture(scope="module")
def serving(trained: TrainedModel) -> Iterator[RunningServer]:
    """A real rbm-serve of the session's trained model (in-process cache: no Redis needed)."""
    with start_server(trained.registry, "--cache", "memory") as running:
        yield running


@pytest.fixture(scope="module")
def modelless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real rbm-serve on an empty registry: up, but NOT_SERVING (no model to load)."""
    empty: Path = tmp_path_factory.mktemp("empty-registry")
    with start_server(empty, "--cache", "memory") as running:
        yield running
