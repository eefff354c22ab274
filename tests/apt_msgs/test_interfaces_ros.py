"""Every apt_msgs interface exchanged between two real rclpy processes over loopback DDS."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor

from apt_msgs.action import Execute
from apt_msgs.msg import ActionChunk, PolicyStatus
from apt_msgs.srv import Instruct, ResetSim

PEER = str(Path(__file__).with_name("interface_peer.py"))
pytestmark = [pytest.mark.ros, pytest.mark.timeout(90)]


@pytest.fixture
def client(ros_env, processes):
    """A node in this test process, plus the peer in another process, in the test's ROS domain."""
    peer = processes.python(PEER, name="peer")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("apt_interface_test", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    yield node, executor, peer
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=ctx)


def spin_until(executor, done, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    assert done(), "timed out waiting for the peer process"


def test_instruct_service_round_trip(client):
    node, executor, peer = client
    cli = node.create_client(Instruct, "/apt/instruct")
    spin_until(executor, lambda: cli.service_is_ready() or peer.poll() is not None)
    assert peer.poll() is None, "peer process exited"

    fut = cli.call_async(Instruct.Request(instruction="put the red cube in the blue bowl", mode=1))
    spin_until(executor, fut.done)
    resp = fut.result()
    assert resp.accepted and resp.task_id == "task-1"
    assert resp.message == "append: put the red cube in the blue bowl"

    fut = cli.call_async(Instruct.Request(instruction="   ", mode=Instruct.Request.MODE_REPLACE))
    spin_until(executor, fut.done)
    assert not fut.result().accepted and fut.result().message == "empty instruction"


def test_execute_action_feedback_result_and_cancel(client):
    node, executor, _ = client
    ac = ActionClient(node, Execute, "/apt/execute")
    spin_until(executor, ac.server_is_ready)
    feedback: list[Execute.Feedback] = []

    goal_fut = ac.send_goal_async(
        Execute.Goal(instruction="stack the cubes", timeout_s=5.0),
        feedback_callback=lambda m: feedback.append(m.feedback),
    )
    spin_until(executor, goal_fut.done)
    handle = goal_fut.result()
    assert handle.accepted
    res_fut = handle.get_result_async()
    spin_until(executor, res_fut.done)
    result = res_fut.result().result
    assert result.success and result.reason == "completed" and result.subtasks_completed == 2
    assert [round(f.progress, 2) for f in feedback] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {f.phase for f in feedback} == {Execute.Feedback.PHASE_EXECUTING}
    assert feedback[-1].subtask == "stack the cubes" and feedback[-1].subtask_index == 1

    goal_fut = ac.send_goal_async(Execute.Goal(instruction="push the green cube"))
    spin_until(executor, goal_fut.done)
    handle = goal_fut.result()
    cancel_fut = handle.cancel_goal_async()
    spin_until(executor, cancel_fut.done)
    res_fut = handle.get_result_async()
    spin_until(executor, res_fut.done)
    assert not res_fut.result().result.success
    assert res_fut.result().result.reason == "canceled"


def test_action_chunk_and_status_messages(client):
    node, executor, _ = client
    got: dict[str, object] = {}
    node.create_subscription(ActionChunk, "/apt/action_chunk", lambda m: got.setdefault("chunk", m), 10)
    node.create_subscription(PolicyStatus, "/apt/status", lambda m: got.setdefault("status", m), 10)
    spin_until(executor, lambda: "chunk" in got and "status" in got)

    chunk = got["chunk"]
    assert list(chunk.joint_names) == ["a", "b"] and chunk.horizon == 3
    assert list(chunk.positions) == [0.0, 1.0, 0.5, 1.5, 1.0, 2.0]
    assert list(chunk.time_offsets) == pytest.approx([0.1, 0.2, 0.3])
    assert chunk.chunk_id == 42 and chunk.task_id == "task-1"
    assert chunk.header.stamp.sec > 0, "published messages must be stamped"

    status = got["status"]
    assert status.state == PolicyStatus.STATE_HOLDING == 2
    assert status.queue_length == 2 and status.fault == "watchdog: camera stale"
    assert status.joint_state_age == -1.0


def test_reset_sim_service_type_constants_and_defaults():
    """ResetSim is used by apt_sim; check its generated type without a peer (fields and defaults)."""
    req = ResetSim.Request()
    assert req.seed == 0 and req.split == "" and req.instruction == ""
    resp = ResetSim.Response(success=True, instruction="x", task="pick_place", message="")
    assert resp.success and resp.task == "pick_place"
    assert Instruct.Request.MODE_REPLACE == 0 and Instruct.Request.MODE_APPEND == 1
    assert PolicyStatus.STATE_IDLE == 0 and PolicyStatus.STATE_FAULT == 3
