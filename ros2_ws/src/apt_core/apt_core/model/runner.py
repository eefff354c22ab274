"""PolicyRunner: a checkpoint served as an `apt_core.types.ChunkPolicy`.

predict(obs, instruction) -> (H, J) ABSOLUTE joint targets for stamp + dt .. stamp + H*dt.
The processor path is the one used in training; the backbone runs once per chunk and its tapped
features are cached over the denoising steps. Noise comes from a seeded generator (reset() restarts
it), so a given checkpoint, seed and observation sequence always produce the same chunks.
`noise_scale` multiplies that noise (a sampling temperature): 1 samples the trained distribution,
0 starts every chunk from the zero noise, the same chunk for the same input whatever the seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..types import Observation
from .checkpoint import load_checkpoint
from .policy import APTPolicy
from .processor import Processor


def check_noise_scale(noise_scale: float) -> float:
    """`noise_scale` as a float; ValueError unless it is finite and >= 0."""
    if not (np.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
    return float(noise_scale)


class PolicyRunner:
    def __init__(
        self,
        policy: APTPolicy,
        processor: Processor,
        meta: dict,
        device: str = "cpu",
        num_steps: int | None = None,
        seed: int = 0,
        noise_scale: float = 1.0,
    ) -> None:
        self.noise_scale = check_noise_scale(noise_scale)
        cfg = policy.cfg
        self.policy, self.processor, self.meta = policy.eval(), processor, meta
        self.device = torch.device(device)
        self.joint_names = tuple(cfg.joint_names) or tuple(f"joint_{i}" for i in range(cfg.state_dim))
        self.chunk_length = cfg.chunk_length
        self.rate_hz = float(cfg.rate_hz)
        self.action_space = cfg.action_space
        self.num_steps = num_steps or cfg.objective.inference_steps
        self.seed = seed
        self.last_latency_s = float("nan")
        self.reset()

    @property
    def accepts_goal(self) -> bool:
        """Whether an external goal in obs.extras["goal"] changes the actions (cfg.goal_input)."""
        return bool(self.policy.cfg.goal_input)

    def reset(self) -> None:
        """Restart the noise generator (call at the start of every episode)."""
        self._gen = torch.Generator().manual_seed(self.seed)

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        if self.action_space == "ee_pose":
            raise NotImplementedError(
                "this checkpoint predicts end-effector poses (action_space 'ee_pose'); PolicyRunner returns "
                "joint targets only: convert with the runtime's IK adapter (apt_core.runtime)"
            )
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        t0 = time.perf_counter()
        hist = obs.extras.get("action_history") if obs.extras else None
        batch = self.processor.process_observation(obs, instruction, action_history=hist)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        cfg = self.policy.cfg
        goal = obs.extras.get("goal") if obs.extras else None
        if goal is not None and cfg.goal_input:  # a given goal (an oracle) replaces the head's
            batch["goal_override"] = (
                torch.as_tensor(np.asarray(goal, np.float32)).reshape(1, 3).to(self.device)
            )
        noise = torch.randn((1, cfg.chunk_length, cfg.action_dim), generator=self._gen) * self.noise_scale
        with torch.inference_mode():
            a = self.policy.sample_actions(batch, noise=noise, num_steps=self.num_steps)
            a = self.processor.unnormalize_actions(a)[0].cpu()  # (H, A)
        if self.action_space == "joint_delta":
            a = a + batch["state_raw"][0].cpu()[None]  # deltas are relative to the current state
        out = a.double().numpy()
        if not np.isfinite(out).all():
            raise FloatingPointError("policy produced non-finite actions")
        self.last_latency_s = time.perf_counter() - t0
        return out


def load_runner(
    checkpoint_dir: str | Path,
    device: str = "cpu",
    num_steps: int | None = None,
    seed: int = 0,
    expect: dict | None = None,
    noise_scale: float = 1.0,
) -> PolicyRunner:
    """Load a checkpoint as a ChunkPolicy. `expect` (e.g. {"joint_names": [...]}) is checked first."""
    policy, processor, meta = load_checkpoint(checkpoint_dir, device=device, expect=expect)
    return PolicyRunner(
        policy, processor, meta, device=device, num_steps=num_steps, seed=seed, noise_scale=noise_scale
    )
