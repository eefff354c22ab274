"""Safety checks applied to every trajectory before it is published, and the observation watchdog.

Order of checks in `SafetyFilter.apply` (each names the joint and point it failed at):
1. NaN/Inf guard on the measured state and the trajectory: always reject.
2. Start-jump check: the first point must be within `max_start_jump` of where the arm is at the
   switch time (the runtime estimates that from the newest joint state and the executing plan);
   otherwise the controller would snap the arm there. Always reject.
3. Position, velocity and acceleration limits: `mode="clamp"` rewrites the trajectory step by step
   so that it respects them (velocity and acceleration limited per step, braking before position
   limits); `mode="reject"` refuses any trajectory that breaks one.
4. A final `verify()` of the result. Clamping can only fail to satisfy the limits when the start
   state itself is outside them; then the trajectory is rejected. So nothing that leaves this
   module breaks a limit: the property tests check exactly this.

Velocities and accelerations are judged on the published points: step velocity (p[k]-p[k-1])/dt,
the `velocities` field, and step acceleration (v[k]-v[k-1])/dt of the step velocities. No ROS imports.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from apt_core.runtime.stitching import Trajectory, velocities_from_positions

SAFETY_MODES = ("clamp", "reject")
_EPS = 1e-9


class SafetyViolation(RuntimeError):
    """A trajectory or state was refused; the message names the check, joint and point."""


class StartJumpViolation(SafetyViolation):
    """The arm is not where the plan starts (blocked, pushed, or another controller moved it).
    Unlike other refusals this is not retried: the runtime ends the task and holds."""


@dataclass(frozen=True)
class SafetyLimits:
    joint_names: tuple[str, ...]  # order of the columns of every array below
    position_lower: tuple[float, ...]  # lower position limit per joint [rad or m]
    position_upper: tuple[float, ...]  # upper position limit per joint [rad or m]
    velocity_max: tuple[float, ...]  # max |velocity| per joint [rad/s or m/s]
    acceleration_max: tuple[float, ...]  # max |acceleration| per joint [rad/s^2 or m/s^2]
    max_start_jump: float = 0.25  # max |first point - measured position| on any joint [rad or m]
    mode: str = "clamp"  # "clamp": rewrite to fit the limits | "reject": refuse violators

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        for name in ("position_lower", "position_upper", "velocity_max", "acceleration_max"):
            vals = getattr(self, name)
            if len(vals) != n:
                raise ValueError(f"SafetyLimits.{name} has {len(vals)} values for {n} joints")
            if not all(math.isfinite(v) for v in vals):
                raise ValueError(f"SafetyLimits.{name} must be finite: {vals}")
        for j, (lo, hi) in enumerate(zip(self.position_lower, self.position_upper)):
            if not lo < hi:
                raise ValueError(f"SafetyLimits: joint {self.joint_names[j]!r} lower {lo} >= upper {hi}")
        for name in ("velocity_max", "acceleration_max"):
            if any(v <= 0 for v in getattr(self, name)):
                raise ValueError(f"SafetyLimits.{name} must be > 0: {getattr(self, name)}")
        if not self.max_start_jump > 0:
            raise ValueError(f"SafetyLimits.max_start_jump must be > 0, got {self.max_start_jump}")
        if self.mode not in SAFETY_MODES:
            raise ValueError(f"SafetyLimits.mode {self.mode!r} not one of {SAFETY_MODES}")

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.position_lower, dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.position_upper, dtype=np.float64)

    @property
    def vmax(self) -> np.ndarray:
        return np.asarray(self.velocity_max, dtype=np.float64)

    @property
    def amax(self) -> np.ndarray:
        return np.asarray(self.acceleration_max, dtype=np.float64)

    @classmethod
    def uniform(
        cls,
        joint_names: tuple[str, ...] | list[str],
        lower: float = -math.pi,
        upper: float = math.pi,
        velocity: float = 1.5,
        acceleration: float = 5.0,
        **kw: object,
    ) -> SafetyLimits:
        """Same limits on every joint (config defaults, tests)."""
        n = len(joint_names)
        return cls(tuple(joint_names), (lower,) * n, (upper,) * n, (velocity,) * n, (acceleration,) * n, **kw)

    def intersect_urdf(self, urdf_path: str | Path) -> SafetyLimits:
        """Tighten limits with the URDF's <limit> tags (lower/upper/velocity); the stricter one wins."""
        urdf = read_urdf_limits(urdf_path)
        lo, hi, vm = list(self.position_lower), list(self.position_upper), list(self.velocity_max)
        for j, name in enumerate(self.joint_names):
            if name in urdf:
                ulo, uhi, uv = urdf[name]
                if ulo is not None and uhi is not None:
                    lo[j], hi[j] = max(lo[j], ulo), min(hi[j], uhi)
                if uv is not None and uv > 0:
                    vm[j] = min(vm[j], uv)
        return replace(self, position_lower=tuple(lo), position_upper=tuple(hi), velocity_max=tuple(vm))


