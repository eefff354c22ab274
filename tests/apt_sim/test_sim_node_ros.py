"""The apt_sim node in its own process, driven over loopback DDS from this test's rclpy node."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from apt_core.contract import load_contract
from apt_core.sim.tasks import make_task
from apt_msgs.srv import ResetSim

C = load_contract()
LATCHED = QoSProfile(
    depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
)


class Probe(Node):
    def __init__(self) -> None:
        super().__init__("sim_probe")
        self.js: list[JointState] = []
        self.images: list[Image] = []
        self.infos: list[CameraInfo] = []
        self.instr: list[str] = []
        self.success: list[bool] = []
        self.create_subscription(JointState, C.joint_state_topic, self.js.append, 10)
        self.create_subscription(Image, C.cameras[0].topic, self.images.append, qos_profile_sensor_data)
        self.create_subscription(
            CameraInfo, C.cameras[0].info_topic, self.infos.append, qos_profile_sensor_data
        )
        self.create_subscription(String, C.instruction_topic, lambda m: self.instr.append(m.data), LATCHED)
        self.create_subscription(Bool, C.success_topic, lambda m: self.success.append(m.data), 10)
        self.pub = self.create_publisher(JointTrajectory, C.controller_topic, 10)
        self.grip = self.create_publisher(Float64MultiArray, "/gripper_controller/commands", 10)
        self.reset_cli = self.create_client(ResetSim, "/apt_sim/reset")

    def spin_until(self, cond, timeout: float = 15.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            rclpy.spin_once(self, timeout_sec=0.05)
            if cond():
                return True
        return False

    def reset(self, seed: int, split: str = "", instruction: str = "") -> ResetSim.Response:
        assert self.reset_cli.wait_for_service(timeout_sec=15)
        fut = self.reset_cli.call_async(ResetSim.Request(seed=seed, split=split, instruction=instruction))
        assert self.spin_until(fut.done, 15)
        return fut.result()

    def q(self) -> np.ndarray:
        return np.array(self.js[-1].position)

    def send(self, names, points) -> None:
        msg = JointTrajectory(joint_names=list(names))
        for t, pos in points:
            msg.points.append(
                JointTrajectoryPoint(
                    positions=list(pos), time_from_start=Duration(sec=int(t), nanosec=int((t % 1) * 1e9))
                )
            )
        self.pub.publish(msg)


@pytest.fixture
def probe(processes, ros_env):
    sim = processes.python(
        "-m", "apt_sim.sim_node", "--ros-args", "-p", "speed:=2.0", "-p", "seed:=4", name="sim"
    )
    rclpy.init()
    node = Probe()
    try:
        assert node.spin_until(lambda: len(node.images) > 2 and len(node.js) > 2 and node.instr, 30), (
            processes.dump_logs()
        )
        yield node, sim, processes
    finally:
        node.destroy_node()
        rclpy.shutdown()


@pytest.mark.ros
def test_publishes_contract_topics_and_resets(probe) -> None:
    node, sim, _ = probe
    js, img, info = node.js[-1], node.images[-1], node.infos[-1]
    assert list(js.name) == list(C.joint_names) and len(js.position) == 7 and len(js.effort) == 7
    assert (img.width, img.height, img.encoding, img.step) == (128, 128, "rgb8", 384)
    assert np.frombuffer(bytes(img.data), np.uint8).std() > 5  # a real rendered frame
    assert info.k[0] > 0 and info.width == 128
    assert node.instr[-1] == make_task(4)[0].instruction
    # Stamps follow the virtual clock: 0.1 s apart (10 Hz) even at speed 2.
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in node.js[-3:]]
    assert np.allclose(np.diff(stamps), 0.1, atol=1e-6)
    assert node.success and not node.success[-1]

    resp = node.reset(7, "paraphrase")
    expected = make_task(7, "paraphrase")[0]
    assert resp.success and resp.instruction == expected.instruction and resp.task == expected.family
    assert node.spin_until(lambda: node.instr[-1] == expected.instruction, 5)

    bad = node.reset(1, "not_a_split")
    assert not bad.success and "not_a_split" in bad.message
    bad = node.reset(1, "", "put the purple cube in the blue bowl")
    assert not bad.success and "cannot parse" in bad.message
    resp = node.reset(2, "", "stack the red cube on the green cube")
    assert resp.success and resp.task == "stack"
    assert sim.poll() is None


@pytest.mark.ros
def test_follows_trajectories_and_rejects_bad_ones(probe) -> None:
    node, sim, processes = probe
    node.spin_until(lambda: False, 0.3)
    q0 = node.q()
    target = q0.copy()
    target[0] += 0.4
    target[6] = 0.02
    node.send(C.joint_names, [(0.5, q0 + (target - q0) / 2), (1.0, target)])
    assert node.spin_until(
        lambda: abs(node.q()[0] - target[0]) < 0.02 and abs(node.q()[6] - 0.02) < 0.005, 10
    )
    node.spin_until(lambda: False, 0.5)
    np.testing.assert_allclose(node.q(), target, atol=0.005)  # settled on the last point (held)
    node.send(["shoulder_pan", "bogus_joint"], [(1.0, [0.0, 0.0])])
    node.send(C.joint_names, [(1.0, [float("nan")] * 7)])
    node.send(C.joint_names, [(1.0, q0), (0.5, q0)])
    node.send(C.joint_names, [])
    node.spin_until(lambda: False, 1.5)
    np.testing.assert_allclose(node.q(), target, atol=0.005)  # the arm held its position
    assert sim.poll() is None
    log = processes.log_text(sim)
    assert "unknown joint(s) ['bogus_joint']" in log
    assert "non-finite position" in log
    assert "times must increase" in log
    assert "no points" in log
    # Still alive and still obeying good commands, including the separate gripper command.
    node.send(["shoulder_pan"], [(0.5, [q0[0]])])
    assert node.spin_until(lambda: abs(node.q()[0] - q0[0]) < 0.02, 10)
    node.grip.publish(Float64MultiArray(data=[0.07]))
    assert node.spin_until(lambda: abs(node.q()[6] - 0.07) < 0.004, 10)
    node.grip.publish(Float64MultiArray(data=[0.5]))
    node.grip.publish(Float64MultiArray(data=[float("nan")]))
    node.spin_until(lambda: False, 1.0)
    assert abs(node.q()[6] - 0.07) < 0.004 and sim.poll() is None
    assert processes.log_text(sim).count("rejected gripper command") == 2


@pytest.mark.ros
def test_real_time_stamps_stay_behind_the_clock_across_resets(processes, ros_env) -> None:
    """At speed 1 a joint state is never stamped ahead of the receiver's clock, however many resets.
    Each reset used to start the virtual clock one control period after the last stamp, which was
    itself up to a period ahead: after the demo's four scenes the stamps ran 0.36 s ahead of the
    policy node, and its start-jump check refused a plan of the two-step chain."""
    processes.python("-m", "apt_sim.sim_node", "--ros-args", "-p", "speed:=1.0", name="sim")
    rclpy.init()
    node = Probe()
    ahead: list[float] = []
    node.create_subscription(  # (a separate list: Probe keeps the messages, this keeps receipt times)
        JointState,
        C.joint_state_topic,
        lambda m: ahead.append(
            m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 - node.get_clock().now().nanoseconds * 1e-9
        ),
        10,
    )
    try:
        assert node.spin_until(lambda: len(node.js) > 2, 30), processes.dump_logs()
        stamps = []
        for seed in range(5):
            assert node.reset(seed).success
            ahead.clear()
            node.spin_until(lambda: False, 1.0)
            assert len(ahead) >= 5 and max(ahead) < 0.01, (
                f"reset {seed}: stamps up to {max(ahead):.3f} s ahead"
            )
            stamps += [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in node.js]
            node.js.clear()
        assert np.all(np.diff(stamps) > 0), "stamps keep increasing across resets"
    finally:
        node.destroy_node()
        rclpy.shutdown()
