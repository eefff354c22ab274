"""Does a goal pointer read the words, or point at whatever object is beside the gripper?

    python scripts/pointer_shortcut.py CHECKPOINT [--scenes 10] [--seed 1000]

For the unseen scenes of the six evaluation splits (`--scenes` per split from `--seed`) whose first
subtask grasps an object, poses the arm three ways on the same scene and asks the policy for its
goal (`APTPolicy.predict_goal`, the pointer's when it has one) on that first frame:
- HOME, gripper open (how every episode starts);
- gripper shut on nothing beside the named object (a missed-grasp start, `TabletopEnv(missed_grasp=1)`);
- gripper shut on nothing beside another object of the scene (the same kind of start, `near=`).
For each it counts how often the predicted goal is nearest (in xy) the named object and how often
nearest the object beside the gripper. A pointer that reads the words points at the named object
in all three; one that learned "the object beside the gripper" from missed-grasp demonstrations
follows the gripper in the third. These are the numbers in docs/experiments.md item 23.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from apt_core.model.runner import load_runner
from apt_core.sim import tasks as T
from apt_core.sim.env import HOME, TabletopEnv
from apt_core.sim.evaluate import SPLITS


def nearest(env: TabletopEnv, goal: np.ndarray) -> str:
    """The object (of the scene's free objects) whose centre is nearest `goal` in xy."""
    names = [n for n in T.OBJECTS if n in env.layout.poses]
    return min(names, key=lambda n: float(np.linalg.norm(env.body_position(n)[:2] - goal[:2])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--scenes", type=int, default=10, help="scenes per split")
    ap.add_argument("--seed", type=int, default=1000, help="first scene seed of each split")
    a = ap.parse_args()
    run = load_runner(a.checkpoint)
    env = TabletopEnv(missed_grasp=1.0)
    rng = np.random.default_rng(0)
    counts = {k: [0, 0, 0] for k in ("home", "named", "other")}  # scenes, nearest named, nearest beside

    def goal(instruction: str) -> np.ndarray:
        batch = run.processor.process_observation(env.observation(), instruction)
        with torch.inference_mode():
            return run.policy.predict_goal(batch)[0].numpy()

    for split in SPLITS:
        for seed in range(a.seed, a.seed + a.scenes):
            env.reset(seed, split)
            sub = env.task.subtasks[0]
            others = [n for n in T.OBJECTS if n in env.layout.poses and n not in (sub.obj, sub.target)]
            if sub.family not in ("pick_place", "stack") or not others:
                continue
            other = others[int(rng.integers(len(others)))]
            starts = {
                "named": env.missed_grasp_start(seed),
                "other": env.missed_grasp_start(seed, near=other),
            }
            if any(q is None for q in starts.values()):
                continue  # no free start beside one of them: skip the scene for all three
            instruction = env.task.instruction
            for key, q in (("home", None), *starts.items()):
                env.place_arm(HOME if q is None else np.concatenate([q, [0.0]]))
                hit = nearest(env, goal(instruction))
                beside = {"home": None, "named": sub.obj, "other": other}[key]
                counts[key][0] += 1
                counts[key][1] += hit == sub.obj
                counts[key][2] += hit == beside
    print(f"checkpoint {a.checkpoint}, first frames of grasping scenes (seeds {a.seed}.. of each split)")
    print(
        "| arm at the start | scenes | goal nearest the named object | nearest the object beside the gripper |"
    )
    print("| --- | --- | --- | --- |")
    labels = {
        "home": "HOME, gripper open",
        "named": "shut on nothing beside the named object",
        "other": "shut on nothing beside another object",
    }
    for key, (n, named, beside) in counts.items():
        print(f"| {labels[key]} | {n} | {named} | {beside if key != 'home' else '-'} |")


if __name__ == "__main__":
    main()
