"""Is a trained policy using its inputs? Open-loop checks on frames of a dataset.

    python scripts/diagnose_policy.py CHECKPOINT DATASET [--frames 24] [--seed 0]

Prints, on frames drawn from DATASET (normally its training data):
- the mean |error| of the predicted chunk against the demonstrated one [rad], next to what holding
  still (repeating the current state) scores: a policy that does not beat holding still has learned
  nothing about where to go;
- how much the chunk changes when the camera image is swapped for another frame's, and when the
  instruction is swapped for another one [rad]: near zero means the input is ignored;
- the sampler's error in normalised action units against predicting zeros (the data mean);
- for a policy trained with a grounding loss (`--goal-weight`, a goal head): how far its predicted
  goal (the tool position at the next gripper event) lies from the demonstrated one [cm], against
  predicting the mean goal, and how far it moves when the instruction is swapped; with
  `--sim-scenes N`, also on the first frame of N simulator scenes (`--sim-seed`, default 1000: new
  scenes; 0 with `--sim-split in_distribution`: the pipeline's training scenes; the six evaluation
  splits in turn unless `--sim-split` names one): how often the predicted grasp point is nearer the
  named object than any other object, and how far from it it lies; with `--sim-episodes CSV` (an
  evaluation's episodes.csv), for each of its episodes whose gripper shut, the head's answer on that
  scene's first frame against where the closed-loop grasp went (a 2x2 table). For a policy with a
  goal pointer (`--goal-pointer`), "head" means the pointer: `APTPolicy.predict_goal` answers with
  the goal that sampling acts on. `--goal-source action` takes the demonstrated goals from the
  commanded joints instead of the measured ones (as `apt-train-stage2 --goal-source`), and
  `--goal-push-end T` makes push strokes' ends key frames (as `apt-train-stage2 --goal-push-end`);
- for a policy with a goal input (`--goal-input`): how far the end of its chunk moves when the goal
  it is given (the recorded one) is moved by 3 cm, as a share of those 3 cm along the move, split
  at 6 cm between the tool and its goal: 1 means the actions go exactly where the goal says, 0 that
  they ignore it.
These are the numbers in docs/model.md ("Objectives") and docs/experiments.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from apt_core.data.dataset import DemoDataset, collate, decode_stored
from apt_core.data.goals import GOAL_SOURCES, GoalTargets
from apt_core.model.checkpoint import load_checkpoint
from apt_core.model.openloop import open_loop, sample_frames
from apt_core.model.runner import PolicyRunner
from apt_core.types import Observation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("dataset")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--goal-urdf", default="", help="URDF for the goal targets; empty = the sim arm's")
    ap.add_argument("--goal-link", default="tcp")
    ap.add_argument(
        "--goal-source",
        default="state",
        choices=GOAL_SOURCES,
        help="the goal targets from the measured (state) or commanded (action) joints",
    )
    ap.add_argument(
        "--goal-push-end",
        type=float,
        default=0.0,
        help="push strokes' ends as key frames too, the travel [m] (as apt-train-stage2 --goal-push-end)",
    )
    ap.add_argument("--sim-scenes", type=int, default=0, help="goal head: also check N sim scenes")
    ap.add_argument("--sim-seed", type=int, default=1000, help="first scene seed (0: the training scenes)")
    ap.add_argument("--sim-split", default="", help="one split for every scene (default: all in turn)")
    ap.add_argument(
        "--sim-episodes",
        default="",
        help="an evaluation's episodes.csv: join the head's answer on each grasp scene with the closed-loop grasp",
    )
    a = ap.parse_args()
    policy, processor, meta = load_checkpoint(a.checkpoint)
    policy.eval()
    H = policy.cfg.chunk_length
    ds = DemoDataset(a.dataset, chunk_length=H, n_action_history=policy.cfg.n_action_history)
    runner = PolicyRunner(policy, processor, meta, seed=a.seed)
    idx = sample_frames(ds, a.frames, a.seed)
    cam_key = ds.camera_keys[0]
    ol = open_loop(runner, ds, idx)

    batch = processor.process_batch(collate([ds[i] for i in idx]))
    x0 = batch["actions"]
    with torch.no_grad():
        sampled = policy.sample_actions(batch, generator=torch.Generator().manual_seed(a.seed))
    print(f"checkpoint {a.checkpoint} ({policy.cfg.objective.kind}), {len(idx)} frames of {a.dataset}")
    print("| measure | value |\n| --- | --- |")
    print(f"| chunk error vs demonstration [rad] | {ol.chunk_error:.3f} |")
    print(f"| holding still instead [rad] | {ol.hold_error:.3f} |")
    print(f"| change when the image is swapped [rad] | {ol.image_swap:.3f} |")
    print(f"| change when the instruction is swapped [rad] | {ol.instruction_swap:.3f} |")
    print(f"| sampler error, normalised units | {float((sampled - x0).abs().mean()):.3f} |")
    print(f"| predicting zeros instead, normalised | {float(x0.abs().mean()):.3f} |")
    if policy.cfg.goal_dim:
        from apt_core.data.goals import dataset_goals
        from apt_core.sim.env import URDF_PATH

        urdf = a.goal_urdf or URDF_PATH
        targets = dataset_goals(
            ds,
            urdf,
            tip_link=a.goal_link,
            min_distance=NEAR_GOAL,
            source=a.goal_source,
            push_end=a.goal_push_end,
        )
        ends = f", push ends (travel {a.goal_push_end:g} m)" if a.goal_push_end else ""
        print(f"| goal targets from the {a.goal_source} joints{ends} | |")
        goal_rows(policy, processor, ds, idx, targets, a.seed)
        if policy.cfg.goal_input:
            goal_follow_rows(runner, ds, idx, cam_key, targets, urdf, a.goal_link)
        if a.sim_scenes:
            goal_scene_rows(policy, processor, a.sim_scenes, a.sim_seed, a.sim_split)
        if a.sim_episodes:
            goal_vs_grasp_rows(policy, processor, a.sim_episodes)


NEAR_GOAL = 0.06  # [m] the end of a reach: where the policy acts on its goal for the grasp itself


def goal_rows(policy, processor, ds: DemoDataset, idx: list[int], targets: GoalTargets, seed: int) -> None:
    goals, far, _, near = targets
    valid = far | near
    idx = [i for i in idx if valid[i]]
    raw = collate([ds[i] for i in idx])
    k = ds.task_index[idx]
    swapped = dict(raw, task=[ds.tasks[(int(j) + 1) % len(ds.tasks)] for j in k])
    g = torch.Generator().manual_seed(seed)
    pred = policy.predict_goal(processor.process_batch(raw), generator=g).numpy()
    pred_swap = policy.predict_goal(processor.process_batch(swapped), generator=g).numpy()
    want = goals[idx]
    mean = goals[valid].mean(0)
    cm = 100.0
    err = np.linalg.norm(pred - want, axis=1) * cm
    print(f"| goal error, median [cm] | {np.median(err):.1f} |")
    print(f"| goal error, 90th percentile [cm] | {np.percentile(err, 90):.1f} |")
    print(
        f"| frames whose goal is {NEAR_GOAL * cm:.0f} cm or more off | {np.mean(err >= NEAR_GOAL * cm):.0%} |"
    )
    is_near = near[idx]
    for label, m in ((f"under {NEAR_GOAL * cm:.0f}", is_near), (f"{NEAR_GOAL * cm:.0f} or more", ~is_near)):
        value = f"{np.median(err[m]):.1f} ({m.sum()} frames)" if m.any() else "- (0 frames)"
        print(f"| goal error, median, tool {label} cm from its goal [cm] | {value} |")
    # the phase, as the pointer reads it: the observed gripper open (reaching for a grasp or a push
    # stroke's start) or shut (carrying to a release, or pushing)
    from apt_core.data.goals import dataset_gripper_joint

    gi = list(ds.meta["features"]["observation.state"]["names"]).index(dataset_gripper_joint(ds))
    shut = raw["observation.state"][:, gi].numpy() < targets.info.threshold
    for label, m in (("open", ~shut), ("shut", shut)):
        value = (
            f"{np.median(err[m]):.1f} / {np.percentile(err[m], 90):.1f} / {np.mean(err[m] >= NEAR_GOAL * cm):.0%} "
            f"({m.sum()} frames)"
            if m.any()
            else "- (0 frames)"
        )
        print(
            f"| goal error with the gripper {label}: median / p90 [cm] / share {NEAR_GOAL * cm:.0f} cm or more off | {value} |"
        )
    print(
        f"| predicting the mean goal instead [cm] | {np.median(np.linalg.norm(want - mean, axis=1)) * cm:.1f} |"
    )
    print(
        f"| goal change when the instruction is swapped, median [cm] | "
        f"{np.median(np.linalg.norm(pred - pred_swap, axis=1)) * cm:.1f} |"
    )


GOAL_SHIFT = 0.03  # [m] how far goal_follow_rows moves the given goal


def goal_follow_rows(
    runner: PolicyRunner,
    ds: DemoDataset,
    idx: list[int],
    cam_key: str,
    targets: GoalTargets,
    urdf: str,
    tip_link: str,
) -> None:
    """How far the end of the chunk moves along a GOAL_SHIFT move of the given goal (x, then y), as
    a share of the move, on the frames of `idx` that have a recorded goal."""
    from apt_core.data.goals import tool_positions
    from apt_core.runtime.ik import UrdfChain

    goals, far, _, near = targets
    chain = UrdfChain.from_urdf(urdf, "base_link", tip_link)
    names = tuple(ds.meta["features"]["observation.state"]["names"])
    cam = cam_key.removeprefix("observation.images.")

    def chunk_end(i: int, img: np.ndarray, goal: np.ndarray) -> np.ndarray:
        runner.reset()  # the same noise for every goal
        obs = Observation(
            images={cam: img},
            joint_positions=ds.state[i].astype(np.float64),
            stamp=0.0,
            extras={"goal": goal},
        )
        q = np.asarray(runner.predict(obs, ds.tasks[int(ds.task_index[i])]))[-1:]
        return tool_positions(q, names, chain)[0, :2]

    share: dict[bool, list[float]] = {True: [], False: []}
    for i in (i for i in idx if far[i] or near[i]):
        img = decode_stored(ds.images[cam_key][i].as_py())
        base = chunk_end(i, img, goals[i])
        for axis in (0, 1):
            moved = goals[i].copy()
            moved[axis] += GOAL_SHIFT
            share[bool(near[i])].append(float(chunk_end(i, img, moved)[axis] - base[axis]) / GOAL_SHIFT)
    cm = 100.0
    for label, key in ((f"under {NEAR_GOAL * cm:.0f}", True), (f"{NEAR_GOAL * cm:.0f} or more", False)):
        v = share[key]
        value = f"{np.median(v):.2f} ({len(v) // 2} frames)" if v else "- (0 frames)"
        print(
            f"| chunk end's move along a {GOAL_SHIFT * cm:.0f} cm goal move, tool {label} cm from its goal | {value} |"
        )


def _head_on_first_frame(policy, processor, env, seed: int, split: str) -> tuple[object, dict[str, float]]:
    """Reset `env` to the scene (seed, split); returns its first subtask and the xy distance [m] of
    the goal head's prediction on the first frame to every object and target."""
    from apt_core.sim import tasks as T

    obs = env.reset(seed, split)
    pred = policy.predict_goal(processor.process_observation(obs, env.task.instruction))[0].numpy()
    sub = env.task.subtasks[0]
    names = set(T.OBJECTS) | ({sub.target} if sub.family == "push" else set())
    return sub, {k: float(np.linalg.norm(pred[:2] - env.body_position(k)[:2])) for k in names}


