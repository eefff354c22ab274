"""Policy starts (apt_core.sim.policy_start): a policy drives for a drawn while, the clock restarts and
the expert takes over from wherever that left the scene (real physics; the scripted expert stands in
for the trained policy that `apt-record-demos --policy-start` loads)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from apt_core.sim import tasks as T
from apt_core.sim.env import GRIPPER_SHUT, HOME, TabletopEnv
from apt_core.sim.expert import ScriptedExpert
from apt_core.sim.policy_start import PolicyStart, StartOutcome


@pytest.fixture(scope="module")
def env() -> TabletopEnv:
    e = TabletopEnv(render=False)
    yield e
    e.close()


def _seed(family: str, split: str = "in_distribution", subtasks: int = 1) -> int:
    return next(
        s
        for s in range(100)
        if len(make := T.make_task(s, split)[0].subtasks) == subtasks and make[0].family == family
    )


def _finish(env: TabletopEnv, expert: ScriptedExpert, watch: str = "", max_steps: int = 400):
    """Run the expert from the present state until the task is done: the executed targets and the
    `watch` object's positions after each step."""
    executed, where, obs = [], [], env.observation()
    while not env.success() and len(executed) < max_steps:
        for a in expert.predict(obs, env.task.instruction)[:8]:
            env.step(a)
            executed.append(a)
            where.append(env.body_position(watch) if watch else None)
        obs = env.observation()
    return executed, where


def test_the_draw_is_the_scene_seeds_and_share_zero_never_drives(env: TabletopEnv) -> None:
    start = PolicyStart(ScriptedExpert(env), share=0.5, seconds=(2.0, 4.0))
    draws = [start.draw(s) for s in range(200)]
    assert draws == [start.draw(s) for s in range(200)]  # the same seed, the same draw
    driven = [d for d in draws if d > 0]
    assert 70 < len(driven) < 130 and all(2.0 <= d <= 4.0 for d in driven)
    never = PolicyStart(ScriptedExpert(env), share=0.0)
    env.reset(3)
    assert never(env, 3) == StartOutcome(0.0, False)
    np.testing.assert_allclose(env.joint_positions(), HOME, atol=0.02)


def test_a_policy_start_leaves_the_arm_where_the_policy_took_it_with_the_clock_at_zero(
    env: TabletopEnv,
) -> None:
    seed = _seed("pick_place")
    env.reset(seed)
    start = PolicyStart(ScriptedExpert(env), seconds=(1.5, 1.5))
    out = start(env, seed)
    assert out == StartOutcome(1.5, False) and start.last is out
    assert env.time == 0.0
    assert np.abs(env.joint_positions()[:6] - HOME[:6]).max() > 0.1  # it moved
    # Driven long enough, the policy finishes: nothing is left for a demonstration.
    env.reset(seed)
    assert PolicyStart(ScriptedExpert(env), seconds=(25.0, 25.0))(env, seed).completed


def test_the_expert_carries_an_object_already_in_hand(env: TabletopEnv) -> None:
    seed = _seed("pick_place")
    env.reset(seed)
    obj = env.task.subtasks[0].obj
    rest = env.body_position(obj)[2]
    driver, obs, steps = ScriptedExpert(env), env.observation(), 0
    while env.body_position(obj)[2] < rest + 0.04:  # until it is lifted 4 cm
        env.step(driver.predict(obs, env.task.instruction)[0])
        obs, steps = env.observation(), steps + 1
        assert steps < 200, "the expert never lifted the object"
    env.restart_clock()
    executed, where = _finish(env, ScriptedExpert(env), watch=obj)
    assert env.success()
    grip = np.array([a[6] for a in executed])
    opened = int(np.argmax(grip > GRIPPER_SHUT))
    # The gripper stays shut, the object in the air, until it is over the target: an expert that did
    # not know it held the object would open at once, drop it and grasp it again.
    assert opened > 0 and grip[:opened].max() < GRIPPER_SHUT
    assert min(p[2] for p in where[:opened]) > rest + 0.02
    target = env.body_position(env.task.subtasks[0].target)
    assert np.linalg.norm(where[opened][:2] - target[:2]) < 0.03


def test_the_expert_skips_the_subtasks_of_a_chain_the_policy_has_done(env: TabletopEnv) -> None:
    seed = _seed("pick_place", "chain", subtasks=2)
    env.reset(seed, "chain")
    driver, obs, steps = ScriptedExpert(env), env.observation(), 0
    while env.subtask_progress() < 1:
        for a in driver.predict(obs, env.task.instruction)[:8]:
            env.step(a)
        obs, steps = env.observation(), steps + 8
        assert steps < 400, "the expert never finished the first subtask"
    first = env.task.subtasks[0]
    where = env.body_position(first.obj).copy()
    env.restart_clock()
    executed, moves = _finish(env, ScriptedExpert(env), watch=first.obj)
    assert env.success() and env.subtask_progress() == 2
    # The first subtask's object stays where the policy put it: never picked up again.
    assert max(p[2] for p in moves) < where[2] + 0.01
    np.testing.assert_allclose(env.body_position(first.obj)[:2], where[:2], atol=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"share": 1.5}, "policy-start share must be in [0, 1], got 1.5"),
        ({"seconds": (3.0, 1.0)}, "policy-start seconds must be a range 0 < low <= high, got (3.0, 1.0)"),
        ({"seconds": (0.0, 1.0)}, "policy-start seconds must be a range 0 < low <= high"),
        ({"execute_steps": 0}, "execute_steps must be >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused_by_name(env: TabletopEnv, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PolicyStart(ScriptedExpert(env), **kwargs)
