"""apt-instruct against a running policy node: --append, --wait (follows /apt/status), --stop, and
the exit status when no node answers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rosclient import Client, start_policy, start_robot

pytestmark = pytest.mark.ros


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "apt_policy.instruct_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_apt_instruct_wait_append_stop(processes, client: Client) -> None:
    start_robot(processes)
    start_policy(processes)
    client.wait_ready()
    r = _cli("--wait", "--wait-timeout", "40", "left, then right")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("accepted task-1: started: 2 subtask(s): left | right")
    assert "  subtask 1/2: left" in lines and "  subtask 2/2: right" in lines and lines[-1] == "done: task-1"
    r = _cli("wander")  # never settles: the next instruction must queue behind it, whatever the timing
    assert r.returncode == 0
    r = _cli("--append", "left")
    assert r.returncode == 0 and "queued at position 1" in r.stdout
    r = _cli("--stop")
    assert r.returncode == 0 and "holding" in r.stdout


def test_apt_instruct_without_node(ros_env) -> None:
    r = _cli("--timeout", "1", "left")
    assert r.returncode == 2 and "no policy node" in r.stderr
