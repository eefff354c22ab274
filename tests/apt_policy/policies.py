"""Deterministic test policies for the node tests (a legitimate test double of the trained model).

`make_goal_policy(contract)` is passed to the node as `policy_factory:=policies:make_goal_policy`
(tests put this directory on PYTHONPATH). The policy moves the arm toward a goal chosen by the
instruction's first word at a bounded speed, optionally adding a per-chunk offset (to mimic a VLA's
chunk-to-chunk inconsistency, which stitching must smooth) and an inference delay. Options come from
the environment variable APT_TEST_POLICY (JSON): {"latency_s": 0.05, "offset": 0.03, "speed": 0.4}.
Instruction words: a goal name ("left", "right", "home"); "wander" always heads for whichever of
"left" and "right" is farther away, so it never settles (a task that stays active until stopped,
for queueing tests without timing races); "nan" returns NaN; "crash" raises;
"checkimage" asserts the camera image is the robot's 128x128 test pattern; "point" heads for home
with shoulder_pan at the x coordinate of the external goal (obs.extras["goal"], /apt/goal), or home.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from apt_core.contract import Contract
from apt_core.types import Observation

GOALS = {
    "left": [0.6, -0.4, 0.5, 0.2, 0.1, 0.0, 0.02],
    "right": [-0.5, -0.3, 0.4, -0.1, 0.2, 0.3, 0.0],
    "home": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
}


class GoalPolicy:
    accepts_goal = True  # "point" reads obs.extras["goal"]

    def __init__(self, joint_names: tuple[str, ...], chunk_length: int, rate_hz: float, opts: dict) -> None:
        self.joint_names, self.chunk_length, self.rate_hz = joint_names, chunk_length, rate_hz
        self.latency_s = float(opts.get("latency_s", 0.0))
        self.offset = float(opts.get("offset", 0.0))
        self.speed = float(opts.get("speed", 0.4))  # rad/s
        self.rng = np.random.default_rng(0)
        self.last_latency_s = 0.0

    def reset(self) -> None:
        self.rng = np.random.default_rng(0)

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        t0 = time.perf_counter()
        word = instruction.split()[0].lower()
        if word == "nan":
            return np.full((self.chunk_length, len(self.joint_names)), np.nan)
        if word == "crash":
            raise RuntimeError("test policy crash")
        img = next(iter(obs.images.values()))
        if img.shape != (128, 128, 3) or img.dtype != np.uint8:
            raise ValueError(f"unexpected image {img.shape} {img.dtype}")
        if word == "wander":
            q = obs.joint_positions
            dist = {w: np.abs(np.array(GOALS[w])[: len(q)] - q).max() for w in ("left", "right")}
            word = max(dist, key=dist.get)
        goal = np.array(GOALS.get(word, GOALS["home"]))[: len(self.joint_names)]
        if word == "point" and "goal" in obs.extras:
            goal[0] = float(obs.extras["goal"][0])
        q = obs.joint_positions
        steps = np.arange(1, self.chunk_length + 1)[:, None] / self.rate_hz
        d = goal - q
        chunk = q + np.sign(d) * np.minimum(np.abs(d), self.speed * steps)
        if self.offset:
            chunk = chunk + self.rng.normal(0, self.offset, size=(1, len(self.joint_names)))
        if self.latency_s:
            time.sleep(self.latency_s)
        self.last_latency_s = time.perf_counter() - t0
        return chunk


def make_goal_policy(contract: Contract) -> GoalPolicy:
    opts = json.loads(os.environ.get("APT_TEST_POLICY", "{}"))
    return GoalPolicy(contract.joint_names, contract.chunk_length, contract.rate_hz, opts)


def make_wrong_joints_policy(contract: Contract) -> GoalPolicy:
    """A policy trained for another robot: the node must refuse to start."""
    return GoalPolicy(("a", "b"), contract.chunk_length, contract.rate_hz, {})
