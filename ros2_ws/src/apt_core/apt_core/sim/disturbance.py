"""Recording noise in the style of DART (Laskey et al., 2017): disturb the arm, keep clean labels.

A policy trained only on an expert's perfect trajectories never sees the states its own small errors
lead to, and does not know how to come back from them. DART injects noise into the *executed*
actions while demonstrating, and trains on the expert's *intended* actions.

Here the noise is an Ornstein-Uhlenbeck offset added to the arm joints' actuator setpoints inside
the simulator, beneath the controller: the commanded trajectory (the recorded action label) stays
the expert's plan, while the arm really moves off it (physics) and the camera and /joint_states show
it off the plan. The expert's plans are indexed by time, so the label at a disturbed state is the
plan's next point: the way back. The gripper is never disturbed.

Per control period dt, for each of the 6 arm joints:
    x <- a x + std sqrt(1 - a^2) n,   a = exp(-dt / tau),   n ~ N(0, 1)
so the offset is a smooth random drift with stationary standard deviation `std` [rad] and
correlation time `tau` [s]. It starts at zero at every reset and is seeded by the scene seed.
"""

from __future__ import annotations

import math

import numpy as np

N_ARM = 6
MAX_STD = 0.2  # [rad]; beyond this the expert fails most demos (docs/benchmarks.md: 55% at 0.05)


class JointDisturbance:
    """Ornstein-Uhlenbeck setpoint offsets for the arm joints (see module docstring)."""

    def __init__(self, std: float, tau: float = 0.5, dt: float = 0.1) -> None:
        if not (math.isfinite(std) and 0.0 <= std <= MAX_STD):
            raise ValueError(f"disturbance std must be in [0, {MAX_STD}] rad, got {std}")
        if not (math.isfinite(tau) and tau > 0.0) or not (math.isfinite(dt) and dt > 0.0):
            raise ValueError(f"disturbance tau and dt must be > 0 s, got tau={tau}, dt={dt}")
        self.std, self.tau, self.dt = float(std), float(tau), float(dt)
        self._a = math.exp(-self.dt / self.tau)
        self._step_std = self.std * math.sqrt(1.0 - self._a**2)  # innovation std per control period
        self.reset(0)

    def reset(self, seed: int) -> None:
        """Zero offset at time 0; the same seed gives the same offsets."""
        self._rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xD157])
        self._x = np.zeros(N_ARM)
        self._k = 0  # control periods drawn so far

    def at(self, t: float) -> np.ndarray:
        """(6,) offset [rad] for sim time t [s] (held over each control period; t never goes back)."""
        k = int(math.floor(t / self.dt + 1e-9))
        while self._k < k:
            self._x = self._a * self._x + self._step_std * self._rng.standard_normal(N_ARM)
            self._k += 1
        return self._x.copy()
