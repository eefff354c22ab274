"""Fixtures for training tests: a small LeRobot v3 dataset converted from real rosbag2 files."""

from __future__ import annotations

from pathlib import Path

import pytest

from apt_core.contract import load_contract
from apt_core.data.convert import convert
from apt_core.data.synthetic import write_synthetic_bag

INSTRUCTIONS = [
    "pick up the red cube",
    "push the blue cube to the left",
    "stack the green cube on the red cube",
]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 episodes x 24 frames from synthetic mcap bags (one instruction each), converted once."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    contract = load_contract()
    bags = root / "bags"
    bags.mkdir()
    for i, text in enumerate(INSTRUCTIONS):
        write_synthetic_bag(bags / f"episode_{i}", contract, n_frames=24, instruction=text, seed=i)
    out = root / "dataset"
    summary = convert(bags, out, contract)
    assert summary.episodes == 3
    return out
