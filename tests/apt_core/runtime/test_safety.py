"""Safety filter: property tests that nothing leaving the filter breaks a limit; guards; watchdog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apt_core.runtime.safety import SafetyFilter, SafetyLimits, SafetyViolation, Watchdog, read_urdf_limits
from apt_core.runtime.stitching import Trajectory, velocities_from_positions

URDF = Path(__file__).parent / "assets" / "arm6.urdf"
NAMES = ("a", "b", "c")
DT = 0.1


def _limits(mode: str = "clamp") -> SafetyLimits:
    return SafetyLimits(
        NAMES,
        (-1.0, -2.0, 0.0),
        (1.0, 2.0, 0.04),
        (1.0, 2.0, 0.1),
        (4.0, 8.0, 1.0),
        max_start_jump=0.3,
        mode=mode,
    )


def _traj(points: np.ndarray, t0: float = 0.0) -> Trajectory:
    return Trajectory(t0 + DT * np.arange(points.shape[0]), points, velocities_from_positions(points, DT))


def _assert_within(traj: Trajectory, lim: SafetyLimits, v0: np.ndarray) -> None:
    p = traj.positions
    assert np.all(p >= lim.lower - 1e-9) and np.all(p <= lim.upper + 1e-9)
    assert np.all(np.abs(traj.velocities) <= lim.vmax + 1e-9)
    vs = np.diff(p, axis=0) / DT
    assert np.all(np.abs(vs) <= lim.vmax * (1 + 1e-6) + 1e-9)
    acc = np.diff(np.vstack([v0[None], vs]), axis=0) / DT
    assert np.all(np.abs(acc) <= lim.amax * (1 + 1e-6) + 1e-9)


finite = st.floats(-3.0, 3.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 24),
    scale=st.floats(0.0, 3.0),
    start=st.lists(st.floats(-0.9, 0.9), min_size=3, max_size=3),
    v0=st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
    mode=st.sampled_from(["clamp", "reject"]),
)
def test_nothing_published_breaks_a_limit(
    seed: int, n: int, scale: float, start: list[float], v0: list[float], mode: str
) -> None:
    """Random (often wild) trajectories: the filter either raises or returns one within all limits."""
    lim = _limits(mode)
    rng = np.random.default_rng(seed)
    measured = np.array(start) * np.array([1.0, 1.0, 0.0]) + np.array([0, 0, 0.02])
    pts = measured + np.cumsum(rng.normal(0, scale * DT, size=(n, 3)), axis=0)
    pts[0] = measured + rng.uniform(-0.2, 0.2, 3) * (scale > 0.1)
    v0a = np.clip(np.array(v0), -lim.vmax, lim.vmax)
    filt = SafetyFilter(lim)
    try:
        out, _ = filt.apply(_traj(pts), measured, v_start=v0a)
    except SafetyViolation:
        return
    _assert_within(out, lim, v0a)


@settings(max_examples=60, deadline=None)
@given(target=st.lists(finite, min_size=3, max_size=3), n=st.integers(2, 30))
def test_clamp_mode_accepts_reachable_starts(target: list[float], n: int) -> None:
    """From rest inside the limits, clamping always finds a trajectory (it never has to reject)."""
    lim = _limits("clamp")
    measured = np.array([0.0, 0.0, 0.02])
    pts = np.linspace(measured, np.array(target), n)
    out, rep = SafetyFilter(lim).apply(_traj(pts), measured)
    _assert_within(out, lim, np.zeros(3))
    if np.any(np.abs(np.array(target)) > 1.0):
        assert rep.clamped and rep.notes


def test_reject_mode_names_joint_and_point() -> None:
    lim = _limits("reject")
    pts = np.array([[0.0, 0.0, 0.02], [0.5, 0.0, 0.02]])  # 5 rad/s on joint a
    with pytest.raises(SafetyViolation, match=r"velocity .* joint 'a'"):
        SafetyFilter(lim).apply(_traj(pts), pts[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_guard(bad: float) -> None:
    filt = SafetyFilter(_limits())
    pts = np.zeros((3, 3))
    pts[:, 2] = 0.02
    pts[2, 1] = bad
    with pytest.raises(SafetyViolation, match=r"non-finite .* point 2, joint 'b'"):
        filt.apply(_traj(pts), np.array([0, 0, 0.02]))
    with pytest.raises(SafetyViolation, match="measured"):
        filt.apply(_traj(np.zeros((3, 3)) + [0, 0, 0.02]), np.array([0, bad, 0.02]))


def test_start_jump_rejected() -> None:
    pts = np.tile([0.5, 0.0, 0.02], (4, 1))
    with pytest.raises(SafetyViolation, match=r"start jump 0.500 .* joint 'a'"):
        SafetyFilter(_limits()).apply(_traj(pts), np.array([0.0, 0.0, 0.02]))


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(SafetyViolation, match="expected"):
        SafetyFilter(_limits()).apply(_traj(np.zeros((3, 2))), np.zeros(3))


def test_limits_validation_and_urdf() -> None:
    with pytest.raises(ValueError, match="position_upper"):
        SafetyLimits(NAMES, (0, 0, 0), (1, 1), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="lower 1.0 >= upper"):
        SafetyLimits.uniform(NAMES, lower=1.0, upper=1.0)
    with pytest.raises(ValueError, match="mode"):
        SafetyLimits.uniform(NAMES, mode="ignore")
    urdf = read_urdf_limits(URDF)
    assert urdf["elbow"] == (-2.5, 2.5, 2.0)
    assert urdf["wrist_3"][:2] == (None, None)  # continuous
    lim = SafetyLimits.uniform(("elbow", "gripper", "wrist_3"), velocity=5.0).intersect_urdf(URDF)
    assert lim.position_lower == (-2.5, 0.0, -np.pi)
    assert lim.velocity_max == (2.0, 0.1, 3.0)
    with pytest.raises(FileNotFoundError):
        read_urdf_limits(URDF.with_name("missing.urdf"))


def test_watchdog() -> None:
    wd = Watchdog({"joint_states": 0.2, "camera front": 0.5})
    assert wd.stale(0.0) == ["no joint_states received", "no camera front received"]
    wd.feed("joint_states", 1.0)
    wd.feed("camera front", 1.0)
    assert wd.stale(1.1) == []
    reasons = wd.stale(1.3)
    assert reasons == ["joint_states is 0.30 s old (bound 0.20 s)"]
    assert wd.age("camera front", 1.3) == pytest.approx(0.3)
    with pytest.raises(KeyError, match="no input named"):
        wd.feed("lidar", 0.0)
    with pytest.raises(ValueError):
        Watchdog({"x": 0.0})
