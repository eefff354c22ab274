"""TabletopEnv: rendering, physics sanity (a grasped object lifts, a dropped one falls), the expert's
success rate through the evaluation harness, and the harness's tables."""

from __future__ import annotations

import csv
import math

import mujoco
import numpy as np
import pytest

from apt_core.sim import tasks as T
from apt_core.sim.env import HOME, TabletopEnv
from apt_core.sim.evaluate import REACH_RADIUS, evaluate, wilson_interval, write_results
from apt_core.sim.expert import ScriptedExpert
from apt_core.types import PolicyWrapper


@pytest.fixture(scope="module")
def env() -> TabletopEnv:
    e = TabletopEnv(image_size=64)
    yield e
    e.close()


def test_observation_and_render(env: TabletopEnv) -> None:
    obs = env.reset(3)
    img = obs.images["front"]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 5
    assert obs.joint_positions.shape == (7,) and obs.stamp == 0.0
    np.testing.assert_allclose(obs.joint_positions, HOME, atol=0.02)
    assert env.render("top").shape == (64, 64, 3)
    assert TabletopEnv(image_size=(96, 48), render=True).render().shape == (48, 96, 3)


def test_reset_is_deterministic_and_instruction_override(env: TabletopEnv) -> None:
    env.reset(5, "paraphrase")
    a = {n: env.body_position(n) for n in T.OBJECTS}
    instr = env.task.instruction
    env.reset(5, "paraphrase")
    assert env.task.instruction == instr
    for n in T.OBJECTS:
        np.testing.assert_allclose(env.body_position(n), a[n], atol=1e-9)
    env.reset(5, instruction="stack the red cube on the blue cube")
    assert env.task.subtasks == (T.Subtask("stack", "red_cube", "blue_cube"),)
    with pytest.raises(T.TaskError):
        env.reset(5, instruction="fly to the moon")


def test_step_validates_targets(env: TabletopEnv) -> None:
    env.reset(0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(7, np.nan))


def test_arm_tracks_targets_and_time_advances(env: TabletopEnv) -> None:
    env.reset(0)
    target = HOME.copy()
    target[0] += 0.3
    for _ in range(10):
        env.step(target)
    assert abs(env.time - 1.0) < 1e-9
    np.testing.assert_allclose(env.joint_positions()[:6], target[:6], atol=0.02)


def test_dropped_object_falls(env: TabletopEnv) -> None:
    env.reset(0)
    m, d = env.model, env.data
    adr = m.jnt_qposadr[m.joint("red_cube").id]
    d.qpos[adr : adr + 3] = (0.3, -0.25, 0.3)
    mujoco.mj_forward(m, d)
    env.step(HOME)
    assert env.body_position("red_cube")[2] < 0.3 - 0.04  # ~0.05 m after 0.1 s of free fall
    for _ in range(10):
        env.step(HOME)
    assert abs(env.body_position("red_cube")[2] - 0.02) < 0.003  # resting on the table


def test_no_welds_grasp_holds_by_friction(env: TabletopEnv) -> None:
    assert all(t == mujoco.mjtEq.mjEQ_JOINT for t in env.model.eq_type)  # only the finger coupling
    env.reset(1, instruction="put the red cube in the blue bowl")
    expert = ScriptedExpert(env)
    obs = env.observation()
    max_z, held_high = 0.0, False
    for step in range(80):
        if step % 8 == 0:
            chunk, i = expert.predict(obs, env.task.instruction), 0
        env.step(chunk[i])
        i += 1
        obs.stamp = env.time
        z = env.body_position("red_cube")[2]
        max_z = max(max_z, z)
        held_high |= z > 0.1 and "red_cube" in env.held_objects()
    assert held_high and max_z > 0.1  # lifted 8+ cm while touching the pads


def test_expert_success_rate_at_least_95_percent(env: TabletopEnv) -> None:
    res = evaluate(
        ScriptedExpert(env), ["in_distribution", "unseen_combination"], n_episodes=12, seed=100, env=env
    )
    rate = sum(e.success for e in res.episodes) / len(res.episodes)
    assert rate >= 0.95, [(e.seed, e.instruction) for e in res.episodes if not e.success]
    # the partial-progress measures agree: every successful expert episode reached and moved its object
    ok = [e for e in res.episodes if e.success]
    assert all(e.min_distance <= REACH_RADIUS and e.moved for e in ok), [
        (e.seed, e.min_distance, e.moved) for e in ok
    ]
    assert sum(s.reached for s in res.summary) >= len(ok)
    # ... and every successful grasp shut the gripper at the object and lifted it; pushes never count
    grasps = [e for e in ok if e.family != "push"]
    assert grasps and all(e.grasp_offset < 0.01 and e.lifted and not e.wrong_object for e in grasps), [
        (e.seed, e.grasp_offset, e.lifted, e.wrong_object) for e in grasps
    ]
    pushes = [e for e in res.episodes if e.family == "push"]
    assert all(math.isnan(e.grasp_offset) and not e.lifted and not e.wrong_object for e in pushes)


def test_expert_solves_chains(env: TabletopEnv) -> None:
    res = evaluate(ScriptedExpert(env), ["chain"], n_episodes=4, seed=200, env=env)
    assert all(e.success and e.subtasks_done == 2 for e in res.episodes)


class Heard(PolicyWrapper):
    """Wraps a policy and keeps every instruction it was given, in order."""

    def __init__(self, policy) -> None:
        super().__init__(policy)
        self.heard = []

    def predict(self, obs, instruction: str):
        if not self.heard or self.heard[-1] != instruction:
            self.heard.append(instruction)
        return self.policy.predict(obs, instruction)