def read_urdf_limits(urdf_path: str | Path) -> dict[str, tuple[float | None, float | None, float | None]]:
    """joint name -> (lower, upper, velocity) from a URDF's <limit> tags (None where absent).
    Continuous joints have no position limits."""
    p = Path(urdf_path)
    if not p.is_file():
        raise FileNotFoundError(f"URDF not found: {p}")
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{p}: not valid XML: {e}") from None
    out: dict[str, tuple[float | None, float | None, float | None]] = {}
    for joint in root.iter("joint"):
        lim = joint.find("limit")
        if lim is None or joint.get("type") in ("fixed", "floating", "planar"):
            continue

        def f(key: str, lim: ET.Element = lim) -> float | None:
            v = lim.get(key)
            return float(v) if v is not None else None

        lo, hi = (None, None) if joint.get("type") == "continuous" else (f("lower"), f("upper"))
        out[str(joint.get("name"))] = (lo, hi, f("velocity"))
    return out


@dataclass
class SafetyReport:
    """What the filter did to one trajectory (for status, diagnostics and tests)."""

    clamped: bool = False
    notes: list[str] = field(default_factory=list)


class SafetyFilter:
    """Checks (and in clamp mode rewrites) trajectories against SafetyLimits; see module docstring."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits

    def _names(self, j: int) -> str:
        return self.limits.joint_names[j]

    def check_finite(self, what: str, arr: np.ndarray) -> None:
        bad = ~np.isfinite(np.asarray(arr, dtype=np.float64))
        if bad.any():
            idx = np.argwhere(bad)[0]
            j = int(idx[-1])
            where = f" at point {int(idx[0])}" if bad.ndim == 2 else ""
            raise SafetyViolation(f"non-finite value in {what}{where}, joint {self._names(j)!r}")

    def apply(
        self,
        traj: Trajectory,
        measured: np.ndarray,
        v_start: np.ndarray | None = None,
        reference: str = "measured",
    ) -> tuple[Trajectory, SafetyReport]:
        """Return a trajectory that respects every limit, or raise SafetyViolation.

        traj: the stitched plan; its point 0 is the switch time. measured: (J,) the joint positions
        at the switch time (the runtime passes the measured state advanced along the executing
        plan to that time). v_start: velocity at point 0 (what is executing); zero when None.
        reference: how `measured` was obtained, for the error message.
        """
        lim = self.limits
        nj = len(lim.joint_names)
        measured = np.asarray(measured, dtype=np.float64)
        if measured.shape != (nj,):
            raise SafetyViolation(f"measured state has shape {measured.shape}, expected ({nj},)")
        if traj.positions.shape[1] != nj:
            raise SafetyViolation(f"trajectory has {traj.positions.shape[1]} joints, expected {nj}")
        self.check_finite("measured joint positions", measured)
        self.check_finite("trajectory positions", traj.positions)
        self.check_finite("trajectory velocities", traj.velocities)
        self.check_finite("trajectory times", traj.times[:, None])
        jump = np.abs(traj.positions[0] - measured)
        if (jump > lim.max_start_jump).any():
            j = int(np.argmax(jump))
            raise StartJumpViolation(
                f"start jump {jump[j]:.3f} > max_start_jump {lim.max_start_jump} on joint "
                f"{self._names(j)!r} ({reference}: {measured[j]:.3f}, first point {traj.positions[0, j]:.3f})"
            )
        report = SafetyReport()
        v0 = np.zeros(nj) if v_start is None else np.asarray(v_start, dtype=np.float64)
        if lim.mode == "reject":
            self.verify(traj, v0)
            return traj, report
        out = self._clamp(traj, v0, report)
        self.verify(out, v0)
        return out, report

    def _clamp(self, traj: Trajectory, v0: np.ndarray, report: SafetyReport) -> Trajectory:
        lim = self.limits
        t, want = traj.times, traj.positions
        p = want.copy()
        lo, hi, vmax, amax = lim.lower, lim.upper, lim.vmax, lim.amax
        # Point 0 is where the executing plan is; keep it (clipped into the limits, which only moves
        # it when the arm already sits outside them: then verify() rejects).
        p[0] = np.clip(want[0], lo, hi)
        v_prev = np.clip(v0, -vmax, vmax)
        for k in range(1, p.shape[0]):
            h = t[k] - t[k - 1]
            v = (want[k] - p[k - 1]) / h
            v = np.clip(v, v_prev - amax * h, v_prev + amax * h)
            v = np.clip(v, -vmax, vmax)
            # Brake before a position limit: the largest speed from which we can still stop in time
            # with the acceleration limit (v^2 <= 2 a d, discretised conservatively with one step).
            d_up = np.maximum(hi - p[k - 1], 0.0)
            d_lo = np.maximum(p[k - 1] - lo, 0.0)
            v_up = np.maximum(np.sqrt(2 * amax * d_up + (amax * h) ** 2) - amax * h, 0.0)
            v_lo = np.maximum(np.sqrt(2 * amax * d_lo + (amax * h) ** 2) - amax * h, 0.0)
            v = np.clip(v, -v_lo, v_up)
            # The braking clip must not itself exceed the acceleration bound.
            v = np.clip(v, v_prev - amax * h, v_prev + amax * h)
            p[k] = np.clip(p[k - 1] + v * h, lo, hi)
            v_prev = (p[k] - p[k - 1]) / h
        if not np.allclose(p, want, atol=1e-9):
            diff = np.abs(p - want)
            k, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
            report.clamped = True
            report.notes.append(
                f"clamped up to {diff[k, j]:.4f} on joint {self._names(int(j))!r} at point {int(k)}"
            )
        vel = _consistent_velocities(t, p, v0)
        vel = np.clip(vel, -vmax, vmax)
        return Trajectory(t.copy(), p, vel)

    def verify(self, traj: Trajectory, v_start: np.ndarray | None = None) -> None:
        """Raise SafetyViolation if any point breaks a position, velocity or acceleration limit."""
        lim = self.limits
        t, p = traj.times, traj.positions
        lo, hi, vmax, amax = lim.lower, lim.upper, lim.vmax, lim.amax
        out = (p < lo - _EPS) | (p > hi + _EPS)
        if out.any():
            k, j = (int(x) for x in np.argwhere(out)[0])
            raise SafetyViolation(
                f"position {p[k, j]:.4f} outside [{lo[j]:.4f}, {hi[j]:.4f}] on joint {self._names(j)!r} at point {k}"
            )
        if (np.abs(traj.velocities) > vmax + _EPS).any():
            k, j = (int(x) for x in np.argwhere(np.abs(traj.velocities) > vmax + _EPS)[0])
            raise SafetyViolation(
                f"velocity field {traj.velocities[k, j]:.4f} exceeds {vmax[j]:.4f} on joint {self._names(j)!r} at point {k}"
            )
        if p.shape[0] < 2:
            return
        h = np.diff(t)[:, None]
        vs = np.diff(p, axis=0) / h  # (N-1, J) step velocities
        bad = np.abs(vs) > vmax * (1 + 1e-6) + _EPS
        if bad.any():
            k, j = (int(x) for x in np.argwhere(bad)[0])
            raise SafetyViolation(
                f"velocity {vs[k, j]:.4f} exceeds {vmax[j]:.4f} on joint {self._names(j)!r} between points {k} and {k + 1}"
            )
        v0 = (
            np.zeros(p.shape[1])
            if v_start is None
            else np.clip(np.asarray(v_start, dtype=np.float64), -vmax, vmax)
        )
        acc = np.diff(np.vstack([v0[None], vs]), axis=0) / h
        bad = np.abs(acc) > amax * (1 + 1e-6) + _EPS
        if bad.any():
            k, j = (int(x) for x in np.argwhere(bad)[0])
            raise SafetyViolation(
                f"acceleration {acc[k, j]:.3f} exceeds {amax[j]:.3f} on joint {self._names(j)!r} at point {k + 1}"
            )


def _consistent_velocities(t: np.ndarray, p: np.ndarray, v0: np.ndarray) -> np.ndarray:
    """Velocities for possibly uneven times: averages of adjacent step velocities, v0 first, 0 last."""
    if p.shape[0] == 1:
        return np.zeros_like(p)
    h = np.diff(t)
    if np.allclose(h, h[0]):
        v = velocities_from_positions(p, float(h[0]), v_start=v0)
        return v
    vs = np.diff(p, axis=0) / h[:, None]
    v = np.zeros_like(p)
    v[0] = v0
    v[1:-1] = 0.5 * (vs[1:] + vs[:-1])
    return v


class Watchdog:
    """Stale-observation watchdog: every input must have arrived within its bound.

    `feed(name, t)` records the arrival time of an input (node clock); `stale(now)` lists the inputs
    that are missing or older than `max_age_s`, so the node can hold position and say why.
    """

    def __init__(self, max_age_s: dict[str, float]) -> None:
        for name, age in max_age_s.items():
            if not age > 0:
                raise ValueError(f"Watchdog bound for {name!r} must be > 0, got {age}")
        self.max_age_s = dict(max_age_s)
        self._last: dict[str, float] = {}

    def feed(self, name: str, t: float) -> None:
        if name not in self.max_age_s:
            raise KeyError(f"Watchdog has no input named {name!r}; known: {sorted(self.max_age_s)}")
        self._last[name] = t

    def age(self, name: str, now: float) -> float:
        """Age of input `name` [s]; -1 when it never arrived."""
        t = self._last.get(name)
        return -1.0 if t is None else max(0.0, now - t)

    def stale(self, now: float) -> list[str]:
        """Human-readable reasons, empty when every input is fresh."""
        out = []
        for name, bound in self.max_age_s.items():
            a = self.age(name, now)
            if a < 0:
                out.append(f"no {name} received")
            elif a > bound:
                out.append(f"{name} is {a:.2f} s old (bound {bound:.2f} s)")
        return out
