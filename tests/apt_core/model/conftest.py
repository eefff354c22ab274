"""Fixtures for the model tests: synthetic stats and raw batches in the dataset's (LeRobot v3) format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apt_core.model.config import get_preset
from apt_core.model.policy import APTPolicy
from apt_core.model.processor import Processor

J, H = 7, 16


def make_stats(j: int = J, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 0.3, j)
    std = rng.uniform(0.2, 0.6, j)
    entry = {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "min": (mean - 3 * std).tolist(),
        "max": (mean + 3 * std).tolist(),
        "q01": (mean - 2.3 * std).tolist(),
        "q99": (mean + 2.3 * std).tolist(),
    }
    return {"observation.state": entry, "action": dict(entry)}


def check_stage1_ignores_language_and_backprops(p, proc) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Shared by the cpu-demo backbone tests: a stage-1 policy's actions do not change with the
    instruction (bit-exact), and one training step leaves every frozen pretrained weight without a
    gradient. Returns the raw batch, the noise and the actions, for checks that follow."""
    raw = make_raw_batch(2, img=128, tasks=["pick up the red cube", "stack the blocks"])
    noise = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(0))
    p.eval()
    a = p.sample_actions(proc.process_batch(raw), noise=noise, num_steps=2)
    b = p.sample_actions(
        proc.process_batch(dict(raw, task=["open the drawer", "x"])), noise=noise, num_steps=2
    )
    assert torch.equal(a, b)
    p.train()
    p.zero_grad(set_to_none=True)
    loss, _ = p.compute_loss(proc.process_batch(raw, train=True))
    loss.backward()
    assert all(x.grad is None for x in p.backbone.pretrained_parameters())
    return raw, noise, a


def make_raw_batch(
    b: int = 4, seed: int = 0, tasks: list[str] | None = None, img: int = 64, h: int = H
) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(b, J, generator=g) * 0.3
    # a smooth chunk that depends on the state, so there is something to learn
    ramp = torch.linspace(0, 1, h)[None, :, None]
    action = state[:, None, :] + ramp * torch.randn(b, 1, J, generator=g) * 0.3
    return {
        "observation.images.front": torch.randint(0, 256, (b, 3, img, img), generator=g, dtype=torch.uint8),
        "observation.state": state,
        "action": action,
        "action_is_pad": torch.zeros(b, h, dtype=torch.bool),
        "task": tasks
        or [f"pick up the {c} cube" for c in ("red", "green", "blue", "yellow", "white", "black")[:b]]
        + ["x"] * max(0, b - 6),
    }


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def stats() -> dict:
    return make_stats()


# a small keypoint config of the cpu-demo backbone (8 keypoints per tap), for its tests
KP = {"vision_tokens": "keypoints", "keypoints": 8}


@pytest.fixture(scope="module")
def kp_stage1():
    """A stage-1 cpu-demo policy with keypoint tokens and its processor (one per test module)."""
    torch.manual_seed(0)
    cfg = get_preset("cpu-demo", backbone=KP)
    return APTPolicy(cfg), Processor.from_stats(cfg, make_stats())
