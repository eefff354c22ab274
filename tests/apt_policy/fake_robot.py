"""A small robot process for the node tests: joint states, a camera, and a JTC-like trajectory follower.

Used before (and besides) the MuJoCo simulator: it is cheap and lets tests make sensors stale,
freeze the arm, or publish odd images. It follows JointTrajectory messages the way
JointTrajectoryController does (cubic Hermite through position+velocity points on header.stamp +
time_from_start, from the state at the moment of arrival), and records every trajectory it got to
a JSONL file for the tests to analyse.

    python fake_robot.py --record /tmp/traj.jsonl [--stuck] [--camera-stop-after 3] [--compressed]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3", "gripper"]


def t2s(t) -> float:
    return t.sec + t.nanosec * 1e-9


class FakeRobot(Node):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("fake_robot")
        self.args = args
        self.q = np.zeros(len(JOINTS))
        self.traj: tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.record = open(args.record, "a") if args.record else None
        self.t_start = time.monotonic()
        self.js_pub = self.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        img_type = CompressedImage if args.compressed else Image
        self.img_pub = self.create_publisher(img_type, "/camera/front/image_raw", qos_profile_sensor_data)
        self.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", self.on_traj, 10)
        self.create_timer(1.0 / args.rate, self.tick)
        self.create_timer(1.0 / args.camera_rate, self.tick_camera)
        self.pattern = (np.indices((128, 128)).sum(0) % 256).astype(np.uint8)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_traj(self, msg: JointTrajectory) -> None:
        now = self.now()
        idx = [msg.joint_names.index(j) for j in JOINTS]
        t0 = t2s(msg.header.stamp) or now
        times = np.array([t0 + t2s(p.time_from_start) for p in msg.points])
        pos = np.array([[p.positions[i] for i in idx] for p in msg.points])
        vel = np.array(
            [[p.velocities[i] for i in idx] if p.velocities else [0.0] * len(idx) for p in msg.points]
        )
        if self.record:
            self.record.write(
                json.dumps(
                    {
                        "recv": now,
                        "times": times.tolist(),
                        "pos": pos.tolist(),
                        "vel": vel.tolist(),
                        "q": self.q.tolist(),
                    }
                )
                + "\n"
            )
            self.record.flush()
        # JTC: start from the current state; points in the past are skipped
        self.traj = (now, self.q.copy(), times, pos, vel)

    def sample(self, t: float) -> np.ndarray:
        assert self.traj is not None
        t_recv, q_recv, times, pos, vel = self.traj
        if t <= times[0]:
            s = 0.0 if times[0] <= t_recv else (t - t_recv) / (times[0] - t_recv)
            return q_recv + np.clip(s, 0, 1) * (pos[0] - q_recv)
        if t >= times[-1]:
            return pos[-1]
        i = int(np.searchsorted(times, t, side="right")) - 1
        h = times[i + 1] - times[i]
        s = (t - times[i]) / h
        h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
        return h00 * pos[i] + h10 * h * vel[i] + h01 * pos[i + 1] + h11 * h * vel[i + 1]

    def tick(self) -> None:
        if self.traj is not None and not self.args.stuck:
            self.q = self.sample(self.now())
        if self.args.joints_stop_after and time.monotonic() - self.t_start > self.args.joints_stop_after:
            return
        m = JointState()
        m.header.stamp = self.get_clock().now().to_msg()
        order = list(reversed(range(len(JOINTS))))  # a different order than the contract: mapped by name
        m.name = [JOINTS[i] for i in order] + ["passive_joint"]
        m.position = [float(self.q[i]) for i in order] + [0.0]
        self.js_pub.publish(m)

    def tick_camera(self) -> None:
        if self.args.camera_stop_after and time.monotonic() - self.t_start > self.args.camera_stop_after:
            return
        img = np.stack([self.pattern] * 3, axis=2)
        if self.args.compressed:
            import cv2

            m = CompressedImage()
            m.header.stamp = self.get_clock().now().to_msg()
            m.format = "png"
            m.data = cv2.imencode(".png", img)[1].tobytes()
        else:
            m = Image()
            m.header.stamp = self.get_clock().now().to_msg()
            m.height = m.width = 128
            m.encoding, m.step = "rgb8", 128 * 3
            m.data = img.tobytes()
        self.img_pub.publish(m)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", default="")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--camera-rate", type=float, default=15.0)
    ap.add_argument("--stuck", action="store_true", help="ignore trajectories (a blocked arm)")
    ap.add_argument("--compressed", action="store_true")
    ap.add_argument("--camera-stop-after", type=float, default=0.0)
    ap.add_argument("--joints-stop-after", type=float, default=0.0)
    args = ap.parse_args()
    rclpy.init()
    node = FakeRobot(args)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print("fake_robot exit", os.getpid(), file=sys.stderr)


if __name__ == "__main__":
    main()
