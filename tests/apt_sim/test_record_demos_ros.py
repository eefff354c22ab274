"""`apt-record-demos` end to end: sim node + expert client + recorder over DDS -> mcap bags that the
project's rosbag2 reader and converter accept."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from apt_core.contract import load_contract
from apt_core.data.bag_reader import read_bag
from apt_core.sim.env import HOME
from apt_core.sim.tasks import make_task

C = load_contract()


def _wait(proc, timeout: float) -> int:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.2)
    assert proc.poll() is not None, "recorder did not finish in time"
    return proc.returncode


@pytest.mark.ros
def test_record_demos_writes_one_mcap_bag_per_successful_episode(processes, tmp_path: Path) -> None:
    out = tmp_path / "demos"
    proc = processes.python(
        "-m", "apt_sim.record_demos", "--episodes", "2", "--seed", "3", "--out", str(out), name="rec"
    )
    assert _wait(proc, 120) == 0, processes.dump_logs()
    bags = sorted(p for p in out.iterdir() if p.is_dir())
    assert [b.name for b in bags] == ["episode_000003", "episode_000004"]
    assert not list(out.glob(".*.tmp"))  # temporary folders renamed or removed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 2

    for bag, seed in zip(bags, (3, 4), strict=True):
        instruction = make_task(seed)[0].instruction
        assert list(bag.glob("*.mcap")), "mcap storage expected"
        with AnyReader([bag]) as r:
            counts = {c.topic: c.msgcount for c in r.connections}
            for topic in (
                C.joint_state_topic,
                C.cameras[0].topic,
                C.cameras[0].info_topic,
                C.controller_topic,
            ):
                assert counts[topic] > 10 if topic != C.controller_topic else counts[topic] > 2, topic
            assert counts[C.instruction_topic] == 1
            texts, stamps = [], []
            # Only these topics: rosbags' strict CDR reader rejects rclpy's trailing padding after empty
            # arrays (JointTrajectory points), as with real `ros2 bag record` bags; the project's
            # reader below decodes those leniently.
            wanted = [c for c in r.connections if c.topic in (C.instruction_topic, C.cameras[0].topic)]
            for conn, t, raw in r.messages(connections=wanted):
                msg = r.deserialize(raw, conn.msgtype)
                if conn.topic == C.instruction_topic:
                    texts.append(msg.data)
                if conn.topic == C.cameras[0].topic:
                    stamps.append(t)
                    assert (msg.width, msg.height, msg.encoding) == (128, 128, "rgb8")
            assert texts == [instruction]
            # Log times follow the virtual clock: 10 Hz frames although recorded faster than real time.
            assert np.allclose(np.diff(stamps), 1e8, atol=1e3)
        streams = read_bag(bag, C)
        assert streams.instructions[0][1] == instruction
        assert streams.joint_pos.shape[1] == 7 and not streams.skips.lines()
        assert len(streams.trajectories) == counts[C.controller_topic]
        # The last frames show the finished task: the recorder stops after success has settled.
        assert "success: 'true'" in (bag / "metadata.yaml").read_text()


@pytest.mark.ros
def test_missed_grasp_demos_start_shut_and_open_first(processes, tmp_path: Path) -> None:
    out = tmp_path / "demos"
    seed = 1  # a pick-and-place: something to grasp
    proc = processes.python(
        "-m", "apt_sim.record_demos", "--episodes", "1", "--seed", str(seed), "--missed-grasp", "1",
        "--out", str(out), name="rec",
    )  # fmt: skip
    assert _wait(proc, 120) == 0, processes.dump_logs()
    (ep,) = json.loads((out / "summary.json").read_text())["episodes"]
    assert ep["missed_start"] and ep["success"]
    bag = out / f"episode_{seed:06d}"
    assert "missed_grasp_start: 'true'" in (bag / "metadata.yaml").read_text()
    streams = read_bag(bag, C)
    grip = streams.joint_pos[:, 6]
    assert grip[0] < 2e-3  # the first frame shows the gripper shut on nothing
    assert grip.max() > 0.05  # and the demo opens it again before the grasp


@pytest.mark.ros
def test_record_demos_keeps_only_the_families_asked_for(processes, tmp_path: Path) -> None:
    out = tmp_path / "demos"
    pushes = [s for s in range(6) if make_task(s)[0].family == "push"]
    assert pushes and len(pushes) < 6  # seeds 0-5 hold pushes and other tasks
    proc = processes.python(
        "-m", "apt_sim.record_demos", "--episodes", "6", "--seed", "0", "--families", "push",
        "--out", str(out), name="rec",
    )  # fmt: skip
    assert _wait(proc, 120) == 0, processes.dump_logs()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"episode_{s:06d}" for s in pushes]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["skipped"], summary["families"]) == (
        len(pushes),
        6 - len(pushes),
        ["push"],
    )
    assert f"({6 - len(pushes)} seeds of other families skipped)" in processes.log_text(proc)


@pytest.mark.ros
def test_policy_start_demos_begin_where_the_shipped_policy_left_the_arm(processes, tmp_path: Path) -> None:
    out, seed = tmp_path / "demos", 1  # a pick-and-place
    default = Path(__file__).resolve().parents[2] / "ros2_ws/src/apt_bringup/policies/default"
    proc = processes.python(
        "-m", "apt_sim.record_demos", "--episodes", "1", "--seed", str(seed), "--out", str(out),
        "--policy-start", str(default), "--policy-start-seconds", "2.5", "2.5", name="rec",
    )  # fmt: skip
    assert _wait(proc, 180) == 0, processes.dump_logs()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_start"] == {"share": 1.0, "seconds": [2.5, 2.5]}
    (ep,) = summary["episodes"]
    assert ep["policy_start_s"] == 2.5 and not ep["policy_completed"] and ep["success"]
    bag = out / f"episode_{seed:06d}"
    assert "policy_start_s: '2.5'" in (bag / "metadata.yaml").read_text()
    streams = read_bag(bag, C)
    # The first recorded frame is where 2.5 s of the policy took the arm, not the home pose every
    # scripted demonstration starts from; the recording's clock starts there.
    assert np.abs(streams.joint_pos[0, :6] - HOME[:6]).max() > 0.1
    assert (streams.joint_t[-1] - streams.joint_t[0]) * 1e-9 == pytest.approx(ep["sim_seconds"], abs=0.3)


@pytest.mark.ros
def test_a_chain_bag_counts_its_subtasks_as_they_are_done(processes, tmp_path: Path) -> None:
    # /apt_sim/subtasks_done is what lets the policy node finish the first step of "A, then B"
    # (the success topic is true only once the whole chain is done); the recorder keeps it too.
    out, seed = tmp_path / "demos", 2
    task = make_task(seed, "chain")[0]
    assert len(task.subtasks) == 2
    proc = processes.python(
        "-m", "apt_sim.record_demos", "--episodes", "1", "--seed", str(seed), "--split", "chain",
        "--out", str(out), name="rec",
    )  # fmt: skip
    assert _wait(proc, 180) == 0, processes.dump_logs()
    bag = out / f"episode_{seed:06d}"
    counts, success = [], []
    with AnyReader([bag]) as r:
        wanted = [c for c in r.connections if c.topic in (C.subtasks_done_topic, C.success_topic)]
        for conn, t, raw in r.messages(connections=wanted):
            msg = r.deserialize(raw, conn.msgtype)
            (counts if conn.topic == C.subtasks_done_topic else success).append((t, msg.data))
    values = [v for _, v in counts]
    assert values[0] == 0 and values[-1] == 2 and values == sorted(values), values[:5]
    first_done = next(t for t, v in counts if v == 1)
    # the first subtask is counted done well before the chain succeeds, while success is still false
    first_success = next(t for t, v in success if v)
    assert first_success - first_done > 1e9
    assert not any(v for t, v in success if t <= first_done)


@pytest.mark.ros
def test_record_demos_refuses_to_share_its_domain_with_another_simulator(processes, tmp_path: Path) -> None:
    # A second recorder started without its own ROS_DOMAIN_ID would drive both arms and mix their
    # joint states: it must refuse before recording anything.
    sim = processes.python("-m", "apt_sim.sim_node", name="other-sim")
    end = time.monotonic() + 60
    while "apt_sim ready" not in processes.log_text(sim) and time.monotonic() < end:
        assert sim.poll() is None, processes.dump_logs()
        time.sleep(0.2)
    out = tmp_path / "demos"
    rec = processes.python("-m", "apt_sim.record_demos", "--episodes", "1", "--out", str(out), name="rec")
    assert _wait(rec, 60) == 1, processes.dump_logs()
    log = processes.log_text(rec)
    assert "1 other publisher(s) on /joint_states" in log and "ROS_DOMAIN_ID=" in log, log
    assert "Traceback" not in log
    assert not out.exists() or not any(out.iterdir())  # no bag, not even a partial one


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--episodes", "0"], "--episodes must be >= 1"),
        (["--disturbance", "0.5"], "--disturbance must be in [0, 0.2] rad, got 0.5"),
        (["--missed-grasp", "1.5"], "--missed-grasp is a share of episodes in [0, 1], got 1.5"),
        (["--missed-grasp-near", "nearest"], "argument --missed-grasp-near: invalid choice: 'nearest'"),
        (["--families", "throw"], "argument --families: invalid choice: 'throw'"),
        (
            ["--policy-start-share", "0.5"],
            "--policy-start-share and --policy-start-seconds need --policy-start",
        ),
        (["--policy-start", "no/such/policy"], "--policy-start no/such/policy: "),
        (
            [
                "--policy-start",
                "any/policy",
                "--policy-start-seconds",
                "4",
                "2",
            ],
            "policy-start seconds must be a range 0 < low <= high, got [4.0, 2.0]",
        ),
    ],
)
def test_record_demos_cli_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    import subprocess

    r = subprocess.run(
        [sys.executable, "-m", "apt_sim.record_demos", *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and message in r.stderr
