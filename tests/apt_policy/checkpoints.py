"""Tiny real checkpoints for the node tests: the model engineer's `debug` preset, untrained weights,
saved with the project's safetensors + JSON checkpoint writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_debug_checkpoint(out: Path, joint_names: tuple[str, ...] | None = None, **overrides: object) -> Path:
    """`overrides` are PolicyConfig fields on top of the preset (goal_dim=3, goal_input=True, ...)."""
    import torch

    from apt_core.model.checkpoint import save_checkpoint
    from apt_core.model.config import get_preset
    from apt_core.model.policy import APTPolicy
    from apt_core.model.processor import Processor

    torch.manual_seed(0)
    kw = {"joint_names": joint_names} if joint_names else {}
    kw.update(overrides)
    cfg = get_preset("debug", **kw)
    j = len(cfg.joint_names)
    # small action spread, so an untrained model asks for moves near the state (like a real policy)
    mean, std = np.zeros(j), np.full(j, 0.05)
    entry = {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "min": (mean - 0.15).tolist(),
        "max": (mean + 0.15).tolist(),
        "q01": (mean - 0.12).tolist(),
        "q99": (mean + 0.12).tolist(),
    }
    stats = {"observation.state": entry, "action": dict(entry)}
    return save_checkpoint(out, APTPolicy(cfg), Processor.from_stats(cfg, stats), {"step": 0})
