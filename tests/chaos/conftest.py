"""Fault tests: real processes killed and restarted, bounded in time, loopback only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from registry.store import FileRegistry
from tests.conftest import TrainedModel
from tests.server.conftest import own_redis  # noqa: F401  (a fixture)


@pytest.fixture
def registry_copy(trained: TrainedModel, tmp_path: Path) -> FileRegistry:
    """A registry of the test's own, holding the session's model as version 1."""
    root = tmp_path / "registry"
    shutil.copytree(trained.registry, root)
    return FileRegistry(root)
