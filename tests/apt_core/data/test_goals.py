"""Grounding targets from demonstrations (apt_core.data.goals): key frames, forward kinematics on
the sim arm's URDF, and the targets of a scripted demo pointing at the objects its instruction names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from apt_core.contract import load_contract
from apt_core.data.convert import convert
from apt_core.data.dataset import DemoDataset, collate
from apt_core.data.goals import (
    GoalError,
    dataset_goals,
    gripper_events,
    next_event_goals,
    push_contacts,
    push_ends,
    tool_positions,
)
from apt_core.data.synthetic import write_synthetic_bag
from apt_core.runtime.ik import UrdfChain

os.environ.setdefault("MUJOCO_GL", "egl")
from apt_core.sim import tasks as T
from apt_core.sim.env import JOINT_NAMES, URDF_PATH, TabletopEnv
from apt_core.sim.expert import ScriptedExpert


def test_key_frames_are_the_gripper_events_and_the_episode_end() -> None:
    assert gripper_events(np.array([0.08, 0.08, 0.0, 0.0, 0.08]), 0.04).tolist() == [2, 4]
    assert gripper_events(np.zeros(5), 0.04).tolist() == []  # shut throughout (a push)
    pos = np.arange(12 * 3, dtype=np.float32).reshape(12, 3)
    # episode 0 (frames 0-6): shuts at 2, opens at 5; episode 1 (7-10): never changes;
    # episode 2 (11): a single frame
    cmd = np.array([0.08, 0.08, 0.0, 0.0, 0.0, 0.08, 0.08, 0.0, 0.0, 0.0, 0.0, 0.08])
    goals, valid, events, without, contacts, _ = next_event_goals(
        pos, cmd, np.array([0, 7, 11]), np.array([7, 11, 12]), threshold=0.04
    )
    want = [2, 2, 2, 5, 5, 5, 6, 10, 10, 10, 10]  # the key frame each frame points at
    np.testing.assert_array_equal(goals[:11], pos[want])
    assert valid[:11].all() and not valid[11]
    assert (events, without, contacts) == (2, 2, 0)


def test_push_contacts_start_the_low_shut_strokes_that_travel() -> None:
    # one episode: descend shut (frames 0-3), push 6 cm at the lowest height (3-6), lift (7-8)
    z = [0.15, 0.10, 0.05, 0.025, 0.026, 0.024, 0.025, 0.08, 0.15]
    x = [0.40, 0.40, 0.40, 0.40, 0.42, 0.44, 0.46, 0.46, 0.46]
    pos = np.stack([x, np.zeros(9), z], axis=1).astype(np.float32)
    shut = np.ones(9, bool)
    keys = np.array([8])
    assert push_contacts(pos, shut, keys, travel=0.03, tolerance=0.015) == [3]
    assert push_contacts(pos, shut, keys, travel=0.07, tolerance=0.015) == []  # too short a stroke
    # an open gripper is not a paddle; a carry descends to its lowest point and opens there
    assert push_contacts(pos, np.zeros(9, bool), keys, travel=0.03, tolerance=0.015) == []
    carry = np.stack([[0.4, 0.45, 0.5, 0.5, 0.5], np.zeros(5), [0.15, 0.15, 0.15, 0.08, 0.05]], axis=1)
    assert push_contacts(carry, np.array([1, 1, 1, 1, 0], bool), np.array([4]), 0.03, 0.015) == []
    # in next_event_goals: the frames before the stroke point at its start, the rest at the end
    goals, valid, events, without, contacts, _ = next_event_goals(
        pos, np.zeros(9), np.array([0]), np.array([9]), threshold=0.04, push_travel=0.03
    )
    np.testing.assert_array_equal(goals, pos[[3, 3, 3, 3, 8, 8, 8, 8, 8]])
    assert (events, without, contacts) == (0, 1, 1) and valid.all()


def _expert_rollout(env: TabletopEnv, max_steps: int, oracles: dict[str, dict], settle: int = 0):
    """The scripted expert on a reset `env` until success and `settle` steps more (or max_steps):
    (states, actions, {name: oracle_goal(env, **kwargs) per step}, the success step or None)."""
    from apt_core.sim.expert import oracle_goal

    expert, states, actions, done = ScriptedExpert(env), [], [], None
    goals: dict[str, list] = {k: [] for k in oracles}
    for t in range(max_steps):
        obs = env.observation()
        act = expert.predict(obs, env.task.instruction)[0]
        states.append(obs.joint_positions.copy())
        actions.append(act)
        for k, kwargs in oracles.items():
            goals[k].append(oracle_goal(env, **kwargs))
        env.step(act)
        if done is None and env.success():
            done = t
        if done is not None and t >= done + settle:
            break
    return np.array(states), np.array(actions), {k: np.array(v) for k, v in goals.items()}, done


def test_push_ends_are_where_the_stroke_goes_farthest_not_where_it_backs_off_to() -> None:
    # open to frame 2, shut at 2 (the stroke starts), push 6 cm (2-5), back off 2 cm along the
    # line (6-7) at the same height, then rise (8-9)
    x = [0.40, 0.40, 0.40, 0.42, 0.44, 0.46, 0.45, 0.44, 0.44, 0.44]
    z = [0.10, 0.05, 0.025, 0.025, 0.026, 0.025, 0.025, 0.025, 0.08, 0.15]
    pos = np.stack([x, np.zeros(10), z], axis=1).astype(np.float32)
    cmd = np.array([0.08, 0.08] + [0.0] * 8)
    shut = cmd < 0.04
    keys = np.array([2, 9])
    assert push_ends(pos, shut, keys, travel=0.05, tolerance=0.015) == [5]
    assert push_ends(pos, shut, keys, travel=0.07, tolerance=0.015) == []  # too short a stroke
    carry = np.stack([[0.4, 0.45, 0.5, 0.5, 0.5], np.zeros(5), [0.15, 0.15, 0.15, 0.08, 0.05]], axis=1)
    assert push_ends(carry, np.array([1, 1, 1, 1, 0], bool), np.array([4]), 0.03, 0.015) == []
    # without push ends the stroke's frames point at the last frame, up in the air; with them at the
    # stroke's end, and only the back-off and the rise at the last frame
    one = np.array([0]), np.array([10])
    goals, _, events, _, _, ends = next_event_goals(pos, cmd, *one, threshold=0.04)
    np.testing.assert_array_equal(goals, pos[[2, 2, 2, 9, 9, 9, 9, 9, 9, 9]])
    assert (events, ends) == (1, 0)
    goals, valid, events, _, contacts, ends = next_event_goals(pos, cmd, *one, threshold=0.04, push_end=0.05)
    np.testing.assert_array_equal(goals, pos[[2, 2, 2, 5, 5, 5, 9, 9, 9, 9]])
    assert (events, contacts, ends) == (1, 0, 1) and valid.all()
    # a stroke that ends on the episode's last frame already has its key frame
    goals, _, _, _, _, ends = next_event_goals(
        pos[:6], cmd[:6], np.array([0]), np.array([6]), 0.04, push_end=0.05
    )
    np.testing.assert_array_equal(goals, pos[[2, 2, 2, 5, 5, 5]])
    assert ends == 0


def test_the_oracle_with_push_ends_agrees_with_the_recorded_stroke_end() -> None:
    """A scripted push recorded on after the object reaches the zone (as apt-record-demos does: the
    expert backs off and rises): with --goal-push-end the stroke's frames point at its end, at the
    stroke's height, and `oracle_goal(push_end=True)` says the same; the plain oracle and the plain
    targets say the scripted push's last point, in the air."""
    from apt_core.sim.expert import PUSH_Z, SAFE_Z, trained_with_push_end

    chain = UrdfChain.from_urdf(URDF_PATH, "base_link", "tcp")
    for seed in range(40):
        env = TabletopEnv()
        try:
            env.reset(seed, "in_distribution")
            if env.task.subtasks[0].family != "push":
                continue
            # recorded on through the back-off and the rise
            states, actions, oracles, done = _expert_rollout(
                env, 200, {"plain": {}, "ends": {"push_end": True}}, 25
            )
        finally:
            env.close()
        break
    assert done is not None
    pos = tool_positions(states, JOINT_NAMES, chain)
    cmd, one = actions[:, 6], (np.array([0]), np.array([len(pos)]))
    goals, _, _, _, _, n_ends = next_event_goals(pos, cmd, *one, 0.04, push_end=0.05)
    base, _, _, _, _, _ = next_event_goals(pos, cmd, *one, 0.04)
    assert n_ends == 1 and pos[-1, 2] > 0.1  # recorded through the rise
    shut = int(gripper_events(cmd, 0.04)[0])
    stroke = np.arange(shut + 5, done)  # the object moving, the gripper shut
    assert len(stroke) > 5
    ends, plain = oracles["ends"], oracles["plain"]
    assert np.median(np.linalg.norm(goals[stroke] - ends[stroke], axis=1)) < 0.02
    assert np.all(np.abs(goals[stroke, 2] - PUSH_Z) < 0.01) and np.all(base[stroke, 2] > 0.1)
    assert np.all(plain[stroke, 2] == SAFE_Z)
    assert trained_with_push_end({"train_config": {"goal_push_end": 0.05}})
    assert not trained_with_push_end({"train_config": {"goal_push_travel": 0.03}})
    assert not trained_with_push_end({})