@pytest.mark.parametrize("chain_text", ["subtask", "whole"])
def test_a_chain_reaches_the_policy_one_subtask_at_a_time_as_the_node_gives_it(
    env: TabletopEnv, chain_text: str
) -> None:
    pol = Heard(ScriptedExpert(env))
    (ep,) = evaluate(pol, ["chain"], n_episodes=1, seed=201, env=env, chain_text=chain_text).episodes
    assert ep.success and ep.subtasks_done == 2
    first, second = ep.instruction.split(", then ")
    assert pol.heard == ([first, second] if chain_text == "subtask" else [ep.instruction])
    with pytest.raises(ValueError, match="chain_text must be one of"):
        evaluate(pol, ["chain"], n_episodes=1, seed=201, env=env, chain_text="both")


def test_current_subtask_follows_progress() -> None:
    env = TabletopEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.current_subtask()
    env.reset(200, "chain")
    first, second = env.task.subtasks
    assert env.current_subtask() == first
    env._progress = 1  # what _update_progress sets once the first subtask is done
    assert env.current_subtask() == second
    env._progress = 2  # all done: still the last one
    assert env.current_subtask() == second


class HoldPolicy:
    """Never moves: the harness must report failure for it."""

    joint_names = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3", "gripper")
    chunk_length, rate_hz = 16, 10.0

    def reset(self) -> None:
        pass

    def predict(self, obs, instruction):
        return np.repeat(obs.joint_positions[None], 16, axis=0)


def test_harness_reports_failures_and_writes_tables(env: TabletopEnv, tmp_path) -> None:
    res = evaluate(
        HoldPolicy(), ["in_distribution", "paraphrase"], n_episodes=2, seed=0, max_steps=5, env=env
    )
    assert [s.successes for s in res.summary] == [0, 0] and all(e.steps == 5 for e in res.episodes)
    # holding still at home neither reaches nor moves the object (layouts keep objects 0.28 m+ away)
    assert all(e.min_distance > 0.1 and not e.moved for e in res.episodes)
    assert [(s.reached, s.moved) for s in res.summary] == [(0, 0), (0, 0)]
    assert all(math.isnan(e.grasp_offset) and not e.lifted for e in res.episodes)  # never shut the gripper
    paths = write_results(res, tmp_path)
    rows = list(csv.DictReader(paths["summary"].open()))
    assert [r["split"] for r in rows] == ["in_distribution", "paraphrase"]
    assert "| in_distribution | 2 | 0 | 0.0% |" in paths["markdown"].read_text()
    assert "| 0/2 | 0/2 |" in paths["markdown"].read_text()
    assert "| 0/2 | n/a | 0/2 |" in paths["markdown"].read_text()  # lifted, grasp offset, wrong object
    with pytest.raises(ValueError, match="unknown split"):
        evaluate(HoldPolicy(), ["bogus"], env=env)


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


class ShutPolicy(HoldPolicy):
    """Holds the arm still and shuts the gripper where it is, far from every object."""

    def predict(self, obs, instruction):
        chunk = np.repeat(obs.joint_positions[None], 16, axis=0)
        chunk[:, 6] = 0.0
        return chunk


def test_harness_measures_where_a_grasp_shut(env: TabletopEnv) -> None:
    res = evaluate(ShutPolicy(), ["in_distribution"], n_episodes=6, seed=0, max_steps=3, env=env)
    grasps = [e for e in res.episodes if e.family != "push"]
    assert grasps, [e.family for e in res.episodes]
    for e in grasps:  # shut at home: the offset is the TCP's distance to the object there
        env.reset(e.seed, e.split)
        dist = {o: np.linalg.norm(env.tcp_position() - env.body_position(o)) for o in T.OBJECTS}
        named = env.task.subtasks[0].obj
        assert e.grasp_offset == pytest.approx(dist[named], abs=0.005) and e.grasp_offset > 0.1
        assert e.wrong_object == (min(dist, key=dist.get) != named) and not e.lifted
    (s,) = res.summary
    assert s.lifted == 0 and s.median_grasp_offset == pytest.approx(
        np.median([e.grasp_offset for e in grasps])
    )
    assert s.wrong_object == sum(e.wrong_object for e in grasps)
    assert {e.wrong_object for e in grasps} == {True, False}  # these seeds have both cases


def test_reset_to_recording_finds_the_scene_by_the_bags_seed_and_checks_its_instruction() -> None:
    from apt_core.sim.env import SceneMismatchError, recorded_seed, reset_to_recording

    assert recorded_seed("/data/demos/episode_000123") == 123
    assert recorded_seed("/data/demos/take_3") is None
    instruction = T.make_task(123, "paraphrase")[0].instruction
    assert instruction != T.make_task(123, "in_distribution")[0].instruction
    env = TabletopEnv()
    try:
        reset_to_recording(env, "/data/demos/episode_000123", instruction, "paraphrase")
        assert env.task.instruction == instruction
        # the same seed drawn from another split asks another instruction: refused, naming the bag
        with pytest.raises(
            SceneMismatchError, match=r"episode_000123: the scene of seed 123 asks .*wrong --split"
        ):
            reset_to_recording(env, "/data/demos/episode_000123", instruction, "in_distribution")
        with pytest.raises(SceneMismatchError, match="take_3: no scene seed in its bag's name"):
            reset_to_recording(env, "/data/demos/take_3", instruction, "paraphrase")
    finally:
        env.close()
