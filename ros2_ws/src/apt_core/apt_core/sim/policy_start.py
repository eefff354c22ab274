"""Policy starts: an episode that begins where a trained policy has taken the scene.

Scripted demonstrations all start at HOME and stay on the expert's path, so a policy trained on them
never sees the states its own mistakes lead to (a gripper shut a few cm beside the stroke's start,
an object nudged off its spot, a chain's second step begun from wherever the first ended); item 38
of docs/experiments.md found that more such demonstrations change nothing. A policy start is the
DAgger-style remedy (Ross et al. 2011; here the expert takes over rather than labelling every
state): after a reset, the policy follows the task's instruction in-process for a duration drawn
from the scene seed, then the clock restarts and the episode (and its recording) begins from that
state, so the expert's demonstration shows the way on from there.

`PolicyStart` is the hook the simulator node calls after each reset (`SimNode.start_hook`;
`apt-record-demos --policy-start CHECKPOINT`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from apt_core.sim.env import TabletopEnv
from apt_core.sim.evaluate import subtask_texts
from apt_core.types import ChunkPolicy

SEED_SALT = 0x57A7  # the draw's stream, apart from the scene's and the missed-grasp start's
SECONDS = (1.0, 10.0)  # default range of a policy start's duration [s]


@dataclass
class StartOutcome:
    """What the last policy start did: seconds the policy drove (0 = an ordinary start) and
    whether it finished the whole task in that time (then there is nothing left to demonstrate)."""

    seconds: float = 0.0
    completed: bool = False


def check_settings(share: float, seconds: tuple[float, float], execute_steps: int = 8) -> None:
    """Raise ValueError naming the bad setting of a PolicyStart (before any policy is loaded)."""
    if not (math.isfinite(share) and 0.0 <= share <= 1.0):
        raise ValueError(f"policy-start share must be in [0, 1], got {share}")
    lo, hi = (float(s) for s in seconds)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi):
        raise ValueError(f"policy-start seconds must be a range 0 < low <= high, got {seconds}")
    if execute_steps < 1:
        raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")


class PolicyStart:
    """Drives a reset env with `policy` for a duration drawn per scene seed, then restarts the clock.

    share: probability (per seed) of a policy start; the other episodes start as usual.
    seconds: (low, high) range the duration is drawn from, uniformly [s].
    execute_steps: control steps executed from each predicted chunk (as the policy node does).
    A chain's words reach the policy one subtask at a time, as the policy node gives them."""

    def __init__(
        self,
        policy: ChunkPolicy,
        share: float = 1.0,
        seconds: tuple[float, float] = SECONDS,
        execute_steps: int = 8,
    ) -> None:
        check_settings(share, seconds, execute_steps)
        self.policy, self.share, self.execute_steps = policy, float(share), execute_steps
        self.seconds = (float(seconds[0]), float(seconds[1]))
        self.last = StartOutcome()

    def draw(self, seed: int) -> float:
        """Seconds of policy driving for scene `seed` (0 = an ordinary start); depends only on the seed."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, SEED_SALT])
        if rng.random() >= self.share:
            return 0.0
        return float(rng.uniform(*self.seconds))

    def __call__(self, env: TabletopEnv, seed: int) -> StartOutcome:
        """Drive `env` (just reset for `seed`) and restart its clock; returns and keeps `last`."""
        task = env.task
        if task is None:
            raise RuntimeError("a policy start needs a reset environment")
        seconds = self.draw(seed)
        self.last = StartOutcome()
        if seconds <= 0.0:
            return self.last
        texts = subtask_texts(task)
        rate = float(env.contract.rate_hz)
        limit = max(1, round(seconds * rate))
        self.policy.reset()
        steps, done = 0, False
        obs = env.observation()
        while steps < limit and not done:
            chunk = np.asarray(self.policy.predict(obs, texts[min(env.subtask_progress(), len(texts) - 1)]))
            for a in chunk[: min(self.execute_steps, len(chunk))]:
                env.step(a)
                steps += 1
                done = env.success()
                if done or steps >= limit:
                    break
            obs = env.observation()
        env.restart_clock()
        self.last = StartOutcome(round(steps / rate, 3), bool(done))
        return self.last
