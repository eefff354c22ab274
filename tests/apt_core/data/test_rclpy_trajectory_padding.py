"""JointTrajectory bytes from rclpy (what `ros2 bag record` stores) decode despite rclpy's padding.

rclpy's serialize_message reports ~8 extra bytes per trajectory point; rosbags' strict size check
rejects them. The first recorded sim bags failed to convert because of it.
"""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from rosbags.serde import SerdeError
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from apt_core.data.bag_reader import TRAJECTORY_T, deserialize_lenient


def rclpy_trajectory(n_points: int, velocities: bool) -> bytes:
    msg = JointTrajectory()
    msg.joint_names = [f"j{i}" for i in range(7)]
    for k in range(n_points):
        p = JointTrajectoryPoint()
        p.positions = [0.1 * k + i for i in range(7)]
        if velocities:
            p.velocities = [0.5] * 7
        p.time_from_start.sec, p.time_from_start.nanosec = k // 10, (k % 10) * 100_000_000
        msg.points.append(p)
    return serialize_message(msg)


@pytest.mark.parametrize("n_points", [1, 8, 32])
@pytest.mark.parametrize("velocities", [False, True])
def test_rclpy_trajectory_decodes_exactly(n_points, velocities):
    msg, lenient = deserialize_lenient(rclpy_trajectory(n_points, velocities), TRAJECTORY_T)
    assert lenient, "rclpy pads trajectories; the strict path should not have accepted them"
    assert len(msg.points) == n_points and list(msg.joint_names)[0] == "j0"
    assert np.allclose(msg.points[-1].positions, [0.1 * (n_points - 1) + i for i in range(7)])
    assert len(msg.points[0].velocities) == (7 if velocities else 0)


def test_truncated_trajectory_still_fails():
    raw = rclpy_trajectory(8, True)
    with pytest.raises(SerdeError, match="Could not deserialize"):
        deserialize_lenient(raw[: len(raw) // 2], TRAJECTORY_T)
