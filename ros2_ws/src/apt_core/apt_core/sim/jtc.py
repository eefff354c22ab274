"""TrajectoryFollower: the semantics of ros2_control's JointTrajectoryController, ROS-free.

What it reproduces (joint_trajectory_controller, "replace" mode):
- a trajectory is a list of points (time_from_start [s], positions[, velocities]) for named joints,
  in any order and possibly a subset of the controlled joints (the others keep their setpoint);
- its start time is the message's header stamp, or "now" when the stamp is zero;
- a new trajectory replaces the rest of the current one from its start time on (before its start
  the old one keeps running);
- between the start state and the first point, and between points, positions are interpolated:
  linear, or cubic Hermite when every point carries velocities;
- after the last point the last positions are held.
Invalid trajectories (unknown or duplicate joints, no points, NaN/inf, wrong lengths, times not
strictly increasing, negative times) raise TrajectoryError naming what was wrong; the follower's
state is left untouched, so the arm holds its course.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the follower itself needs no simulator
    from apt_core.sim.env import TabletopEnv

# A follower driving a simulator is sampled every this many physics steps (5 x 2 ms = 100 Hz, like a
# ros2_control update loop).
PHYSICS_PER_SAMPLE = 5


class TrajectoryError(ValueError):
    """A rejected trajectory; the message says what was wrong and where (point index, joint)."""


@dataclass(frozen=True)
class TrajectoryPoint:
    time_from_start: float  # [s] relative to the trajectory's start time
    positions: tuple[float, ...]  # one per joint in the trajectory's joint_names order
    velocities: tuple[float, ...] = ()  # empty, or one per joint (enables cubic interpolation)


@dataclass
class _Active:
    start: float  # absolute start time [s]
    times: np.ndarray  # (P+1,) absolute times, index 0 = start state
    pos: np.ndarray  # (P+1, J) full-joint positions
    vel: np.ndarray | None  # (P+1, J) or None for linear interpolation


class TrajectoryFollower:
    """Samples setpoints for `joint_names` over time from the latest accepted trajectory."""

    def __init__(self, joint_names: Sequence[str], initial: np.ndarray) -> None:
        self.joint_names = tuple(joint_names)
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        init = np.asarray(initial, dtype=np.float64).reshape(-1)
        if init.shape != (len(self.joint_names),):
            raise ValueError(f"initial must have {len(self.joint_names)} values, got {init.shape}")
        self._hold = init.copy()
        self._queue: list[_Active] = []  # trajectories by start time; later ones cut earlier ones

    def hold(self, positions: np.ndarray) -> None:
        """Drop every trajectory and hold `positions` (e.g. after a reset)."""
        self._hold = np.asarray(positions, dtype=np.float64).copy()
        self._queue.clear()

    def validate(
        self, joint_names: Sequence[str], points: Sequence[TrajectoryPoint]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Check a trajectory; returns (times (P,), positions (P, n), velocities (P, n) | None)."""
        names = list(joint_names)
        if not names:
            raise TrajectoryError("trajectory has no joint_names")
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise TrajectoryError(f"unknown joint(s) {unknown}; this controller has {list(self.joint_names)}")
        if len(set(names)) != len(names):
            raise TrajectoryError(f"duplicate joint names in {names}")
        if not points:
            raise TrajectoryError("trajectory has no points")
        n = len(names)
        times = np.empty(len(points))
        pos = np.empty((len(points), n))
        with_vel = all(len(p.velocities) > 0 for p in points)
        vel = np.empty((len(points), n)) if with_vel else None
        for i, p in enumerate(points):
            t = float(p.time_from_start)
            if not math.isfinite(t) or t < 0:
                raise TrajectoryError(f"point {i}: time_from_start {t} must be finite and >= 0")
            if i > 0 and t <= times[i - 1]:
                raise TrajectoryError(
                    f"point {i}: time_from_start {t} not after point {i - 1} ({times[i - 1]}); times must increase"
                )
            if len(p.positions) != n:
                raise TrajectoryError(f"point {i}: {len(p.positions)} positions for {n} joints")
            if not np.all(np.isfinite(p.positions)):
                bad = [names[j] for j, v in enumerate(p.positions) if not math.isfinite(v)]
                raise TrajectoryError(f"point {i}: non-finite position for joint(s) {bad}")
            if p.velocities and len(p.velocities) != n:
                raise TrajectoryError(f"point {i}: {len(p.velocities)} velocities for {n} joints")
            if p.velocities and not np.all(np.isfinite(p.velocities)):
                raise TrajectoryError(f"point {i}: non-finite velocity")
            times[i] = t
            pos[i] = p.positions
            if vel is not None:
                vel[i] = p.velocities
        return times, pos, vel

    def set_trajectory(
        self, joint_names: Sequence[str], points: Sequence[TrajectoryPoint], start_time: float
    ) -> None:
        """Accept a trajectory starting at `start_time` [s] (raises TrajectoryError, state unchanged)."""
        times, pos, vel = self.validate(joint_names, points)
        cols = [self._index[n] for n in joint_names]
        start = float(start_time)
        start_state = self.sample(start)
        full = np.repeat(start_state[None], len(points) + 1, axis=0)
        full[1:, cols] = pos  # joints not named keep their setpoint at the start time
        full_vel = None
        if vel is not None:
            full_vel = np.zeros_like(full)
            full_vel[1:, cols] = vel
        tr = _Active(start, np.concatenate([[start], start + times]), full, full_vel)
        # Replace: everything from this trajectory's start on belongs to it.
        self._queue = [a for a in self._queue if a.start < start] + [tr]

    def _active_at(self, t: float) -> _Active | None:
        active = None
        for a in self._queue:
            if a.start <= t:
                active = a
        return active

    def sample(self, t: float) -> np.ndarray:
        """Setpoint (J,) at absolute time t [s]."""
        a = self._active_at(t)
        if a is None:
            return self._hold.copy()
        if t >= a.times[-1]:
            return a.pos[-1].copy()
        k = int(np.searchsorted(a.times, t, side="right")) - 1
        t0, t1 = a.times[k], a.times[k + 1]
        s = (t - t0) / (t1 - t0)
        if a.vel is None:
            return a.pos[k] + s * (a.pos[k + 1] - a.pos[k])
        h = t1 - t0  # cubic Hermite between (p0, v0) and (p1, v1)
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
        h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
        return h00 * a.pos[k] + h10 * h * a.vel[k] + h01 * a.pos[k + 1] + h11 * h * a.vel[k + 1]

    def prune(self, t: float) -> None:
        """Forget trajectories fully superseded before time t (keeps memory bounded)."""
        a = self._active_at(t)
        if a is not None:
            self._queue = [x for x in self._queue if x.start >= a.start]

    def active(self, t: float) -> bool:
        """True while a trajectory is still moving at time t."""
        a = self._active_at(t)
        return a is not None and t < a.times[-1]


def follow(env: TabletopEnv, follower: TrajectoryFollower, n_physics: int) -> None:
    """Advance a simulator (`apt_core.sim.env.TabletopEnv`) `n_physics` physics steps tracking
    `follower`: the setpoint is sampled every PHYSICS_PER_SAMPLE steps at the end of each sample
    interval and held over it. apt_sim's node runs a control period this way, and so does the
    in-process runtime loop (`apt_core.sim.closed_loop`)."""
    for i in range(0, n_physics, PHYSICS_PER_SAMPLE):
        k = min(PHYSICS_PER_SAMPLE, n_physics - i)
        env.step_physics(follower.sample(env.time + k * env.physics_dt), k)
    follower.prune(env.time)
