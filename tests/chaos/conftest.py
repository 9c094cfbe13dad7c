"""Fault tests: real processes killed and restarted, bounded in time, loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.store import FileRegistry
from tests.harness.cli import TrainedModel
from tests.harness.registry import copy_registry


@pytest.fixture
def registry_copy(trained: TrainedModel, tmp_path: Path) -> FileRegistry:
    """A registry of the test's own, holding the session's model as version 1."""
    return copy_registry(trained, tmp_path)
