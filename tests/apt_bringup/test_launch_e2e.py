"""End to end without `ros2 launch`: apt-launch starts the MuJoCo sim and the policy node from the
bringup graph; apt-instruct (the CLI) drives the arm; the simulated joints move to the goal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

pytestmark = pytest.mark.ros
POLICY_TESTS = Path(__file__).resolve().parents[1] / "apt_policy"
sys.path.insert(0, str(POLICY_TESTS))

from policies import GOALS  # noqa: E402
from rosclient import Client  # noqa: E402


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "apt_policy.instruct_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_apt_launch_sim_and_apt_instruct(processes, ros_env) -> None:
    env = {"PYTHONPATH": f"{POLICY_TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    launcher = processes.python(
        "-m",
        "apt_bringup.graph",
        "sim:=true",
        "policy_factory:=policies:make_goal_policy",
        name="apt-launch",
        env=env,
    )
    client = Client()
    try:
        latest: dict[str, np.ndarray] = {}

        def on_js(m: JointState) -> None:
            latest["q"] = np.array(
                [m.position[list(m.name).index("shoulder_pan")], m.position[list(m.name).index("elbow")]]
            )

        client.node.create_subscription(JointState, "/joint_states", on_js, qos_profile_sensor_data)
        client.wait_ready(timeout=60)
        client.wait_for(lambda: "q" in latest, 30, "sim joint states")
        bad = _cli("")
        assert bad.returncode != 0
        bad = _cli("\x1b[2J")
        assert bad.returncode == 1 and "non-printable" in bad.stdout
        ok = _cli("left")
        assert ok.returncode == 0 and ok.stdout.startswith("accepted task-"), ok.stdout + ok.stderr
        goal = np.array([GOALS["left"][0], GOALS["left"][2]])
        client.wait_for(lambda: np.abs(latest["q"] - goal).max() < 0.05, 40, f"sim arm at the goal {goal}")
        stop = _cli("--stop")
        assert stop.returncode == 0 and "holding" in stop.stdout
        assert launcher.poll() is None
    finally:
        client.close()
    os.killpg(launcher.pid, signal.SIGINT)
    assert launcher.wait(timeout=20) == 0
    log = processes.log_text(launcher)
    assert "[apt_policy]" in log and "[apt_sim]" in log and "exited with" not in log
    time.sleep(0.1)
