"""Missed-grasp starts (TabletopEnv(missed_grasp=...)): where the arm starts, that nothing is touched,
that the draw is the scene seed's, and that the expert recovers from it (real physics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apt_core.sim import tasks as T
from apt_core.sim.env import GRIPPER_MAX, HOME, MISS_HEIGHT, MISS_RADIUS, TabletopEnv
from apt_core.sim.evaluate import run_episode
from apt_core.sim.expert import ScriptedExpert


@pytest.fixture(scope="module")
def env() -> TabletopEnv:
    e = TabletopEnv(render=False, missed_grasp=1.0)
    yield e
    e.close()


def _robot_contacts(env: TabletopEnv) -> int:
    m, d = env.model, env.data
    root = m.body_rootid[m.site("tcp").bodyid]
    return sum(
        root in (m.body_rootid[m.geom_bodyid[c.geom1]], m.body_rootid[m.geom_bodyid[c.geom2]])
        for c in d.contact[: d.ncon]
    )


def test_a_missed_grasp_start_is_a_shut_empty_gripper_beside_the_named_object(env: TabletopEnv) -> None:
    started = 0
    for seed in range(12):
        env.reset(seed)
        sub = env.task.subtasks[0]
        if sub.family == "push":  # nothing to grasp: the arm starts at HOME as usual
            assert not env.started_missed
            np.testing.assert_allclose(env.joint_positions(), HOME, atol=0.02)
            continue
        assert env.started_missed, seed
        started += 1
        q, tcp, obj = env.joint_positions(), env.tcp_position(), env.body_position(sub.obj)
        assert q[6] < 2e-3  # shut
        assert not env.held_objects() and _robot_contacts(env) == 0
        r = float(np.linalg.norm(tcp[:2] - obj[:2]))
        assert MISS_RADIUS[0] - 0.005 < r < MISS_RADIUS[1] + 0.005, (seed, r)
        assert MISS_HEIGHT[0] - 0.005 < tcp[2] < MISS_HEIGHT[1] + 0.005, (seed, tcp[2])
    assert started >= 8
    # The scene seed decides: the same seed gives the same start, after any other reset.
    env.reset(1)
    first = env.joint_positions()
    env.reset(2)
    env.reset(1)
    np.testing.assert_allclose(env.joint_positions(), first, atol=1e-9)


def test_share_zero_keeps_home_and_a_half_share_draws_about_half() -> None:
    plain = TabletopEnv(render=False)
    plain.reset(1)
    assert not plain.started_missed
    np.testing.assert_allclose(plain.joint_positions(), HOME, atol=0.02)
    half = TabletopEnv(render=False, missed_grasp=0.5)
    grasps = missed = 0
    for seed in range(40):
        half.reset(seed)
        if half.task.subtasks[0].family != "push":
            grasps += 1
            missed += half.started_missed
    assert 0.25 * grasps < missed < 0.75 * grasps, (missed, grasps)


def test_a_start_beside_another_object_and_place_arm(env: TabletopEnv) -> None:
    env.reset(1)  # pick-and-place of the blue cube; the cylinder is free
    sub = env.task.subtasks[0]
    other = next(n for n in ("blue_cube", "yellow_cylinder") if n not in (sub.obj, sub.target))
    q = env.missed_grasp_start(1, near=other)
    assert q is not None
    env.place_arm(np.concatenate([q, [0.0]]))
    r_other = float(np.linalg.norm(env.tcp_position()[:2] - env.body_position(other)[:2]))
    r_named = float(np.linalg.norm(env.tcp_position()[:2] - env.body_position(sub.obj)[:2]))
    assert MISS_RADIUS[0] - 0.005 < r_other < MISS_RADIUS[1] + 0.005 and r_named > r_other
    assert env.joint_positions()[6] < 2e-3 and env.time == 0.0 and _robot_contacts(env) == 0
    with pytest.raises(ValueError, match="no object 'purple_cube' in this scene"):
        env.missed_grasp_start(1, near="purple_cube")


def test_near_any_starts_beside_objects_drawn_from_the_seed() -> None:
    env = TabletopEnv(render=False, missed_grasp=1.0, missed_grasp_near="any")
    beside_named = beside_other = 0
    for seed in range(30):
        env.reset(seed)
        if not env.started_missed:
            continue
        tcp = env.tcp_position()
        free = [n for n in T.OBJECTS if n in env.layout.poses]
        near = min(free, key=lambda n: float(np.linalg.norm(env.body_position(n)[:2] - tcp[:2])))
        named = env.task.subtasks[0].obj
        beside_named += near == named
        beside_other += near != named
        assert env.joint_positions()[6] < 2e-3 and not env.held_objects()
    assert beside_other >= 10 and beside_named >= 3, (beside_named, beside_other)
    with pytest.raises(ValueError, match="missed_grasp_near must be one of"):
        TabletopEnv(render=False, missed_grasp_near="nearest")


@pytest.mark.parametrize("share", [-0.1, 1.5, math.nan])
def test_bad_missed_grasp_share_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="missed_grasp is a share of episodes in"):
        TabletopEnv(render=False, missed_grasp=share)


def test_the_expert_opens_and_grasps_again_from_a_missed_grasp(env: TabletopEnv) -> None:
    expert = ScriptedExpert(env)
    for seed in (0, 1, 2):
        obs = env.reset(seed)
        assert env.started_missed
        expert.reset()
        chunk = expert.predict(obs, env.task.instruction)
        assert chunk[0, 6] == pytest.approx(GRIPPER_MAX)  # the first thing it does is open
        assert run_episode(env, expert, seed, "in_distribution").success, seed
