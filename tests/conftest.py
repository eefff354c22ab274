"""Shared fixtures.

ROS tests start real rclpy nodes in separate processes over loopback DDS. Every test gets its own
ROS_DOMAIN_ID (so parallel runs and other tests cannot see its nodes) and discovery is restricted to
localhost (Kilted ignores ROS_LOCALHOST_ONLY; ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST is the knob).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests where no CUDA device exists (CI never has one)."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def ros_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a ROS test: an isolated domain id on loopback. Also applied to this process."""
    # Valid ids are 0..101 (and 215..232); 0 is everyone's default, so avoid it. Random per test so
    # concurrent test runs on one machine are unlikely to share a domain.
    domain = str(random.SystemRandom().randint(1, 101))
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    return dict(os.environ)


class ProcessGroup:
    """Starts Python processes for a test and always stops them (SIGINT, then SIGKILL)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def python(self, *args: str, name: str = "proc", env: dict[str, str] | None = None) -> subprocess.Popen:
        """Run `python *args` (e.g. "-m", "apt_sim.sim_node", ...) with output logged to a file."""
        log = self.log_dir / f"{name}-{len(self.procs)}.log"
        fh = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, *args],
            env={**self.env, **(env or {})},
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self.procs.append((proc, log))
        return proc

    def log_text(self, proc: subprocess.Popen) -> str:
        for p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace")
        raise KeyError("unknown process")

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def dump_logs(self) -> str:
        out = []
        for proc, log in self.procs:
            text = log.read_text(errors="replace")
            out.append(f"----- {log.name} (rc={proc.returncode}) -----\n{text[-4000:]}")
        return "\n".join(out)


@pytest.fixture
def processes(
    ros_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ProcessGroup]:
    """Start helper processes in the test's ROS domain; their logs are printed when the test fails."""
    group = ProcessGroup(ros_env, tmp_path)
    yield group
    group.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(group.dump_logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