def test_a_scripted_push_shuts_the_gripper_behind_the_named_object() -> None:
    """On the scripted expert's demos: a push's first gripper event is where the open gripper comes
    down behind the object, on the far side from the target, and shuts; the frames before it point
    there, the rest at the end of the push. So the gripper marks the stroke's start, and push
    contacts (for pushes that run shut from the first frame) add no key frame to these demos."""
    chain = UrdfChain.from_urdf(URDF_PATH, "base_link", "tcp")
    families: dict[str, int] = {}
    for seed in range(40):
        task, start, states, actions = _demo(seed)
        (sub,) = task.subtasks
        if families.get(sub.family, 0) >= 2:
            continue
        families[sub.family] = families.get(sub.family, 0) + 1
        pos = tool_positions(states, JOINT_NAMES, chain)
        one = np.array([0]), np.array([len(pos)])
        goals, _, _, _, _, _ = next_event_goals(pos, actions[:, 6], *one, 0.04)
        pc_goals, _, _, _, contacts, _ = next_event_goals(pos, actions[:, 6], *one, 0.04, push_travel=0.03)
        assert contacts == 0, task.instruction
        np.testing.assert_array_equal(pc_goals, goals)
        if sub.family != "push":
            continue
        shut = gripper_events(actions[:, 6], 0.04)[0]
        assert actions[0, 6] > 0.04 and 5 < shut < len(pos) - 5, task.instruction  # open, then shut
        contact = goals[0]
        np.testing.assert_array_equal(contact, pos[shut])
        obj, tgt = start[sub.obj][:2], start[sub.target][:2]
        u = (tgt - obj) / np.linalg.norm(tgt - obj)
        # the expert comes down 5.5 cm behind the object's centre on the push line, 2.5 cm high
        assert np.linalg.norm(contact[:2] - (obj - 0.055 * u)) < 0.02, (task.instruction, contact, obj, u)
        assert contact[2] < 0.05
        # the frames after it point at the end of the push, past the object towards the target
        assert np.linalg.norm(goals[-1][:2] - tgt) < np.linalg.norm(contact[:2] - tgt) - 0.03
        if min(families.values()) >= 2 and len(families) == 3:
            break
    assert families == {"pick_place": 2, "push": 2, "stack": 2}


