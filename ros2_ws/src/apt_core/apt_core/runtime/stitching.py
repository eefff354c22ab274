"""Chunk stitching: temporal ensembling and a real-time-chunking (RTC) style blend.

A policy returns chunks of H absolute joint targets for times `stamp + dt * (1..H)`. Inference takes
time, so when a chunk arrives the robot is already executing the previous one. Publishing the new
chunk as-is makes a JointTrajectoryController jump (in position and velocity) at every boundary:
the robot jerks or steps back. The stitcher keeps the executing plan and builds each new plan so that

1. it starts exactly at the executing plan's position and velocity at the switch time t0,
2. (ensembling, as in ACT and the APT release) each future time step averages the predictions of the
   last `ensemble_chunks` chunks that cover it, with exponential weights `exp(-k * age)`,
3. (RTC blend) the first `blend_steps` steps ramp from the executing plan to the new prediction
   (weights follow a smooth cosine ramp), so the new chunk "starts from what is being executed".

All times are absolute seconds on one clock (the node's clock). No ROS imports.

    executing plan  ----------\
                               >-- blend (t0 .. t0 + blend) --> new chunk (ensembled) ----->
    new chunk       ~~~~~~~~~~/
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

STITCH_METHODS = ("none", "ensemble", "rtc", "ensemble+rtc")


@dataclass(frozen=True)
class StitchConfig:
    dt: float  # control period of chunk steps [s] (contract rate_hz inverted)
    method: str = "ensemble+rtc"  # one of STITCH_METHODS; "none" publishes raw chunks (for comparison)
    ensemble_chunks: int = 4  # chunks averaged per time step (the APT release uses 4)
    ensemble_decay: float = 0.1  # k in exp(-k * age_steps): newer chunks weigh slightly less (ACT)
    blend_steps: int = 4  # steps over which a new plan ramps in from the executing plan (RTC)
    horizon_steps: int = 0  # points per published trajectory; 0 = as many as the newest chunk covers

    def __post_init__(self) -> None:
        if not self.dt > 0:
            raise ValueError(f"StitchConfig.dt must be > 0, got {self.dt}")
        if self.method not in STITCH_METHODS:
            raise ValueError(f"StitchConfig.method {self.method!r} not one of {STITCH_METHODS}")
        if self.ensemble_chunks < 1:
            raise ValueError(f"StitchConfig.ensemble_chunks must be >= 1, got {self.ensemble_chunks}")
        if self.ensemble_decay < 0:
            raise ValueError(f"StitchConfig.ensemble_decay must be >= 0, got {self.ensemble_decay}")
        if self.blend_steps < 0:
            raise ValueError(f"StitchConfig.blend_steps must be >= 0, got {self.blend_steps}")
        if self.horizon_steps < 0:
            raise ValueError(f"StitchConfig.horizon_steps must be >= 0, got {self.horizon_steps}")


@dataclass(frozen=True)
class Trajectory:
    """A joint trajectory on absolute times: what the controller is asked to follow.

    times: (N,) absolute seconds, strictly increasing. positions/velocities: (N, J).
    """

    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray

    def __post_init__(self) -> None:
        t, p, v = self.times, self.positions, self.velocities
        if t.ndim != 1 or p.ndim != 2 or p.shape != v.shape or p.shape[0] != t.shape[0]:
            raise ValueError(f"Trajectory shapes disagree: times {t.shape}, pos {p.shape}, vel {v.shape}")
        if t.shape[0] < 1:
            raise ValueError("Trajectory needs at least one point")
        if t.shape[0] > 1 and not np.all(np.diff(t) > 0):
            raise ValueError("Trajectory times must be strictly increasing")

    @property
    def start(self) -> float:
        return float(self.times[0])

    @property
    def end(self) -> float:
        return float(self.times[-1])

    def sample(self, t: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Position and velocity at absolute time(s) t: cubic Hermite between points (what JTC does
        with position+velocity points); held at the ends (before start: first point; after end: last
        point with zero velocity)."""
        ts = np.atleast_1d(np.asarray(t, dtype=np.float64))
        tm, p, v = self.times, self.positions, self.velocities
        if tm.shape[0] == 1:
            pos = np.repeat(p, ts.shape[0], axis=0)
            vel = np.where((ts == tm[0])[:, None], v, 0.0)
        else:
            i = np.clip(np.searchsorted(tm, ts, side="right") - 1, 0, tm.shape[0] - 2)  # (N,) segment
            h = (tm[i + 1] - tm[i])[:, None]
            s = np.clip((ts[:, None] - tm[i][:, None]) / h, 0.0, 1.0)
            p0, p1, m0, m1 = p[i], p[i + 1], v[i] * h, v[i + 1] * h
            pos = (2 * s**3 - 3 * s**2 + 1) * p0 + (s**3 - 2 * s**2 + s) * m0
            pos += (-2 * s**3 + 3 * s**2) * p1 + (s**3 - s**2) * m1
            vel = ((6 * s**2 - 6 * s) * p0 + (3 * s**2 - 4 * s + 1) * m0) / h
            vel += ((-6 * s**2 + 6 * s) * p1 + (3 * s**2 - 2 * s) * m1) / h
            # held at the ends: before the start at the first point at rest, after the end at the last
            before, after = ts < tm[0], ts > tm[-1]
            pos[before], vel[before] = p[0], 0.0
            pos[after], vel[after] = p[-1], 0.0
        if np.ndim(t) == 0:
            return pos[0], vel[0]
        return pos, vel


