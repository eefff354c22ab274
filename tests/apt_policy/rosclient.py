"""In-test rclpy client: collects /apt/status, trajectories, chunks and diagnostics; calls services.

The policy node and the robot run in their own processes (the `processes` fixture); this client runs
in the test process, in the test's ROS domain, on its own context and a background executor thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from apt_msgs.action import Execute
from apt_msgs.msg import ActionChunk, PolicyStatus
from apt_msgs.srv import Instruct

HERE = Path(__file__).parent


def start_policy(processes: Any, *extra: str, policy_env: str = "{}", name: str = "policy") -> Any:
    """Start the policy node with the test policy; extra: '-p name:=value' pairs."""
    args = ["-m", "apt_policy.policy_node", "--ros-args", "-p", "policy_factory:=policies:make_goal_policy"]
    args += ["-p", "min_subtask_s:=1.0", "-p", "joint_state_timeout_s:=1.0", "-p", "image_timeout_s:=1.0"]
    for e in extra:
        args += ["-p", e]
    env = {
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "APT_TEST_POLICY": policy_env,
    }
    return processes.python(*args, name=name, env=env)


def start_robot(processes: Any, *args: str, record: Path | None = None) -> Any:
    a = [str(HERE / "fake_robot.py")] + (["--record", str(record)] if record else []) + list(args)
    return processes.python(*a, name="robot")


class Client:
    def __init__(self) -> None:
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
        self.node = Node("apt_test_client", context=self.ctx)
        self.lock = threading.Lock()
        self.status: list[tuple[float, PolicyStatus]] = []
        self.trajs: list[tuple[float, JointTrajectory]] = []
        self.chunks: list[ActionChunk] = []
        self.diags: list[DiagnosticArray] = []
        self.markers: list[MarkerArray] = []
        n = self.node
        n.create_subscription(
            PolicyStatus, "/apt/status", lambda m: self._add(self.status, (time.monotonic(), m)), 50
        )
        n.create_subscription(
            JointTrajectory,
            "/arm_controller/joint_trajectory",
            lambda m: self._add(self.trajs, (time.monotonic(), m)),
            50,
        )
        n.create_subscription(ActionChunk, "/apt/action_chunk", lambda m: self._add(self.chunks, m), 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._add(self.diags, m), 10)
        n.create_subscription(MarkerArray, "/apt/predicted_path", lambda m: self._add(self.markers, m), 10)
        self.goal_pub = n.create_publisher(PointStamped, "/apt/goal", 10)
        self.instruct_cli = n.create_client(Instruct, "/apt/instruct")
        self.stop_cli = n.create_client(Trigger, "/apt/stop")
        self.execute_cli = ActionClient(n, Execute, "/apt/execute")
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def point(self, x: float, y: float, z: float, frame: str = "base_link") -> None:
        """Publish an external goal on /apt/goal, once the policy node subscribes."""
        self.wait_for(lambda: self.goal_pub.get_subscription_count() > 0, 15, "/apt/goal subscriber")
        msg = PointStamped()
        msg.header.frame_id = frame
        msg.point.x, msg.point.y, msg.point.z = float(x), float(y), float(z)
        self.goal_pub.publish(msg)

    def _spin(self) -> None:
        while self.ctx.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                if not self.ctx.ok():
                    return

    def _add(self, lst: list, item: Any) -> None:
        with self.lock:
            lst.append(item)

    def wait_for(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def last_status(self) -> PolicyStatus | None:
        with self.lock:
            return self.status[-1][1] if self.status else None

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.instruct_cli.wait_for_service(timeout_sec=timeout), "policy node did not come up"
        self.wait_for(lambda: self.last_status() is not None, timeout, "first status")

    def _wait_future(self, fut: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fut.done(), "no answer"
        return fut.result()

    def instruct(self, text: str, mode: int = 0, timeout: float = 10.0) -> Instruct.Response:
        return self._wait_future(
            self.instruct_cli.call_async(Instruct.Request(instruction=text, mode=mode)), timeout
        )

    def stop(self, timeout: float = 10.0) -> Trigger.Response:
        assert self.stop_cli.wait_for_service(timeout_sec=timeout)
        return self._wait_future(self.stop_cli.call_async(Trigger.Request()), timeout)

    def send_goal(self, text: str, feedback: list | None = None, timeout_s: float = 0.0) -> Any:
        assert self.execute_cli.wait_for_server(timeout_sec=10.0)
        cb = (lambda fb: feedback.append(fb.feedback)) if feedback is not None else None
        fut = self.execute_cli.send_goal_async(
            Execute.Goal(instruction=text, timeout_s=timeout_s), feedback_callback=cb
        )
        return self._wait_future(fut, 10.0)

    def result(self, handle: Any, timeout: float) -> tuple[int, Execute.Result]:
        res = self._wait_future(handle.get_result_async(), timeout)
        return res.status, res.result

    def close(self) -> None:
        try:
            self.executor.shutdown()
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.ctx)
        self._thread.join(timeout=2.0)


__all__ = ["Client", "GoalStatus", "start_policy", "start_robot"]
sys.modules.setdefault("apt_test_rosclient", sys.modules[__name__])