def _demo(seed: int, split: str = "in_distribution", max_steps: int = 150):
    """One scripted demo in process at the contract rate: (env task, object positions at the start,
    measured joints (T, 7), commanded joints (T, 7))."""
    env = TabletopEnv()
    try:
        env.reset(seed, split)
        expert = ScriptedExpert(env)
        start = {o: env.body_position(o) for o in env.scene_state().positions}
        states, actions = [], []
        for _ in range(max_steps):
            obs = env.observation()
            act = expert.predict(obs, env.task.instruction)[0]
            states.append(obs.joint_positions.copy())
            actions.append(act)
            env.step(act)
            if env.success():
                break
        assert env.success(), f"the scripted expert failed seed {seed}"
        return env.task, start, np.array(states), np.array(actions)
    finally:
        env.close()


def test_targets_of_a_scripted_demo_point_at_the_named_objects() -> None:
    chain = UrdfChain.from_urdf(URDF_PATH, "base_link", "tcp")
    seen = set()
    for seed in range(20):
        task, start, states, actions = _demo(seed)
        (sub,) = task.subtasks
        if sub.family in seen:
            continue
        seen.add(sub.family)
        pos = tool_positions(states, JOINT_NAMES, chain)
        goals, valid, events, _, _, _ = next_event_goals(
            pos, actions[:, 6], np.array([0]), np.array([len(pos)]), threshold=0.04
        )
        assert valid.all()

        def dist(p: np.ndarray, name: str, start: dict = start) -> float:
            return float(np.linalg.norm(p[:2] - start[name][:2]))

        ev = gripper_events(actions[:, 6], 0.04)
        if sub.family == "push":  # shut behind the object, then the target is where the push ends
            assert len(ev) == events == 1 and dist(goals[0], sub.obj) < 0.08, task.instruction
            assert dist(goals[ev[0] + 1], sub.target) < 0.12, task.instruction
            continue
        assert len(ev) == events >= 2
        grasp, release = goals[0], goals[ev[0] + 1]
        np.testing.assert_array_equal(grasp, pos[ev[0]])
        np.testing.assert_array_equal(release, pos[ev[1]])
        # the grasp is on the named object, nearer it than any other object; the release is over
        # the named target
        assert dist(grasp, sub.obj) < 0.02, (task.instruction, dist(grasp, sub.obj))
        # the commanded joints at the event put the tool on the object's centre
        cmd = tool_positions(actions, JOINT_NAMES, chain)
        assert dist(cmd[ev[0]], sub.obj) < 0.005, (task.instruction, dist(cmd[ev[0]], sub.obj))
        assert all(dist(grasp, sub.obj) < dist(grasp, o) for o in T.OBJECTS if o != sub.obj)
        assert dist(release, sub.target) < 0.05, (task.instruction, dist(release, sub.target))
        if len(seen) == 3:
            break
    assert seen == {"pick_place", "push", "stack"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("goal_ds")
    c = load_contract()
    for i in range(2):
        write_synthetic_bag(tmp / "bags" / f"e{i}", c, 40, "pick up the red cube", seed=i)
    convert(tmp / "bags", tmp / "ds", c)
    return tmp / "ds"


def test_dataset_goals_use_the_contract_gripper_and_reach_samples(tiny: Path) -> None:
    ds = DemoDataset(tiny, chunk_length=4)
    goals, valid, info, near = dataset_goals(ds, URDF_PATH, tip_link="tcp")
    assert not near.any()
    assert info.episodes == 2 and info.events > 0 and info.frames == len(ds) == valid.sum()
    chain = UrdfChain.from_urdf(URDF_PATH, "base_link", "tcp")
    cmd = ds.action[:, JOINT_NAMES.index("gripper")]
    ev = gripper_events(cmd[ds.ep_from[0] : ds.ep_to[0]], info.threshold)
    # the first frame's target is the tool position measured at the episode's first event
    np.testing.assert_allclose(
        goals[0], chain.forward(ds.state[ev[0]][:6].astype(float))[0][:3, 3], atol=1e-5
    )
    assert "goal" not in ds[0]
    ds.set_goals(goals, valid)
    b = collate([ds[0], ds[1]])
    assert b["goal"].shape == (2, 3) and b["goal"].dtype == torch.float32 and b["goal_valid"].all()
    with pytest.raises(ValueError, match="do not fit"):
        ds.set_goals(goals[:-1], valid[:-1])
    # min_distance drops exactly the frames whose tool is already that close to its target, and
    # marks them near instead
    pos = tool_positions(ds.state, JOINT_NAMES, chain)
    dist = np.linalg.norm(goals - pos, axis=1)
    far, fvalid, finfo, fnear = dataset_goals(
        ds, URDF_PATH, tip_link="tcp", min_distance=float(np.median(dist))
    )
    np.testing.assert_array_equal(far, goals)
    np.testing.assert_array_equal(fvalid, dist >= np.median(dist))
    np.testing.assert_array_equal(fnear, dist < np.median(dist))
    assert 0 < finfo.valid_frames < info.valid_frames and finfo.near_frames == int(fnear.sum()) > 0
    assert f"{finfo.near_frames} more are near theirs" in finfo.line() and "near" not in info.line()
    ds.set_goals(far, fvalid, fnear)
    near_frame = int(np.flatnonzero(fnear)[0])
    assert bool(ds[near_frame]["goal_near"]) and not bool(ds[near_frame]["goal_valid"])
    with pytest.raises(ValueError, match=r"near \(3,\) do not fit"):
        ds.set_goals(far, fvalid, fnear[:3])
    with pytest.raises(GoalError, match="no frame's tool is 100.0 m or more"):
        dataset_goals(ds, URDF_PATH, tip_link="tcp", min_distance=100.0)


def test_dataset_goals_from_the_commanded_joints(tiny: Path) -> None:
    """source="action": a key frame's target is the tool where the action column sent it; which
    frames are near is still decided by the measured tool; other sources and actions that are not
    joint positions over the state's joints are refused by name."""
    ds = DemoDataset(tiny, chunk_length=4)
    chain = UrdfChain.from_urdf(URDF_PATH, "base_link", "tcp")
    measured, _, info, _ = dataset_goals(ds, URDF_PATH, tip_link="tcp")
    commanded, valid, cinfo, _ = dataset_goals(ds, URDF_PATH, tip_link="tcp", source="action")
    assert cinfo.events == info.events and valid.all()
    cmd = ds.action[:, JOINT_NAMES.index("gripper")]
    for e in range(2):
        lo, hi = int(ds.ep_from[e]), int(ds.ep_to[e])
        k = lo + int(gripper_events(cmd[lo:hi], info.threshold)[0])
        np.testing.assert_allclose(
            commanded[lo], chain.forward(ds.action[k][:6].astype(float))[0][:3, 3], atol=1e-5
        )
        np.testing.assert_allclose(
            measured[lo], chain.forward(ds.state[k][:6].astype(float))[0][:3, 3], atol=1e-5
        )
    assert np.abs(commanded - measured).max() > 1e-3  # the synthetic arm does not track exactly
    pos = tool_positions(ds.state, JOINT_NAMES, chain)
    d = float(np.median(np.linalg.norm(commanded - pos, axis=1)))
    _, fvalid, _, fnear = dataset_goals(ds, URDF_PATH, tip_link="tcp", min_distance=d, source="action")
    np.testing.assert_array_equal(fnear, np.linalg.norm(commanded - pos, axis=1) < d)
    assert fnear.any() and fvalid.any()
    with pytest.raises(GoalError, match="goal source 'ee' is not one of"):
        dataset_goals(ds, URDF_PATH, tip_link="tcp", source="ee")
    ds.contract = {**ds.contract, "action": {**ds.contract["action"], "space": "ee_delta"}}
    with pytest.raises(GoalError, match="goal source 'action' needs joint-position actions"):
        dataset_goals(ds, URDF_PATH, tip_link="tcp", source="action")


def test_goal_errors_name_what_is_missing(tiny: Path, tmp_path: Path) -> None:
    ds = DemoDataset(tiny, chunk_length=4)
    with pytest.raises(GoalError, match="'hand_cam' is not among the dataset's joints"):
        dataset_goals(ds, URDF_PATH, "tcp", gripper_joint="hand_cam")
    with pytest.raises(GoalError, match="never changes state"):
        dataset_goals(ds, URDF_PATH, "tcp", threshold=10.0)
    chain = UrdfChain.from_urdf(URDF_PATH, "base_link", "tcp")
    with pytest.raises(GoalError, match=r"moves joints \['shoulder_pan'\]"):
        tool_positions(ds.state[:, 1:], JOINT_NAMES[1:], chain)
    ds.contract = {}
    with pytest.raises(GoalError, match="names no action.gripper_joint"):
        dataset_goals(ds, URDF_PATH, "tcp")


def test_the_oracle_goal_is_the_goal_the_demonstrations_record() -> None:
    """`expert.oracle_goal` (what `evaluate --oracle-goal` feeds a goal-input policy) agrees, frame
    by frame, with the target read off the same scripted demo's recorded joints and gripper, also
    on a push's stroke start, where the expert shuts the gripper."""

    chain = UrdfChain.from_urdf(URDF_PATH, "base_link", "tcp")
    seen = set()
    for seed in range(20):
        env = TabletopEnv()
        try:
            env.reset(seed, "in_distribution")
            family = env.task.subtasks[0].family
            if family in seen:
                continue
            seen.add(family)
            states, actions, oracles, _ = _expert_rollout(
                env, 150, {"plain": {}, "pc": {"push_contact": True}}
            )
            oracle, oracle_pc = oracles["plain"], oracles["pc"]
        finally:
            env.close()
        pos = tool_positions(states, JOINT_NAMES, chain)
        goals, _, _, _, _, _ = next_event_goals(pos, actions[:, 6], np.array([0]), np.array([len(pos)]), 0.04)
        d = np.linalg.norm((oracle - goals)[:, :2], axis=1)
        if family != "push":  # push contacts change nothing for the grasping families
            np.testing.assert_array_equal(oracle_pc, oracle)
        if family == "push":
            c = int((goals == goals[0]).all(axis=1).sum())  # frames before the gripper shuts
            assert 5 < c < len(goals) - 5
            # before the stroke both say where it starts behind the object; after it, where it ends
            # (the recorded episode ends at success, before the scripted retreat)
            assert np.median(d[:c]) < 0.02 and np.median(d[c:]) < 0.06, (d[:c], d[c:])
            assert np.median(np.linalg.norm((oracle[:c] - oracle[-1])[:, :2], axis=1)) > 0.05
            continue
        ev = gripper_events(actions[:, 6], 0.04)
        # the frame of an event already points at the next one, while the object is not yet held
        # (or released) in the simulator: compare away from the events
        away = np.ones(len(d), bool)
        for e in ev:
            away[max(e - 1, 0) : e + 6] = False
        assert np.median(d[away]) < 0.01 and d[away].max() < 0.03, (family, np.median(d[away]), d[away].max())
        if len(seen) == 3:
            break
    assert seen == {"pick_place", "push", "stack"}


def test_the_oracle_reads_push_contacts_off_the_checkpoint_meta() -> None:
    from apt_core.sim.expert import trained_with_push_contact

    assert trained_with_push_contact({"train_config": {"goal_push_travel": 0.03}})
    assert not trained_with_push_contact({"train_config": {"goal_push_travel": 0.0}})
    # checkpoints from before the option, and meta without a training config
    assert not trained_with_push_contact({"train_config": {"goal_weight": 0.5}})
    assert not trained_with_push_contact({})
