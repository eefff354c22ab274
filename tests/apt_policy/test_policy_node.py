"""The policy node in its own process against a robot process, over loopback DDS.

Covers: instruct, execute with feedback, chaining, cancel, stop, queue, status rate, the
trajectory stream (timing, velocity consistency, continuity at chunk boundaries, never running out),
monitoring topics, the watchdog hold, and refusing to start with a policy for another robot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from rosclient import Client, GoalStatus, start_policy, start_robot

from apt_msgs.msg import PolicyStatus

pytestmark = pytest.mark.ros
DT = 0.1  # sim contract: 10 Hz


def _hermite(times: np.ndarray, pos: np.ndarray, vel: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    i = int(np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2))
    h = times[i + 1] - times[i]
    s = (t - times[i]) / h
    p = (2 * s**3 - 3 * s**2 + 1) * pos[i] + (s**3 - 2 * s**2 + s) * h * vel[i]
    p += (-2 * s**3 + 3 * s**2) * pos[i + 1] + (s**3 - s**2) * h * vel[i + 1]
    v = ((6 * s**2 - 6 * s) * pos[i] + (3 * s**2 - 4 * s + 1) * h * vel[i]) / h
    v += ((-6 * s**2 + 6 * s) * pos[i + 1] + (3 * s**2 - 2 * s) * h * vel[i + 1]) / h
    return p, v


def _load(record: Path) -> list[dict]:
    out = []
    for line in record.read_text().splitlines():
        d = json.loads(line)
        out.append({k: np.array(v) for k, v in d.items()})
    return out


def _is_hold(tr: dict) -> bool:
    return bool(np.allclose(tr["pos"], tr["pos"][0]) and not np.any(tr["vel"]))


# Was intermittent until session 13 ("status rate 3-5 Hz" in about half the runs): rclpy's
# MultiThreadedExecutor resubmitted waiting callbacks on every pass until its list held thousands
# and its loop held the GIL. The node now spins its sensors, timers and services on one thread and
# /apt/execute on a node of its own (policy_node.main). No reruns: a slow status is a real failure.
def test_execute_chain_feedback_and_smooth_trajectories(processes, client: Client, tmp_path: Path) -> None:
    record = tmp_path / "traj.jsonl"
    robot = start_robot(processes, record=record)
    # a VLA-like policy: every chunk has its own random offset, and inference takes 60 ms
    policy = start_policy(processes, policy_env=json.dumps({"offset": 0.03, "latency_s": 0.06}))
    client.wait_ready()
    feedback: list = []
    handle = client.send_goal("left, then right", feedback=feedback)
    assert handle.accepted
    status, result = client.result(handle, timeout=40.0)
    assert status == GoalStatus.STATUS_SUCCEEDED, result.reason
    assert result.success and result.reason == "completed" and result.subtasks_completed == 2
    subtasks = [f.subtask for f in feedback if f.subtask]
    assert (
        subtasks[0] == "left"
        and subtasks[-1] == "right"
        and "right" not in subtasks[: subtasks.index("left") + 1]
    )
    assert max(f.subtask_index for f in feedback) == 1 and all(f.subtask_count == 2 for f in feedback)
    assert any(f.phase == 2 for f in feedback)  # PHASE_EXECUTING was reported

    # --- status at >= 5 Hz (10 Hz configured), stamped
    with client.lock:
        st_times = [t for t, _ in client.status]
    span = st_times[-1] - st_times[0]
    assert span > 3.0 and (len(st_times) - 1) / span >= 5.0, (
        f"status rate {(len(st_times) - 1) / span:.1f} Hz"
    )
    # --- monitoring: chunks and diagnostics
    with client.lock:
        chunks, diags = list(client.chunks), list(client.diags)
    assert chunks and chunks[0].horizon == 16 and len(chunks[0].positions) == 16 * 7
    assert chunks[-1].inference_latency >= 0.05  # the test policy sleeps 60 ms
    assert diags and diags[-1].status[0].name == "apt_policy: runtime"
    # RViz: predicted end-effector path (FK on the sim URDF) and the status text
    with client.lock:
        markers = [mk for arr in client.markers for mk in arr.markers]
    paths = [mk for mk in markers if mk.ns == "apt_predicted_ee_path"]
    texts = [mk.text for mk in markers if mk.ns == "apt_status"]
    assert paths and len(paths[-1].points) >= 10 and paths[-1].header.frame_id == "base_link"
    reach = [np.hypot(p.x, p.y) for p in paths[-1].points]
    assert 0.05 < max(reach) < 1.2  # a real arm's workspace, not zeros
    assert any(t.startswith("RUNNING 1/2: left") for t in texts) and any("2/2: right" in t for t in texts)

    # --- trajectory stream, as received by the robot
    trajs = [t for t in _load(record) if not _is_hold(t)]
    assert len(trajs) >= 10
    for tr in trajs:
        steps = np.diff(tr["times"])
        assert np.allclose(steps, DT, atol=1e-6), "time_from_start follows the chunk timing"
        p, v = tr["pos"], tr["vel"]
        assert np.allclose(v[1:-1], (p[2:] - p[:-2]) / (2 * DT), atol=1e-9), (
            "velocities consistent with positions"
        )
        assert np.all(np.abs(v) <= 1.5 + 1e-9) and np.all(np.abs(np.diff(p, axis=0)) / DT <= 1.5 + 1e-6)
    dp, dv, margin, after_hold = [], [], [], []
    every = _load(record)  # holds included: a watchdog hold under load stops the arm mid-plan
    for old, new in zip(every[:-1], every[1:]):
        t0 = new["times"][0]
        if _is_hold(new) or t0 >= old["times"][-1]:
            continue  # a hold stops at the measured state by design
        if _is_hold(old):  # resuming: the plan starts where the arm was held
            after_hold.append(np.abs(new["pos"][0] - old["pos"][0]).max())
            continue
        p_old, v_old = _hermite(old["times"], old["pos"], old["vel"], t0)
        dp.append(np.abs(p_old - new["pos"][0]).max())
        dv.append(np.abs(v_old - new["vel"][0]).max())
        margin.append(old["times"][-1] - new["recv"])
    assert len(dp) >= 8
    assert max(dp) < 1e-6, f"position jump at a chunk boundary: {max(dp)}"
    assert max(after_hold, default=0.0) < 0.05, f"jump when resuming after a hold: {max(after_hold)}"
    assert max(dv) < 1e-6, f"velocity jump at a chunk boundary: {max(dv)}"
    # the controller never runs out of trajectory: each plan arrives well before the previous ends
    # (nominally ~1.1 s of margin; > 0 is the requirement, so CPU contention on a shared machine cannot fail it)
    assert min(margin) > 0.0, f"plan arrived {-min(margin):.3f} s after the previous one ended"
    assert robot.poll() is None and policy.poll() is None


# Once intermittent (session 3: about 1 run in 5 on this 2-core machine, a plan arriving ~0.1 s
# after the previous one ended, or a plan recorded after the stop's hold). The start-jump and
# resume-jump causes were fixed, and session 13 removed the executor's process stalls (see
# test_execute_chain_feedback_and_smooth_trajectories). Session 25 ran it 20 times without
# reruns (10 of them beside two busy-looping processes on the two cores), all passed, so it runs
# without reruns now: a failure here is a regression to look at.
def test_instruct_queue_cancel_and_stop(processes, client: Client, tmp_path: Path) -> None:
    record = tmp_path / "traj.jsonl"
    start_robot(processes, record=record)
    policy = start_policy(processes)
    client.wait_ready()
    r1 = client.instruct("left")
    assert r1.accepted and r1.task_id and "started" in r1.message
    r2 = client.instruct("right, then home", mode=1)
    assert r2.accepted and "queued at position 1" in r2.message and "right | home" in r2.message
    client.wait_for(
        lambda: (s := client.last_status()) is not None and s.queue_length == 1, 5, "queue_length 1"
    )
    client.wait_for(lambda: client.last_status().state == PolicyStatus.STATE_RUNNING, 10, "running")
    assert client.last_status().active_instruction == "left"
    resp = client.stop()
    assert resp.success and "holding" in resp.message
    client.wait_for(lambda: client.last_status().state == PolicyStatus.STATE_HOLDING, 5, "holding after stop")
    st = client.last_status()
    assert st.queue_length == 0 and st.task_id == "" and "stop" in st.fault
    time.sleep(0.5)
    assert _is_hold(_load(record)[-1]), "stop publishes a hold trajectory"

    # execute, then cancel: the goal ends canceled and the arm holds
    n_before = len(_load(record))
    handle = client.send_goal("right")
    assert handle.accepted
    client.wait_for(lambda: len(_load(record)) > n_before + 2, 10, "trajectories for the goal")
    handle.cancel_goal_async()
    status, result = client.result(handle, timeout=10.0)
    assert status == GoalStatus.STATUS_CANCELED and result.reason == "canceled"
    time.sleep(0.3)
    assert _is_hold(_load(record)[-1])
    client.wait_for(
        lambda: client.last_status().state == PolicyStatus.STATE_HOLDING, 5, "holding after cancel"
    )
    # a goal preempted by a new instruction is aborted with the reason
    handle = client.send_goal("left")
    time.sleep(0.5)
    client.instruct("home")
    status, result = client.result(handle, timeout=10.0)
    assert status == GoalStatus.STATUS_ABORTED and result.reason == "preempted"
    # a goal's own timeout ends it (and holds)
    handle = client.send_goal("right", timeout_s=1.0)
    status, result = client.result(handle, timeout=10.0)
    assert status == GoalStatus.STATUS_ABORTED and result.reason == "timeout" and 0.9 < result.duration_s < 5
    assert policy.poll() is None


def test_watchdog_holds_on_stale_camera(processes, client: Client, tmp_path: Path) -> None:
    record = tmp_path / "traj.jsonl"
    start_robot(processes, "--camera-stop-after", "5", "--compressed", record=record)
    contract = tmp_path / "contract.yaml"
    from apt_core.contract import load_contract

    d = load_contract().to_dict()
    d["cameras"][0]["compressed"] = True  # CompressedImage path
    import yaml

    contract.write_text(yaml.safe_dump(d))
    # stays running; the start-jump check (tested below) is relaxed: on a loaded machine a starved joint
    # state can trip it first, which ends the task before the camera goes stale
    start_policy(processes, f"contract:={contract}", "min_subtask_s:=60.0", "max_start_jump:=10.0")
    client.wait_ready()
    assert client.instruct("left").accepted
    client.wait_for(
        lambda: client.last_status().state == PolicyStatus.STATE_RUNNING and len(client.chunks) > 2,
        10,
        "running on compressed images",
    )
    # (a camera/joint-state skew hold may come first while the last image ages, and a process stall
    # on a loaded machine can make one frame 1.2 s old and cause a hold that resumes when the next
    # frame arrives (CI, session 11); wait for the hold of the stopped camera: older than any stall)
    client.wait_for(
        lambda: (
            (st := client.last_status()).state == PolicyStatus.STATE_HOLDING
            and "camera front" in st.fault
            and st.image_age > 2.5
        ),
        15,
        "watchdog hold",
    )
    st = client.last_status()
    assert "camera front" in st.fault and st.image_age > 1.0
    time.sleep(0.5)
    trajs = _load(record)
    assert _is_hold(trajs[-1])
    n = len(trajs)
    time.sleep(1.5)
    assert len(_load(record)) == n, "no new chunks are published while the camera is stale"


def test_an_external_goal_on_apt_goal_reaches_the_policy(processes, client: Client, tmp_path: Path) -> None:
    """/apt/goal (PointStamped in the base frame) is passed to the policy with every observation
    until replaced or cleared (NaN); a goal in another frame is refused with a log line and changes
    nothing. The test policy's "point" puts shoulder_pan at the goal's x."""

    def pan_target() -> float | None:
        with client.lock:
            plans = [m for _, m in client.trajs if len(m.points) > 1]
        return plans[-1].points[-1].positions[0] if plans else None

    start_robot(processes, record=tmp_path / "traj.jsonl")
    policy = start_policy(processes)
    client.wait_ready()
    client.point(0.3, 0.0, 0.05)
    time.sleep(0.5)  # (the goal is latched in the node before the task starts)
    assert client.instruct("point").accepted
    client.wait_for(lambda: pan_target() is not None and abs(pan_target() - 0.3) < 1e-6, 15, "pan to 0.3")
    client.point(-0.2, 0.0, 0.05, frame="camera_link")  # refused: no TF in the node
    time.sleep(1.0)
    assert abs(pan_target() - 0.3) < 1e-6
    client.point(-0.2, 0.0, 0.05)
    client.wait_for(lambda: abs(pan_target() + 0.2) < 1e-6, 15, "pan to -0.2")
    client.point(float("nan"), 0.0, 0.0)  # cleared: "point" heads home
    client.wait_for(lambda: abs(pan_target()) < 1e-6, 15, "pan home")
    log = processes.log_text(policy)
    assert "goal in frame 'camera_link'; this node takes goals in 'base_link'" in log
    assert "goal set: [0.3, 0.0, 0.05]" in log and "goal cleared" in log
    assert policy.poll() is None


def test_refuses_policy_for_another_robot(processes, ros_env) -> None:
    proc = start_policy(processes, "policy_factory:=policies:make_wrong_joints_policy")
    # the later -p overrides the earlier policy_factory
    assert proc.wait(timeout=30) == 2
    log = processes.log_text(proc)
    assert "refusing to start" in log and "do not match the contract joints" in log
    proc = start_policy(processes, "contract:=/nonexistent.yaml")
    assert proc.wait(timeout=30) == 2
    assert "contract file not found" in processes.log_text(proc)


def test_blocked_arm_trips_the_start_jump_check(processes, client: Client, tmp_path: Path) -> None:
    """The arm does not follow (blocked, or the controller is off): the plan drifts away from the
    measured state, the start-jump check refuses the next chunk and the node holds where the arm is."""
    record = tmp_path / "traj.jsonl"
    start_robot(processes, "--stuck", record=record)
    # the production joint-state timeout: it bounds how far the start check trusts an old joint state
    start_policy(processes, "max_start_jump:=0.1", "min_subtask_s:=60.0", "joint_state_timeout_s:=0.25")
    client.wait_ready()
    assert client.instruct("left").accepted
    client.wait_for(  # (watchdog or skew holds may come and go first on a loaded machine)
        lambda: (
            client.last_status().state == PolicyStatus.STATE_HOLDING
            and "start jump" in client.last_status().fault
        ),
        20,
        "start-jump hold",
    )
    st = client.last_status()
    assert (
        "start jump" in st.fault and st.task_id == ""
    )  # the task ended: no retry loop against a blocked arm
    time.sleep(1.0)
    last = _load(record)[-1]
    assert _is_hold(last) and np.allclose(last["pos"][0], 0.0, atol=1e-9)  # held at the measured state
    # and nothing published ever started far from the arm: the check allows 0.1 rad of follow error at
    # the newest joint state's stamp, plus what the plan commanded between that stamp and its start,
    # at most 0.4 rad/s x (0.25 s joint-state timeout + ~0.05 s lead time and transport)
    for tr in _load(record):
        assert np.abs(tr["pos"][0] - tr["q"]).max() <= 0.1 + 0.4 * 0.3


def test_a_chain_advances_on_the_subtasks_done_topic(processes, client: Client, tmp_path: Path) -> None:
    """The contract's subtasks_done_topic (std_msgs/UInt32, the simulator's count of subtasks done in
    order) completes each step of "A, then B"; the arm settling does not, while the count says no."""
    from std_msgs.msg import UInt32

    from apt_core.contract import load_contract

    topic = load_contract().subtasks_done_topic
    pub = client.node.create_publisher(UInt32, topic, 10)
    count = [0]
    client.node.create_timer(0.1, lambda: pub.publish(UInt32(data=count[0])))
    start_robot(processes, record=tmp_path / "traj.jsonl")
    policy = start_policy(processes)
    client.wait_ready()
    client.wait_for(lambda: pub.get_subscription_count() > 0, 15, f"{topic} subscriber")
    feedback: list = []
    handle = client.send_goal("left, then right", feedback=feedback)
    assert handle.accepted
    time.sleep(6.0)  # the arm is at "left" and has settled long ago (min_subtask_s is 1 s)
    st = client.last_status()
    assert st.state == PolicyStatus.STATE_RUNNING and st.subtask_index == 0, (st.state, st.subtask_index)
    count[0] = 1
    client.wait_for(lambda: client.last_status().subtask_index == 1, 10, "second subtask")
    count[0] = 2
    status, result = client.result(handle, timeout=20.0)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.subtasks_completed == 2, result.reason
    assert policy.poll() is None