def velocities_from_positions(
    positions: np.ndarray, dt: float, v_start: np.ndarray | None = None
) -> np.ndarray:
    """Velocities consistent with equally spaced positions (N, J).

    Interior points: central differences (the derivative of the interpolating parabola), so the
    velocity field never exceeds the largest neighbouring step velocity. First point: `v_start` when
    given (continuity with what is executing), else a forward difference. Last point: zero, so a
    trajectory that is not replaced in time ends at rest instead of being cut at speed.
    """
    p = np.asarray(positions, dtype=np.float64)
    v = np.zeros_like(p)
    if p.shape[0] >= 3:
        v[1:-1] = (p[2:] - p[:-2]) / (2 * dt)
    if p.shape[0] >= 2:
        v[0] = v_start if v_start is not None else (p[1] - p[0]) / dt
    return v


class ChunkStitcher:
    """Turns a stream of chunks into a stream of smooth, continuous plans (see module docstring)."""

    def __init__(self, cfg: StitchConfig) -> None:
        self.cfg = cfg
        self._chunks: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=cfg.ensemble_chunks)
        self.plan: Trajectory | None = None  # the plan most recently handed to the controller

    def reset(self) -> None:
        """Forget chunks and the executing plan (new task, stop, hold)."""
        self._chunks.clear()
        self.plan = None

    def set_plan(self, plan: Trajectory | None) -> None:
        """Tell the stitcher what is executing now (e.g. a hold trajectory, or a safety-clamped plan)."""
        self.plan = plan

    def add_chunk(self, stamp: float, chunk: np.ndarray) -> None:
        """Register a chunk whose row i is the target for time `stamp + dt * (i + 1)`."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[0] < 1:
            raise ValueError(f"chunk must be (H, J), got shape {chunk.shape}")
        if self._chunks and self._chunks[-1][1].shape[1] != chunk.shape[1]:
            self._chunks.clear()
        times = stamp + self.cfg.dt * np.arange(1, chunk.shape[0] + 1)
        self._chunks.append((times, chunk))

    def _ensemble(self, grid: np.ndarray) -> np.ndarray:
        """Weighted average over stored chunks at grid times; each chunk counts where it covers t."""
        use = list(self._chunks) if "ensemble" in self.cfg.method else [self._chunks[-1]]
        num = np.zeros((grid.shape[0], use[-1][1].shape[1]))
        den = np.zeros((grid.shape[0], 1))
        newest_start = use[-1][0][0]
        for times, chunk in use:
            # age in steps relative to the newest chunk: oldest gets the largest weight (ACT's choice:
            # it favours consistency of what was already committed to).
            age = (newest_start - times[0]) / self.cfg.dt
            w = np.exp(self.cfg.ensemble_decay * age) if "ensemble" in self.cfg.method else 1.0
            # covered: from the chunk's observation time (one step before its first target) to its end
            cover = (grid >= times[0] - self.cfg.dt - 1e-9) & (grid <= times[-1] + 1e-9)
            if not cover.any():
                continue
            # Fade each chunk out over its last `taper` steps: a chunk that simply stopped counting at
            # its end would make the average step there (the velocity jump moved into the plan).
            taper = max(1, min(4, chunk.shape[0] // 2)) * self.cfg.dt
            fade = np.clip((times[-1] - grid) / taper, 1e-6, 1.0)[:, None]
            vals = np.stack([np.interp(grid, times, chunk[:, j]) for j in range(chunk.shape[1])], axis=1)
            num[cover] += (w * fade * vals)[cover]
            den[cover] += (w * fade)[cover]
        newest_t, newest = use[-1]
        # Outside every chunk (before the newest's first target) fall back on the newest chunk's ends.
        fallback = np.stack([np.interp(grid, newest_t, newest[:, j]) for j in range(newest.shape[1])], 1)
        return np.where(den > 0, num / np.maximum(den, 1e-12), fallback)

    def stitch(self, t0: float, measured: np.ndarray | None = None) -> Trajectory:
        """Build the plan that starts at absolute time t0 (when the controller will switch to it).

        The plan starts at the executing plan's state at t0 (or `measured` at rest when nothing is
        executing) and follows the ensembled chunks, blended in over `blend_steps` steps.
        """
        if not self._chunks:
            raise RuntimeError("stitch() called before any chunk was added")
        dt = self.cfg.dt
        newest_t, newest = self._chunks[-1]
        n = self.cfg.horizon_steps or max(1, int(np.floor((newest_t[-1] - t0) / dt + 1e-9)) + 1)
        grid = t0 + dt * np.arange(n)  # (N,) point 0 is the switch time
        target = self._ensemble(grid)  # (N, J)
        if self.plan is not None and self.plan.positions.shape[1] == target.shape[1]:
            p_exec, v_exec = self.plan.sample(grid)
            p_prev, _ = self.plan.sample(t0 - dt)
            v0 = v_exec[0]
        elif measured is not None:
            p_exec = np.broadcast_to(np.asarray(measured, dtype=np.float64), target.shape)
            p_prev, v0 = p_exec[0], np.zeros(target.shape[1])
        else:
            p_exec, p_prev, v0 = target, target[0], None
        if self.cfg.method == "none":
            pos = target.copy()
            vel = velocities_from_positions(pos, dt)
            traj = Trajectory(grid, pos, vel)
            self.plan = traj
            return traj
        b = self.cfg.blend_steps if "rtc" in self.cfg.method else 1
        k = np.arange(n, dtype=np.float64)[:, None]
        # Smooth ramp w: 0 at t0 (exactly the executing plan), 1 after b steps; a cosine ramp has zero
        # slope at both ends, so it adds no velocity step of its own.
        w = np.where(k >= b, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(k / max(b, 1), 0, 1)))
        pos = (1 - w) * p_exec + w * target
        pos[0] = p_exec[0]
        ext = np.vstack([p_prev[None], pos])  # one point before t0 for a central difference at t0
        vel = velocities_from_positions(ext, dt)[1:]
        if v0 is not None:
            vel[0] = v0
        if n == 1:
            vel[0] = 0.0
        traj = Trajectory(grid, pos, vel)
        self.plan = traj
        return traj


def hold_trajectory(t0: float, position: np.ndarray, duration: float = 0.5) -> Trajectory:
    """A two-point trajectory that holds `position` at rest from t0 (stop, watchdog, rejection)."""
    p = np.asarray(position, dtype=np.float64)
    return Trajectory(np.array([t0, t0 + duration]), np.stack([p, p]), np.zeros((2, p.shape[0])))
