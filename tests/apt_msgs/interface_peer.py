"""A peer process for the apt_msgs tests: serves every interface with deterministic content.

- /apt/instruct (Instruct): accepts non-empty instructions, task ids "task-<n>", echoes the mode.
- /apt/execute (Execute action): 5 feedback messages 0.1 s apart, then success; honours cancel.
- /apt/action_chunk (ActionChunk) and /apt/status (PolicyStatus) published at 20 Hz.
Run: python tests/apt_msgs/interface_peer.py
"""

from __future__ import annotations

import time

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from apt_msgs.action import Execute
from apt_msgs.msg import ActionChunk, PolicyStatus
from apt_msgs.srv import Instruct


class InterfacePeer(Node):
    def __init__(self) -> None:
        super().__init__("apt_interface_peer")
        group = ReentrantCallbackGroup()
        self.count = 0
        self.create_service(Instruct, "/apt/instruct", self.on_instruct, callback_group=group)
        self.server = ActionServer(
            self,
            Execute,
            "/apt/execute",
            execute_callback=self.on_execute,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda handle: CancelResponse.ACCEPT,
            callback_group=group,
        )
        self.chunk_pub = self.create_publisher(ActionChunk, "/apt/action_chunk", 10)
        self.status_pub = self.create_publisher(PolicyStatus, "/apt/status", 10)
        self.create_timer(0.05, self.publish, callback_group=group)

    def on_instruct(self, req: Instruct.Request, resp: Instruct.Response) -> Instruct.Response:
        if not req.instruction.strip():
            resp.accepted, resp.message = False, "empty instruction"
            return resp
        self.count += 1
        resp.accepted = True
        resp.task_id = f"task-{self.count}"
        mode = "append" if req.mode == Instruct.Request.MODE_APPEND else "replace"
        resp.message = f"{mode}: {req.instruction}"
        return resp

    def on_execute(self, handle) -> Execute.Result:
        start = time.monotonic()
        result = Execute.Result()
        for i in range(5):
            if handle.is_cancel_requested:
                handle.canceled()
                result.success, result.reason, result.subtasks_completed = False, "canceled", i
                return result
            fb = Execute.Feedback(
                subtask_index=i // 3,
                subtask_count=2,
                subtask=handle.request.instruction,
                progress=float(i) / 4.0,
                phase=Execute.Feedback.PHASE_EXECUTING,
                elapsed_s=float(time.monotonic() - start),
            )
            handle.publish_feedback(fb)
            time.sleep(0.1)
        handle.succeed()
        result.success, result.reason, result.subtasks_completed = True, "completed", 2
        result.duration_s = float(time.monotonic() - start)
        return result

    def publish(self) -> None:
        stamp = self.get_clock().now().to_msg()
        chunk = ActionChunk()
        chunk.header.stamp = stamp
        chunk.joint_names = ["a", "b"]
        chunk.horizon = 3
        chunk.positions = [0.0, 1.0, 0.5, 1.5, 1.0, 2.0]
        chunk.time_offsets = [0.1, 0.2, 0.3]
        chunk.chunk_id = 42
        chunk.task_id = "task-1"
        chunk.inference_latency = 0.012
        self.chunk_pub.publish(chunk)
        status = PolicyStatus()
        status.header.stamp = stamp
        status.state = PolicyStatus.STATE_HOLDING
        status.active_instruction = "put the red cube in the blue bowl"
        status.queue_length = 2
        status.image_age = 0.05
        status.joint_state_age = -1.0
        status.fault = "watchdog: camera stale"
        self.status_pub.publish(status)


def main() -> None:
    rclpy.init()
    node = InterfacePeer()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
