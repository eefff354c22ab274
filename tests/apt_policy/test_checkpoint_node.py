"""The node serving a tiny real checkpoint (debug preset: real transformer backbone and expert),
and refusing one made for other joints."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoints import make_debug_checkpoint
from rosclient import Client, start_robot

from apt_msgs.msg import PolicyStatus

pytestmark = pytest.mark.ros


def _start(processes, ckpt: Path, name: str = "policy", *params: str):
    return processes.python(
        "-m",
        "apt_policy.policy_node",
        "--ros-args",
        *(arg for param in params for arg in ("-p", param)),
        "-p",
        f"checkpoint:={ckpt}",
        "-p",
        "joint_state_timeout_s:=1.0",
        "-p",
        "image_timeout_s:=1.0",
        "-p",
        "min_subtask_s:=60.0",
        name=name,
        env={"OMP_NUM_THREADS": "1"},
    )


def test_node_runs_a_real_checkpoint(processes, client: Client, tmp_path: Path) -> None:
    ckpt = make_debug_checkpoint(tmp_path / "ckpt")
    start_robot(processes, record=tmp_path / "traj.jsonl")
    node = _start(processes, ckpt)
    client.wait_ready(timeout=60)
    r = client.instruct("pick up the red cube")
    assert r.accepted, r.message
    client.wait_for(lambda: len(client.chunks) >= 3, 30, "chunks from the real model")
    # A loaded machine can delay a camera frame past max_skew_s, and the node then holds for a
    # tick (that guard is tested in test_policy_node.py); here we need it running, eventually.
    client.wait_for(
        lambda: (
            (st := client.last_status()) is not None
            and st.state == PolicyStatus.STATE_RUNNING
            and st.last_inference_latency > 0
        ),
        10,
        "a running status with an inference latency",
    )
    ch = client.chunks[-1]
    assert ch.horizon == 16 and len(ch.positions) == 16 * 7 and ch.inference_latency > 0
    client.wait_for(lambda: len(client.trajs) >= 3, 10, "trajectories")
    assert node.poll() is None


def test_checkpoint_for_other_joints_refused(processes, ros_env, tmp_path: Path) -> None:
    ckpt = make_debug_checkpoint(tmp_path / "other", joint_names=("j1", "j2", "j3", "j4", "j5", "j6", "j7"))
    proc = _start(processes, ckpt)
    assert proc.wait(timeout=60) == 2
    log = processes.log_text(proc)
    assert "refusing to start" in log and "does not fit this robot" in log, log[-2000:]


def test_negative_noise_scale_refused(processes, ros_env, tmp_path: Path) -> None:
    """The checkpoint's sampling noise scale reaches the runner, which refuses a negative one."""
    proc = _start(processes, make_debug_checkpoint(tmp_path / "ck"), "policy", "noise_scale:=-1.0")
    assert proc.wait(timeout=60) == 2
    log = processes.log_text(proc)
    assert "refusing to start" in log and "noise_scale must be a finite number >= 0, got -1.0" in log, log[
        -2000:
    ]
