"""PolicyClient node: drives the robot from any ChunkPolicy through the contract's topics.

It does what a teleoperator or the policy node does: subscribes to the camera and /joint_states,
builds an Observation when a frame and a joint state with the same stamp are in, calls
`policy.predict(obs, instruction)` every `execute_steps` frames, and publishes the chunk as a
JointTrajectory (header stamp = observation stamp, points at dt * (1..H)). The demo recorder runs
it with the ScriptedExpert; `apt_sim.evaluate_ros` runs it with any policy.
"""

from __future__ import annotations

import threading
import traceback

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from apt_core.contract import Contract
from apt_core.types import ChunkPolicy, Observation
from apt_sim.sim_node import LATCHED, to_time_msg


def image_to_array(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an rgb8/bgr8 Image (numpy only: cv_bridge is unavailable)."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"unsupported image encoding {msg.encoding!r}")
    a = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
    a = a.reshape(msg.height, msg.width, 3)
    return a[..., ::-1].copy() if msg.encoding == "bgr8" else a.copy()


class PolicyClient(Node):
    def __init__(
        self, contract: Contract, policy: ChunkPolicy, execute_steps: int = 8, name: str = "apt_policy_client"
    ):
        super().__init__(name)
        if execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
        self.contract, self.policy, self.execute_steps = contract, policy, execute_steps
        self.instruction = ""
        self.enabled = False
        self._frames = 0
        self._lock = threading.Lock()
        self._joints: dict[int, np.ndarray] = {}  # stamp [ns] -> positions, a few recent ones
        self._cam = contract.cameras[0]
        self.pub = self.create_publisher(JointTrajectory, contract.controller_topic, 10)
        self.create_subscription(JointState, contract.joint_state_topic, self._on_js, 10)
        self.create_subscription(Image, self._cam.topic, self._on_image, qos_profile_sensor_data)
        self.create_subscription(String, contract.instruction_topic, self._on_instruction, LATCHED)
        self.predictions = 0

    def start_episode(self) -> None:
        """Reset the policy and count frames from zero (call after a sim reset)."""
        with self._lock:
            self.policy.reset()
            self._frames = 0
            self.enabled = True

    def _on_instruction(self, msg: String) -> None:
        self.instruction = msg.data

    def _on_js(self, msg: JointState) -> None:
        idx = {n: i for i, n in enumerate(msg.name)}
        try:
            q = np.array([msg.position[idx[j]] for j in self.contract.joint_names])
        except (KeyError, IndexError):
            return
        key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self._joints[key] = q
        if len(self._joints) > 20:
            self._joints.pop(next(iter(self._joints)))

    def _on_image(self, msg: Image) -> None:
        if not self.enabled or not self.instruction:
            return
        key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        q = self._joints.get(key)
        if q is None:  # the joint state of this frame is late: use the newest one
            if not self._joints:
                return
            q = self._joints[next(reversed(self._joints))]
        with self._lock:
            due = self._frames % self.execute_steps == 0
            self._frames += 1
            if not due:
                return
            try:
                obs = Observation({self._cam.name: image_to_array(msg)}, q, key * 1e-9)
                chunk = np.asarray(self.policy.predict(obs, self.instruction), dtype=np.float64)
            except Exception:
                self.get_logger().error(f"policy failed: {traceback.format_exc()}")
                return
        self.predictions += 1
        traj = JointTrajectory()
        traj.header.stamp = msg.header.stamp
        traj.joint_names = list(self.contract.joint_names)
        dt = self.contract.dt
        for i, row in enumerate(chunk):
            t = to_time_msg(dt * (i + 1))
            traj.points.append(
                JointTrajectoryPoint(
                    positions=row.tolist(), time_from_start=Duration(sec=t.sec, nanosec=t.nanosec)
                )
            )
        self.pub.publish(traj)
