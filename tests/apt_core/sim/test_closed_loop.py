"""`evaluate --runtime`: episodes through the policy node's runtime on simulated time (the ROS loop
without ROS), with the node's defaults, a simulated inference latency, and no crash on a bad model."""

from __future__ import annotations

import numpy as np
import pytest

from apt_core.runtime.engine import RuntimeConfig
from apt_core.runtime.stitching import StitchConfig
from apt_core.runtime.tasks import CompletionConfig
from apt_core.sim import evaluate as ev
from apt_core.sim.closed_loop import RuntimeLoop
from apt_core.sim.env import TabletopEnv
from apt_core.sim.expert import ScriptedExpert
from apt_core.types import Observation, PolicyWrapper


@pytest.fixture(scope="module")
def env():
    e = TabletopEnv()
    yield e
    e.close()


def test_the_loops_runtime_defaults_are_the_nodes():
    """RuntimeLoop builds its RuntimeConfig from the defaults: they must be the node's parameters'."""
    from apt_policy.params import POLICY_PARAMS  # the node's parameter table (no rclpy in it)

    p = {q.name: q.default for q in POLICY_PARAMS}
    cfg, st, cc = RuntimeConfig(dt=0.1, chunk_length=16), StitchConfig(dt=0.1), CompletionConfig()
    loop = RuntimeLoop()
    assert (loop.replan_steps, loop.stitch_method) == (p["replan_steps"], p["stitch_method"])
    for name in ("lead_time_s", "max_skew_s", "joint_state_timeout_s", "image_timeout_s", "task_timeout_s"):
        assert getattr(cfg, name) == p[name], name
    for name in ("ensemble_chunks", "ensemble_decay", "blend_steps"):
        assert getattr(st, name) == p[name], name
    for name in ("min_subtask_s", "settle_motion", "settle_chunks"):
        assert getattr(cc, name) == p[name], name


def test_the_expert_completes_a_task_and_a_chain_through_the_runtime(env):
    loop = RuntimeLoop()
    expert = ScriptedExpert(env)
    place = loop(env, expert, 1001, "in_distribution")
    # "push the blue cube to the orange square, then place the green block into the blue bowl":
    # the runtime splits it and switches to the second subtask on the simulator's counter
    chain = loop(env, expert, 1001, "chain")
    assert place.success and place.subtasks_done == 1 and 0 < place.steps < 150
    assert chain.success and chain.subtasks_done == 2 and 0 < chain.steps < 300
    assert place.lifted and place.min_distance < ev.REACH_RADIUS  # the meter watched every period
    s = loop.stats
    assert s.episodes == 2 and s.faults == 0
    assert s.plans >= (place.steps + chain.steps) // loop.replan_steps - 4  # a chunk every 4 periods
    assert np.allclose(s.plan_ages, 0.02)  # no latency: a plan starts lead_time_s after its observation


class _Recording(PolicyWrapper):
    """Wraps a ChunkPolicy and records the observation stamps it was asked about."""

    def __init__(self, policy) -> None:
        super().__init__(policy)
        self.stamps = []

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        self.stamps.append(obs.stamp)
        return self.policy.predict(obs, instruction)


def test_latency_runs_the_world_on_before_the_plan_starts(env):
    rec = _Recording(ScriptedExpert(env))
    loop = RuntimeLoop(latency_s=0.25)
    res = loop(env, rec, 1000, "in_distribution", max_steps=40)
    assert res.steps == 40 or res.success
    # every plan starts latency + lead_time_s after the observation it was computed from (the last
    # one sooner when the episode's time ran out during its inference: nothing moves after it)
    ages = loop.stats.plan_ages
    assert len(ages) >= 8 and np.allclose(ages[:-1], 0.27) and ages[-1] <= 0.27 + 1e-9
    # and observations still come every replan_steps periods (the latency is shorter than that)
    gaps = np.diff(rec.stamps)
    assert np.allclose(gaps, 0.4)
    with pytest.raises(ValueError, match="latency_s"):
        RuntimeLoop(latency_s=-0.1)


class _Broken:
    """A model that fails on every call."""

    def __init__(self, expert) -> None:
        self.joint_names, self.chunk_length, self.rate_hz = (
            expert.joint_names,
            expert.chunk_length,
            expert.rate_hz,
        )

    def reset(self) -> None:
        pass

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        raise RuntimeError("weights went missing")


def test_a_failing_model_holds_the_arm_and_the_episode_fails_without_crashing(env):
    loop = RuntimeLoop()
    env.reset(1000, "in_distribution")
    res = loop(env, _Broken(ScriptedExpert(env)), 1000, "in_distribution", max_steps=12)
    assert not res.success and res.steps == 12 and loop.stats.plans == 0
    assert loop.stats.holds == 1  # one hold where the arm is, then retries that wait
    assert not res.moved


def test_cli_runs_the_runtime_and_refuses_mixed_flags(tmp_path, capsys):
    out = tmp_path / "eval"
    assert ev.main(["--splits", "in_distribution", "--episodes", "1", "--runtime", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "runtime: " in printed and "tasks ended by the start-jump check over 1 episodes" in printed
    rows = (out / "episodes.csv").read_text().splitlines()
    assert len(rows) == 2 and ",True," in rows[1]  # the expert succeeded
    for bad, says in (
        (["--latency", "0.2"], "need --runtime"),
        (["--runtime", "--node-limits"], "--node-limits is for the plain harness"),
        (["--runtime", "--chain-text", "whole"], "--chain-text must be 'subtask'"),
        (["--runtime", "--latency", "-1"], "latency_s must be >= 0"),
    ):
        with pytest.raises(SystemExit):
            ev.main(["--episodes", "1", "--out", str(out), *bad])
        assert says in capsys.readouterr().err


def test_evaluate_takes_the_loop_as_its_episode_runner(env):
    loop = RuntimeLoop()
    res = ev.evaluate(ScriptedExpert(env), ["in_distribution"], 1, 1001, env=env, episode=loop)
    plain = ev.evaluate(ScriptedExpert(env), ["in_distribution"], 1, 1001, env=env)
    assert loop.stats.episodes == 1 and loop.stats.plans > 0
    a, b = res.episodes[0], plain.episodes[0]
    assert (a.instruction, a.success, a.lifted) == (b.instruction, True, True)
