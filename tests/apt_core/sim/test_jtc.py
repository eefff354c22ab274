"""ros2_control JointTrajectoryController semantics of apt_core.sim.jtc.TrajectoryFollower."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apt_core.sim.jtc import TrajectoryError, TrajectoryFollower, TrajectoryPoint

J = ("a", "b", "c")


def P(t: float, pos, vel=()) -> TrajectoryPoint:
    return TrajectoryPoint(t, tuple(pos), tuple(vel))


def test_holds_initial_then_interpolates_linearly_and_holds_last() -> None:
    f = TrajectoryFollower(J, np.zeros(3))
    np.testing.assert_allclose(f.sample(5.0), 0)
    f.set_trajectory(J, [P(1.0, [1, 2, 3]), P(2.0, [3, 2, 1])], start_time=10.0)
    np.testing.assert_allclose(f.sample(9.0), 0)  # before its start the old state runs
    np.testing.assert_allclose(f.sample(10.5), [0.5, 1, 1.5])
    np.testing.assert_allclose(f.sample(11.5), [2, 2, 2])
    np.testing.assert_allclose(f.sample(100.0), [3, 2, 1])
    assert f.active(11.9) and not f.active(12.1)


def test_new_trajectory_replaces_rest_from_its_start() -> None:
    f = TrajectoryFollower(J, np.zeros(3))
    f.set_trajectory(J, [P(2.0, [2, 2, 2])], start_time=0.0)
    f.set_trajectory(J, [P(1.0, [-1, -1, -1])], start_time=1.0)
    np.testing.assert_allclose(f.sample(0.5), [0.5] * 3)  # old one still runs before t=1
    np.testing.assert_allclose(f.sample(1.0), [1] * 3)  # new one starts from the setpoint then
    np.testing.assert_allclose(f.sample(1.5), [0] * 3)
    np.testing.assert_allclose(f.sample(3.0), [-1] * 3)  # the old end point is gone


def test_cubic_interpolation_with_velocities() -> None:
    f = TrajectoryFollower(("a",), np.zeros(1))
    f.set_trajectory(("a",), [P(1.0, [1.0], [0.0]), P(2.0, [2.0], [0.0])], start_time=0.0)
    # Hermite from (0, v=0) to (1, v=0): smoothstep, 0.5 at the midpoint, 0.15625 at a quarter.
    assert math.isclose(f.sample(0.5)[0], 0.5)
    assert math.isclose(f.sample(0.25)[0], 3 * 0.25**2 - 2 * 0.25**3)
    assert math.isclose(f.sample(1.5)[0], 1.5)


def test_subset_and_reordered_joints_keep_others() -> None:
    f = TrajectoryFollower(J, np.array([1.0, 2.0, 3.0]))
    f.set_trajectory(("c", "a"), [P(1.0, [30, 10])], start_time=0.0)
    np.testing.assert_allclose(f.sample(1.0), [10, 2, 30])


@pytest.mark.parametrize(
    "names,points,match",
    [
        (("a", "zz"), [P(1, [0, 0])], "unknown joint"),
        (("a", "a"), [P(1, [0, 0])], "duplicate"),
        ((), [P(1, [])], "no joint_names"),
        (J, [], "no points"),
        (J, [P(1, [0, float("nan"), 0])], "non-finite position for joint"),
        (J, [P(1, [0, 0, 0]), P(0.5, [1, 1, 1])], "times must increase"),
        (J, [P(1, [0, 0, 0]), P(1, [1, 1, 1])], "times must increase"),
        (J, [P(-1, [0, 0, 0])], ">= 0"),
        (J, [P(1, [0, 0])], "2 positions for 3 joints"),
        (J, [P(1, [0, 0, 0], [0, float("inf"), 0])], "non-finite velocity"),
    ],
)
def test_bad_trajectories_rejected_and_state_kept(names, points, match) -> None:
    f = TrajectoryFollower(J, np.zeros(3))
    f.set_trajectory(J, [P(1.0, [1, 1, 1])], start_time=0.0)
    before = f.sample(0.5)
    with pytest.raises(TrajectoryError, match=match):
        f.set_trajectory(names, points, start_time=0.2)
    np.testing.assert_allclose(f.sample(0.5), before)
    np.testing.assert_allclose(f.sample(5.0), 1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-3, 3), min_size=1, max_size=6),
    st.lists(st.floats(0.01, 1.0), min_size=6, max_size=6),
    st.floats(0.0, 8.0),
)
def test_linear_setpoints_never_leave_the_commanded_range(values, gaps, t) -> None:
    # Property: without velocities, every sampled setpoint lies between the smallest and largest
    # of the start state and the commanded points, so commands inside joint limits stay inside.
    f = TrajectoryFollower(("a",), np.array([0.5]))
    times = np.cumsum(gaps[: len(values)])
    f.set_trajectory(("a",), [P(float(tt), [v]) for tt, v in zip(times, values, strict=True)], start_time=1.0)
    lo, hi = min([0.5, *values]), max([0.5, *values])
    x = f.sample(t)[0]
    assert lo - 1e-9 <= x <= hi + 1e-9