def goal_scene_rows(policy, processor, n: int, seed: int, split: str) -> None:
    """The goal head on the first frame of sim scenes: is the predicted grasp on the named object?"""
    from apt_core.sim import tasks as T
    from apt_core.sim.env import TabletopEnv

    env = TabletopEnv()
    named, right, push = [], [], []
    try:
        for i in range(n):
            sub, dist = _head_on_first_frame(
                policy, processor, env, seed + i, split or T.SPLITS[i % len(T.SPLITS)]
            )
            if sub.family == "push":  # the key frame is where the push ends
                push.append(dist[sub.target])
                continue
            named.append(dist[sub.obj])
            right.append(min(T.OBJECTS, key=dist.__getitem__) == sub.obj)
    finally:
        env.close()
    cm, where = 100.0, f"scenes {seed}-{seed + n - 1} ({split or 'all splits'})"
    print(f"| {where}: predicted grasp nearest the named object | {sum(right)} of {len(right)} |")
    print(f"| {where}: predicted grasp to the named object, median [cm] | {np.median(named) * cm:.1f} |")
    if push:
        print(f"| {where}: predicted push end to the target, median [cm] | {np.median(push) * cm:.1f} |")


def goal_vs_grasp_rows(policy, processor, episodes_csv: str) -> None:
    """Does the closed-loop grasp go where the goal head points? For each episode of an evaluation
    (`python -m apt_core.sim.evaluate ... --out DIR`: DIR/episodes.csv) whose gripper shut, the
    head's answer on the scene's first frame (nearest the named object or not) against the grasp's
    (`wrong_object`: another object was nearer the TCP when the gripper shut)."""
    import csv

    from apt_core.sim import tasks as T
    from apt_core.sim.env import TabletopEnv

    with open(episodes_csv) as f:
        rows = [r for r in csv.DictReader(f) if r["grasp_offset"] not in ("", "nan")]
    table = {(h, g): 0 for h in (True, False) for g in (True, False)}
    env = TabletopEnv()
    try:
        for r in rows:
            sub, dist = _head_on_first_frame(policy, processor, env, int(r["seed"]), r["split"])
            head_right = min(T.OBJECTS, key=dist.__getitem__) == sub.obj
            table[head_right, r["wrong_object"] != "True"] += 1
    finally:
        env.close()
    where = f"{len(rows)} closed-loop grasps of {episodes_csv}"
    for h, g in table:
        head = "head nearest the named object" if h else "head nearest another object"
        grasp = "grasp at the named object" if g else "grasp at another object"
        print(f"| {where}: {head}, {grasp} | {table[h, g]} |")


if __name__ == "__main__":
    main()
