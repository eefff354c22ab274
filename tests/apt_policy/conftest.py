"""Fixtures of the policy-node tests: the helpers in this directory are importable by name."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from rosclient import Client


@pytest.fixture
def client(ros_env: dict[str, str]) -> Iterator[Client]:
    c = Client()
    yield c
    c.close()
