"""`evaluate --node-limits`: chunks clamped as the policy node clamps its plans, each starting where
the previous one was cut, with the node's own default limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from apt_core.sim.env import JOINT_NAMES
from apt_core.sim.evaluate import NodeLimits
from apt_core.types import Observation

ROOT = Path(__file__).resolve().parents[3]
DT = 0.1


class _Fixed:
    """A ChunkPolicy that returns whatever chunk it is given next."""

    joint_names = JOINT_NAMES
    chunk_length = 16
    rate_hz = 1.0 / DT

    def __init__(self) -> None:
        self.next: np.ndarray | None = None

    def reset(self) -> None:
        pass

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        assert self.next is not None
        return self.next.copy()


def _obs(q: np.ndarray) -> Observation:
    return Observation(images={}, joint_positions=q)


def test_default_limits_are_the_nodes():
    from apt_policy.params import POLICY_PARAMS  # the node's parameter table (no rclpy in it)

    params = {p.name: p.default for p in POLICY_PARAMS}
    launched = yaml.safe_load((ROOT / "ros2_ws/src/apt_bringup/config/policy.yaml").read_text())
    launched = next(iter(launched.values()))["ros__parameters"]
    lim = NodeLimits(_Fixed(), 8).filter.limits
    for name in ("velocity_limit", "acceleration_limit", "max_start_jump"):
        assert params[name] == launched[name]
    assert lim.max_start_jump == params["max_start_jump"]  # the runtime loop's start-jump check uses it
    # the URDF may only tighten the velocity (its arm joints allow 2.0 rad/s)
    assert max(lim.velocity_max) == params["velocity_limit"]
    assert set(lim.acceleration_max) == {params["acceleration_limit"]}


def test_a_jump_is_clamped_and_the_next_chunk_starts_where_this_one_was_cut():
    inner = _Fixed()
    wrap = NodeLimits(inner, execute_steps=8)
    lim = wrap.filter.limits
    q0 = np.zeros(len(JOINT_NAMES))
    inner.next = np.tile(q0 + 1.0, (16, 1))  # every joint 1 rad away at the first step
    out = wrap.predict(_obs(q0), "go")
    assert wrap.clamped_chunks == 1
    steps = np.diff(np.vstack([q0, out]), axis=0) / DT
    assert np.all(np.abs(steps) <= lim.vmax + 1e-9)
    assert np.all(np.abs(np.diff(np.vstack([np.zeros(len(q0)), steps]), axis=0)) / DT <= lim.amax + 1e-9)
    # from rest the first step may move amax * dt^2 (0.05 rad), not the 1 rad asked for
    assert np.all(np.abs(out[0]) <= lim.amax * DT * DT + 1e-9)

    # the next chunk starts at the 8th point executed, at its velocity: far from the measured state
    inner.next = np.tile(out[7] + 0.001, (16, 1))
    out2 = wrap.predict(_obs(np.full(len(q0), -2.0)), "go")
    assert np.all(np.abs(out2[0] - out[7]) <= lim.vmax * DT + 1e-9)
    v_cut = (out[7] - out[6]) / DT
    assert np.all(np.abs((out2[0] - out[7]) / DT - v_cut) <= lim.amax * DT + 1e-9)

    # reset: from the measured joints at rest again
    wrap.reset()
    q1 = np.full(len(q0), 0.3)
    inner.next = np.tile(q1, (16, 1))
    np.testing.assert_allclose(wrap.predict(_obs(q1), "go"), inner.next)


def test_a_chunk_within_the_limits_is_unchanged():
    inner = _Fixed()
    wrap = NodeLimits(inner, execute_steps=8)
    q0 = np.zeros(len(JOINT_NAMES))
    # 0.1 rad/s, reached from rest in one step: 1 rad/s^2
    inner.next = q0 + 0.01 * np.arange(1, 17)[:, None] * np.ones(len(q0))
    np.testing.assert_allclose(wrap.predict(_obs(q0), "go"), inner.next, atol=1e-12)
    assert wrap.clamped_chunks == 0


def test_cli_wraps_the_policy(tmp_path, capsys):
    from apt_core.sim import evaluate

    argv = ["--splits", "in_distribution", "--episodes", "1", "--seed", "7100", "--out", str(tmp_path)]
    assert evaluate.main([*argv, "--node-limits"]) == 0
    out = capsys.readouterr().out
    assert "node limits: clamped" in out
    assert (tmp_path / "episodes.csv").exists()
    assert evaluate.main(argv) == 0
    assert "node limits" not in capsys.readouterr().out
