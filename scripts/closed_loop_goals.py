"""How good is a goal-input policy's goal while it acts, and how much does goal error cost?

    python scripts/closed_loop_goals.py CHECKPOINT --goal pointer [--episodes 10] [--seed 1000]
    python scripts/closed_loop_goals.py CHECKPOINT --goal oracle-offset --offset 0.02
    python scripts/closed_loop_goals.py CHECKPOINT --goal latched
    python scripts/closed_loop_goals.py CHECKPOINT --goal oracle-carry

Runs the simulator evaluation (`apt_core.sim.evaluate`, all six splits unless `--splits`) with a
checkpoint trained with `--goal-input`, and on every chunk compares the goal the policy predicts
(`APTPolicy.predict_goal`: the goal pointer's, or the head's) with the true one
(`apt_core.sim.expert.oracle_goal`). The goal the actions get:
- `pointer`: the policy's own (as served);
- `oracle-offset`: the true goal moved by `--offset` [m] in a random horizontal direction, drawn
  once per subtask and phase (a goal predictor that is off by that much, consistently);
- `latched`: the policy's own goal from the first chunk of each gripper phase (open or shut, read
  from the gripper joint), held until the phase changes;
- `oracle-carry`: the policy's own goal until the gripper shuts on an object, the true goal while
  it carries one (how much the goal of the place costs).
In every mode it prints the predicted goal's xy error [cm] by phase, and for the reach by chunk of
the episode and by distance of the tool to the goal. The phases: a reach (gripper open, nothing
touched); touching (gripper open, a finger pad touching an object: the true goal, which follows the
simulator's contacts, is already the place, while the policy's, which follows the gripper as the
demonstrations' goals do, is still the object); a carry (gripper shut on an object); a push
(gripper shut on nothing while the subtask is a push: the shut fingers are the paddle; the true goal
is where the push ends, or the stroke's start for a policy trained with push contacts while the
tool is not yet there); a missed grasp (gripper shut on nothing in any other subtask; the
demonstrations show it only when recorded with `--missed-grasp`).
It also counts the episodes with a missed grasp, and of those the ones whose gripper opened again
afterwards and the ones that then carried an object (a retry).
Prints the evaluation table; `--out FILE` writes the per-chunk records as JSON. These are the
numbers in docs/experiments.md items 20, 23 and 27.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from apt_core.model.runner import PolicyRunner, load_runner
from apt_core.sim.env import TabletopEnv
from apt_core.sim.evaluate import SPLITS, evaluate, summary_markdown
from apt_core.sim.expert import oracle_goal, trained_with_push_contact, trained_with_push_end
from apt_core.types import Observation

SHUT = 0.06  # [m] gripper joint below this: shut (on an object or on nothing); open is 0.08


def phase_of(env: TabletopEnv, shut: bool) -> str:
    """The phase of the current chunk (see the module docstring): reach, touching, carry, push or
    missed."""
    held = bool(env.held_objects())
    if not shut:
        return "touching" if held else "reach"
    if held:
        return "carry"
    return "push" if env.current_subtask().family == "push" else "missed"


class GoalProbe:
    """A ChunkPolicy around a PolicyRunner that records predicted against true goals and chooses
    which goal the actions get (see the module docstring)."""

    def __init__(self, run: PolicyRunner, env: TabletopEnv, mode: str, offset: float, gripper: int) -> None:
        self.run, self.env, self.mode, self.offset, self.gripper = run, env, mode, offset, gripper
        self.joint_names, self.chunk_length, self.rate_hz = run.joint_names, run.chunk_length, run.rate_hz
        self.rng = np.random.default_rng(0)
        # the goal it was trained on
        self.push_contact = trained_with_push_contact(run.meta)
        self.push_end = trained_with_push_end(run.meta)
        self.records: list[dict] = []
        self.episode = -1

    def reset(self) -> None:
        self.run.reset()
        self.episode += 1
        self.chunk = 0
        self.offsets: dict[tuple, np.ndarray] = {}
        self.phase: bool | None = None
        self.latched = np.zeros(3)

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        true = oracle_goal(self.env, self.push_contact, self.push_end)
        held = bool(self.env.held_objects())
        hist = obs.extras.get("action_history") if obs.extras else None
        batch = self.run.processor.process_observation(obs, instruction, action_history=hist)
        with torch.inference_mode():
            pred = self.run.policy.predict_goal(batch)[0].numpy()
        tool = self.env.tcp_position()
        shut = bool(obs.joint_positions[self.gripper] < SHUT)
        self.records.append(
            {
                "episode": self.episode,
                "chunk": self.chunk,
                "phase": phase_of(self.env, shut),
                "error": float(np.linalg.norm(pred[:2] - true[:2])),
                "tool_to_goal": float(np.linalg.norm(tool - true)),
            }
        )
        self.chunk += 1
        goal = None
        if self.mode == "oracle-offset":
            key = (self.env.subtask_progress(), held)
            if key not in self.offsets:
                d = self.rng.normal(size=2)
                self.offsets[key] = np.r_[self.offset * d / np.linalg.norm(d), 0.0]
            goal = true + self.offsets[key]
        elif self.mode == "oracle-carry":
            goal = true if shut and held else None
        elif self.mode == "latched":
            if shut != self.phase:
                self.phase, self.latched = shut, pred
            goal = self.latched
        if goal is not None:
            obs = dataclasses.replace(obs, extras={**obs.extras, "goal": goal})
        return self.run.predict(obs, instruction)


def _median_row(label: str, errors: list[float]) -> str:
    if not errors:
        return f"| {label} | - | - | 0 |"
    e = np.asarray(errors) * 100
    return f"| {label} | {np.median(e):.1f} | {np.percentile(e, 75):.1f} | {len(e)} |"


def retry_counts(records: list[dict]) -> tuple[int, int, int]:
    """Episodes with a missed grasp; of those, how many opened the gripper again after one; and how
    many carried an object after reopening (chunk records in order, as GoalProbe writes them)."""
    state: dict[int, int] = {}  # episode -> 1 missed, 2 reopened after a miss, 3 carried after that
    for x in records:
        k, ph = x["episode"], x["phase"]
        st = state.get(k, 0)
        if ph == "missed" and st == 0:
            state[k] = 1
        elif ph in ("reach", "touching") and st == 1:
            state[k] = 2
        elif ph == "carry" and st == 2:
            state[k] = 3
    v = list(state.values())
    return len(v), sum(s >= 2 for s in v), sum(s == 3 for s in v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument(
        "--goal", choices=("pointer", "oracle-offset", "latched", "oracle-carry"), default="pointer"
    )
    ap.add_argument("--offset", type=float, default=0.02, help="[m] for --goal oracle-offset")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS))
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default="", help="write the per-chunk records here (JSON)")
    a = ap.parse_args()
    run = load_runner(a.checkpoint)
    if not run.policy.cfg.goal_input:
        ap.error(f"{a.checkpoint} was not trained with --goal-input: its actions take no goal")
    env = TabletopEnv()
    probe = GoalProbe(run, env, a.goal, a.offset, list(run.joint_names).index("gripper"))
    res = evaluate(probe, a.splits, a.episodes, a.seed, env=env)
    print(summary_markdown(res.summary))
    r = probe.records
    print(
        "\n| predicted goal, xy error against the true goal | median [cm] | 75th percentile [cm] | chunks |"
    )
    print("| --- | --- | --- | --- |")
    reach = [x for x in r if x["phase"] == "reach"]
    phases = {
        "reach": "gripper open, nothing touched (a reach)",
        "touching": "gripper open, a pad touching an object (the true goal is already the place)",
        "carry": "gripper shut on an object (a carry)",
        "push": "gripper shut on nothing in a push (the paddle)",
        "missed": "gripper shut on nothing in a grasping subtask (a missed grasp)",
    }
    for key, label in phases.items():
        print(_median_row(label, [x["error"] for x in r if x["phase"] == key]))
    for c in range(4):
        print(_median_row(f"reach, chunk {c} of the episode", [x["error"] for x in reach if x["chunk"] == c]))
    for lo, hi in ((0.0, 0.06), (0.06, 0.15), (0.15, 9.0)):
        near = [x["error"] for x in reach if lo <= x["tool_to_goal"] < hi]
        print(_median_row(f"reach, tool {lo * 100:.0f}-{hi * 100:.0f} cm from the goal", near))
    missed, reopened, carried = retry_counts(r)
    episodes = len({x["episode"] for x in r})
    print(
        f"\nMissed grasps: {missed} of {episodes} episodes shut the gripper on nothing; {reopened} of "
        f"those opened it again afterwards, and {carried} then carried an object."
    )
    if a.out:
        Path(a.out).write_text(json.dumps(r))


if __name__ == "__main__":
    main()
