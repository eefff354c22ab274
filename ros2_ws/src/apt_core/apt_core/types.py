"""Plain data types shared by the simulator, the runtime, evaluation and the ROS nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Observation:
    """One synchronised observation, ROS-free.

    images: camera name (contract `cameras[].name`) -> (H, W, 3) uint8 RGB.
    joint_positions: (J,) float64 in the contract's joint order [rad, or m for prismatic joints].
    stamp: time of the observation [s] (sim time or ROS time).
    """

    images: dict[str, np.ndarray]
    joint_positions: np.ndarray
    stamp: float = 0.0
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class ChunkPolicy(Protocol):
    """Anything that maps an observation and an instruction to a chunk of joint targets.

    Implemented by the trained APT policy (`apt_core.model.runner`), the scripted expert, and test
    policies. Returns (H, J) absolute joint-position targets for times stamp + dt, ..., stamp + H*dt.
    """

    joint_names: tuple[str, ...]
    chunk_length: int
    rate_hz: float

    def reset(self) -> None: ...

    def predict(self, obs: Observation, instruction: str) -> np.ndarray: ...


class PolicyWrapper:
    """Base of ChunkPolicy wrappers (diagnostics, test probes): takes the wrapped policy's joint
    names, chunk length and rate, and resets it; subclasses override `predict`."""

    def __init__(self, policy: ChunkPolicy) -> None:
        self.policy = policy
        self.joint_names, self.chunk_length, self.rate_hz = (
            policy.joint_names,
            policy.chunk_length,
            policy.rate_hz,
        )

    def reset(self) -> None:
        self.policy.reset()

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        return self.policy.predict(obs, instruction)
