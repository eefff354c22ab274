"""Where a goal pointer points when it is far off: the large errors on a recorded dataset, sorted.

    python scripts/goal_error_kinds.py CHECKPOINT DATASET [--frames 1200] [--goal-source action]
        [--goal-push-end 0.05]

For a policy with a goal head or pointer and a dataset converted from `apt-record-demos` bags (each
episode's bag folder is named `episode_<seed>`; the scenes are rebuilt from the seeds), predicts the
goal on `--frames` random frames that have a target (`dataset_goals`, the targets training uses)
and sorts the frames whose goal is 6 cm or more off by what the prediction is nearest
(horizontally, within 3 cm): an earlier or a later key frame of the same episode (the pointer is a
step behind or ahead), an object or target the instruction does not name (it read the words
wrong), one it names (but not this key frame's), or nothing. Then the share of large errors by how
many frames ago the target last changed, and on the frames of push episodes with the gripper shut
(the stroke and after it), the target's and the prediction's height; last, over every frame of the
dataset whose target a push-end key frame (`--goal-push-end 0.05`) moves, the target's height
without and with it. The numbers in
docs/experiments.md item 37.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from apt_core.data.dataset import DemoDataset, collate
from apt_core.data.goals import GOAL_SOURCES, dataset_goals, dataset_gripper_joint
from apt_core.data.lerobot_v3 import load_v3
from apt_core.model.checkpoint import load_checkpoint
from apt_core.sim import tasks as T
from apt_core.sim.env import URDF_PATH, SceneMismatchError, TabletopEnv, reset_to_recording

FAR = 0.06  # [m] a large error (diagnose_policy's NEAR_GOAL)
NEAR = 0.03  # [m] horizontal distance that counts as pointing at a key frame or an object
STROKE_TRAVEL = 0.05  # [m] the push-end travel for the stroke-height line (apt-train-stage2 --goal-push-end)


def error_kind(
    pred: np.ndarray, keys: np.ndarray, this: int, where: dict[str, np.ndarray], named: set[str]
) -> str:
    """What a prediction 6 cm or more off is nearest, horizontally within NEAR: `pred` (2,), the
    episode's targets in turn `keys` (K, 2), of which the frame has number `this`, and every
    object's and target's position `where` (name: (2,)), `named` those the instruction names."""
    d_keys = np.linalg.norm(keys - pred, axis=1)
    others = [(d, k) for k, d in enumerate(d_keys.tolist()) if k != this and d < NEAR]
    if others:
        return "an earlier key frame" if min(others)[1] < this else "a later key frame"
    d_ent = {n: float(np.linalg.norm(p - pred)) for n, p in where.items()}
    nearest = min(d_ent, key=d_ent.get)
    if d_ent[nearest] < NEAR:
        return "a named object or target" if nearest in named else "an object the words do not name"
    return "nothing within 3 cm"


def reset_scene(env: TabletopEnv, ds: DemoDataset, bags: list[str], e: int, split: str) -> None:
    """`env` reset to the scene episode `e` was recorded in, checked against its instruction."""
    try:
        reset_to_recording(env, bags[e], ds.tasks[int(ds.task_index[int(ds.ep_from[e])])], split)
    except SceneMismatchError as err:
        raise SystemExit(f"episode {e}: {err}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("dataset")
    ap.add_argument("--frames", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--goal-source", default="action", choices=GOAL_SOURCES)
    ap.add_argument("--goal-push-end", type=float, default=0.0, help="as apt-train-stage2 --goal-push-end")
    ap.add_argument("--split", default="in_distribution", help="the split the episodes were recorded from")
    a = ap.parse_args()
    policy, processor, _ = load_checkpoint(a.checkpoint)
    policy.eval()
    if not policy.cfg.goal_dim:
        raise SystemExit(f"{a.checkpoint} has no goal head or pointer")
    ds = DemoDataset(
        a.dataset, chunk_length=policy.cfg.chunk_length, n_action_history=policy.cfg.n_action_history
    )
    bags = load_v3(a.dataset).episodes.to_pydict()["source/bag"]
    targets = dataset_goals(
        ds, URDF_PATH, tip_link="tcp", min_distance=FAR, source=a.goal_source, push_end=a.goal_push_end
    )
    goals = targets.goals
    have = np.flatnonzero(targets.valid | targets.near)
    idx = np.sort(np.random.default_rng(a.seed).choice(have, size=min(a.frames, len(have)), replace=False))
    pred = []
    with torch.no_grad():
        for s in range(0, len(idx), 64):
            batch = processor.process_batch(collate([ds[int(i)] for i in idx[s : s + 64]]))
            pred.append(policy.predict_goal(batch, generator=torch.Generator().manual_seed(a.seed)).numpy())
    pred = np.concatenate(pred)
    err = np.linalg.norm(pred - goals[idx], axis=1)
    names = tuple(ds.meta["features"]["observation.state"]["names"])
    shut = ds.state[idx, names.index(dataset_gripper_joint(ds))] < targets.info.threshold
    episode = np.searchsorted(ds.ep_to, idx, side="right")

    env, scenes = TabletopEnv(), {}
    kinds, since, push_rows = [], [], []
    try:
        for j, i in enumerate(idx.tolist()):
            e = int(episode[j])
            lo, hi = int(ds.ep_from[e]), int(ds.ep_to[e])
            if e not in scenes:
                reset_scene(env, ds, bags, e, a.split)
                named = {n for sub in env.task.subtasks for n in (sub.obj, sub.target)}
                where = {n: env.body_position(n)[:2].copy() for n in T.ENTITIES}
                change = np.flatnonzero(np.any(goals[lo + 1 : hi] != goals[lo : hi - 1], axis=1)) + 1
                keys = goals[np.concatenate([[0], change]) + lo]  # the targets in turn
                scenes[e] = (named, where, change, keys, env.task.subtasks[0].family)
            named, where, change, keys, family = scenes[e]
            t = i - lo
            before = change[change <= t]
            since.append(t - (int(before[-1]) if len(before) else 0))
            if family == "push" and shut[j]:
                push_rows.append((goals[i, 2], pred[j, 2], err[j]))
            if err[j] < FAR:
                kinds.append("")
                continue
            kinds.append(error_kind(pred[j, :2], keys[:, :2], len(before), where, named))
    finally:
        env.close()
    big = [k for k in kinds if k]
    cm = 100.0
    print(
        f"{a.checkpoint} on {len(idx)} frames of {a.dataset} ({a.goal_source} targets{', push ends' if a.goal_push_end else ''})"
    )
    print(
        f"goal error median {np.median(err) * cm:.1f} cm; {len(big)} frames ({len(big) / len(idx):.0%}) {FAR * cm:.0f} cm or more off\n"
    )
    print(f"| the prediction of a frame {FAR * cm:.0f} cm or more off is nearest | frames |\n| --- | --- |")
    for k, n in collections.Counter(big).most_common():
        print(f"| {k} | {n} |")
    print(f"\n| frames since the target last changed | {FAR * cm:.0f} cm or more off |\n| --- | --- |")
    since = np.array(since)
    off = np.array([bool(k) for k in kinds])
    for lo_, hi_ in ((0, 3), (3, 10), (10, 30), (30, None)):
        m = (since >= lo_) & ((since < hi_) if hi_ else True)
        if m.any():
            print(f"| {lo_}{f'-{hi_ - 1}' if hi_ else ' or more'} | {off[m].mean():.0%} of {m.sum()} |")
    if push_rows:
        g, p, e_ = (np.array(c) * cm for c in zip(*push_rows, strict=True))
        print(f"\npush episodes, gripper shut ({len(g)} frames):")
        print("| measure | 10th / 50th / 90th percentile [cm] |\n| --- | --- |")
        for label, v in (("target height", g), ("predicted height", p), ("goal error", e_)):
            print(f"| {label} | {' / '.join(f'{x:.1f}' for x in np.percentile(v, [10, 50, 90]))} |")
        print(f"| share {FAR * cm:.0f} cm or more off | {np.mean(e_ >= FAR * cm):.0%} |")
    # every frame of the dataset (no model) whose target a push-end key frame would move: the stroke
    ends = dataset_goals(ds, URDF_PATH, tip_link="tcp", source=a.goal_source, push_end=STROKE_TRAVEL)
    plain = dataset_goals(ds, URDF_PATH, tip_link="tcp", source=a.goal_source).goals
    stroke = np.flatnonzero(np.any(ends.goals != plain, axis=1))
    if len(stroke):
        stroke_ep = np.searchsorted(ds.ep_to, stroke, side="right")
        stroke_eps = np.unique(stroke_ep)
        eps = len(stroke_eps)
        z = plain[stroke, 2] * cm
        # each such episode's task, and for a single push where its first stroke ends: the distance
        # from there to the zone's centre, horizontally
        env, families, to_zone = TabletopEnv(), collections.Counter(), []
        try:
            for e in stroke_eps.tolist():
                reset_scene(env, ds, bags, e, a.split)
                subs = env.task.subtasks
                families["+".join(sub.family for sub in subs)] += 1
                if len(subs) == 1 and subs[0].family == "push":
                    first = stroke[stroke_ep == e][0]
                    zone = env.body_position(subs[0].target)[:2]
                    to_zone.append(float(np.linalg.norm(ends.goals[first, :2] - zone)) * cm)
        finally:
            env.close()
        print(
            f"\npush strokes of the whole dataset ({len(stroke)} frames in {eps} episodes; push ends at "
            f"{STROKE_TRAVEL * cm:.0f} cm of travel): target height without push ends "
            f"{' / '.join(f'{x:.1f}' for x in np.percentile(z, [10, 50, 90]))} cm (10th / 50th / 90th "
            f"percentile), more than 10 cm up on {np.mean(z > 10):.0%}; with them "
            f"{' / '.join(f'{x:.1f}' for x in np.percentile(ends.goals[stroke, 2] * cm, [10, 50, 90]))} cm"
        )
        print(f"their tasks: {dict(families)}")
        if to_zone:
            print(
                f"single pushes: the stroke's end is {min(to_zone):.1f}-{max(to_zone):.1f} cm from the zone's "
                f"centre ({len(to_zone)} episodes)"
            )


if __name__ == "__main__":
    main()
