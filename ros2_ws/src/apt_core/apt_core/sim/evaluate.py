"""In-process evaluation harness: any ChunkPolicy, N episodes per split, fixed seeds, 95% Wilson CIs.

    from apt_core.sim.evaluate import evaluate, write_results
    res = evaluate(policy, splits=("in_distribution", "paraphrase"), n_episodes=20, seed=0)
    write_results(res, "out/eval")          # out/eval/episodes.csv, summary.csv, summary.md

Episode i of a split uses scene seed `seed + i`, so every policy sees exactly the same scenes and
instructions. The policy's chunk is executed for `execute_steps` control steps before the next
`predict` (receding horizon); an episode ends at success or after `max_steps` control steps.
A chain ("A, then B") is given to the policy as the policy node gives it: one subtask's words at a
time (`runtime.tasks.split_chain`), the next once the simulator counts the previous one done (the
node does that on /apt_sim/subtasks_done). `chain_text="whole"` gives the whole instruction
throughout instead, as this harness did until session 24.

Success alone says nothing about a policy that fails everywhere, so each episode also records
partial-progress measures for the object of the first subtask: the closest the gripper's TCP came
to it (`min_distance`; "reached" when within `REACH_RADIUS`, or when the task succeeded: a policy
may push an object from further away than the expert does) and whether it was moved at all
(`moved`: displaced by more than `MOVED_DISTANCE`, by the policy or by knocking it). For a grasp
(pick-and-place and stack) three more say where it went wrong: how far the TCP was from the
object's centre when the gripper was first commanded shut (`grasp_offset`; the scripted expert
closes within a few mm), whether another object was nearer the TCP then (`wrong_object`: the
policy went for the wrong object, a grounding error rather than an imprecise one) and whether the
named object then rose `LIFT_HEIGHT` while touching a finger pad (`lifted`).
The end-to-end variant through the ROS nodes is `apt_sim.evaluate_ros` (same tables).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from apt_core.fileio import atomic_write_text
from apt_core.runtime.safety import SafetyFilter, SafetyLimits
from apt_core.runtime.stitching import STITCH_METHODS, Trajectory, velocities_from_positions
from apt_core.runtime.tasks import split_chain
from apt_core.sim.env import GRIPPER_SHUT, URDF_PATH, TabletopEnv
from apt_core.sim.tasks import OBJECTS, SPLITS, Task
from apt_core.types import ChunkPolicy, Observation, PolicyWrapper

REACH_RADIUS = 0.04  # TCP this close to the object centre counts as "reached" (pushes: ~3.3 cm) [m]
# the policy node's default sampling temperature (config/policy.yaml, docs/experiments.md item 25):
# a checkpoint is evaluated as it is served unless --noise-scale says otherwise
SERVED_NOISE_SCALE = 0.0
CHAIN_TEXTS = ("subtask", "whole")  # what a chain's policy reads: the current subtask, or all of it
MOVED_DISTANCE = 0.02  # the task object displaced this far from its start counts as "moved" [m]
LIFT_HEIGHT = 0.03  # the task object raised this far while touching a finger pad counts as "lifted" [m]


@dataclass(frozen=True)
class EpisodeResult:
    split: str  # evaluation split
    seed: int  # scene seed
    instruction: str  # instruction given to the policy
    family: str  # task family ("chain" for two-step tasks)
    success: bool  # ground-truth success at the end
    steps: int  # control steps taken
    subtasks_done: int  # subtasks completed in order
    # partial progress on the first subtask's object (NaN / False where not measured, e.g. over ROS)
    min_distance: float = math.nan  # closest TCP-to-object distance during the episode [m]
    moved: bool = False  # the object ended up displaced by more than MOVED_DISTANCE at some step
    # grasps only (NaN / False for pushes): TCP-to-object distance when the gripper was first commanded
    # shut (NaN: never shut) [m], whether another object was nearer then, whether the object was lifted
    grasp_offset: float = math.nan
    wrong_object: bool = False
    lifted: bool = False


@dataclass(frozen=True)
class SplitSummary:
    split: str  # evaluation split
    n: int  # episodes
    successes: int  # successful episodes
    rate: float  # successes / n
    ci_low: float  # 95% Wilson interval, lower bound
    ci_high: float  # 95% Wilson interval, upper bound
    reached: int = 0  # episodes whose TCP came within REACH_RADIUS of the task object, or that succeeded
    moved: int = 0  # episodes that moved the task object
    median_distance: float = math.nan  # median closest TCP-to-object distance [m] (NaN: not measured)
    lifted: int = 0  # episodes that lifted the task object (only grasps can)
    wrong_object: int = 0  # grasps that shut nearer another object than the named one
    median_grasp_offset: float = math.nan  # median grasp_offset of the grasps that shut the gripper [m]


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for the default z)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(episodes: Sequence[EpisodeResult]) -> list[SplitSummary]:
    out = []
    for split in dict.fromkeys(e.split for e in episodes):
        eps = [e for e in episodes if e.split == split]
        k = sum(e.success for e in eps)
        lo, hi = wilson_interval(k, len(eps))
        measured = [e for e in eps if not math.isnan(e.min_distance)]  # NaN: not measured (over ROS)
        # a solved task reached its object even when it pushed it from further away than the radius
        reached = sum(e.success or e.min_distance <= REACH_RADIUS for e in measured)
        median = float(np.median([e.min_distance for e in measured])) if measured else math.nan
        moved = sum(e.moved for e in eps)
        offsets = [e.grasp_offset for e in eps if not math.isnan(e.grasp_offset)]
        grasp = dict(
            lifted=sum(e.lifted for e in eps),
            wrong_object=sum(e.wrong_object for e in eps),
            median_grasp_offset=float(np.median(offsets)) if offsets else math.nan,
        )
        out.append(SplitSummary(split, len(eps), k, k / len(eps), lo, hi, reached, moved, median, **grasp))
    return out


@dataclass
class EvalResults:
    episodes: list[EpisodeResult]  # one row per episode
    summary: list[SplitSummary]  # one row per split
    seconds: float  # wall time of the evaluation


def subtask_texts(task: Task) -> list[str]:
    """A task's words one subtask at a time, as the policy node splits them (`split_chain`); all of
    it as one when that split disagrees with the task's subtasks."""
    texts = split_chain(task.instruction)
    return texts if len(texts) == len(task.subtasks) else [task.instruction]


def run_episode(
    env: TabletopEnv,
    policy: ChunkPolicy,
    seed: int,
    split: str,
    max_steps: int | None = None,
    execute_steps: int = 8,
    chain_text: str = "subtask",
) -> EpisodeResult:
    """One episode: reset, then predict / execute `execute_steps` until success or max_steps."""
    if execute_steps < 1:
        raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
    if chain_text not in CHAIN_TEXTS:
        raise ValueError(f"chain_text must be one of {CHAIN_TEXTS}, got {chain_text!r}")
    obs = env.reset(seed, split)
    task = env.task
    assert task is not None
    texts = subtask_texts(task) if chain_text == "subtask" else [task.instruction]
    policy.reset()
    limit = max_steps if max_steps is not None else 150 * len(task.subtasks)
    meter = EpisodeMeter(env, task)
    steps, ok = 0, False
    while steps < limit and not ok:
        chunk = np.asarray(policy.predict(obs, texts[min(env.subtask_progress(), len(texts) - 1)]))
        if chunk.ndim != 2 or chunk.shape[1] != len(env.contract.joint_names):
            raise ValueError(f"policy returned a chunk of shape {chunk.shape}; expected (H, 7)")
        for a in chunk[: min(execute_steps, len(chunk))]:
            env.step(a)
            steps += 1
            meter.update(a)
            if env.success():
                ok = True
                break
            if steps >= limit:
                break
        obs = env.observation()
    return meter.result(split, seed, ok, steps)


class EpisodeMeter:
    """The partial-progress measures of one episode (module docstring), for the first subtask's
    object: call `update` after every control step with the command executed, then `result`."""

    def __init__(self, env: TabletopEnv, task: Task) -> None:
        self.env, self.task = env, task
        self.obj = task.subtasks[0].obj
        self.grasp = task.subtasks[0].family != "push"  # a push shuts the fingers behind the object, a paddle
        self.start = env.body_position(self.obj)  # a copy
        self.closest, self.moved = float(np.linalg.norm(env.tcp_position() - self.start)), False
        self.offset, self.wrong, self.lifted = math.nan, False, False

    def update(self, command: np.ndarray) -> None:
        env, obj = self.env, self.obj
        here, tcp = env.body_position(obj), env.tcp_position()
        self.closest = min(self.closest, float(np.linalg.norm(tcp - here)))
        self.moved = self.moved or float(np.linalg.norm(here - self.start)) > MOVED_DISTANCE
        if self.grasp and math.isnan(self.offset) and command[6] < GRIPPER_SHUT:
            self.offset = float(np.linalg.norm(tcp - here))
            self.wrong = any(
                np.linalg.norm(tcp - env.body_position(o)) < self.offset for o in OBJECTS if o != obj
            )
        if self.grasp and not self.lifted and here[2] - self.start[2] > LIFT_HEIGHT:
            self.lifted = obj in env.held_objects()

    def result(self, split: str, seed: int, success: bool, steps: int) -> EpisodeResult:
        return EpisodeResult(
            split,
            seed,
            self.task.instruction,
            self.task.family,
            success,
            steps,
            self.env.subtask_progress(),
            self.closest,
            self.moved,
            grasp_offset=self.offset,
            wrong_object=self.wrong,
            lifted=self.lifted,
        )


class OracleGoal(PolicyWrapper):
    """Wraps a ChunkPolicy: each observation carries the privileged goal (`expert.oracle_goal`) in
    obs.extras["goal"], which a policy trained with a goal input uses instead of its goal head's.
    A PolicyRunner whose training used push-contact or push-end targets gets those
    (`trained_with_push_contact`, `trained_with_push_end`)."""

    def __init__(self, policy: ChunkPolicy, env: TabletopEnv) -> None:
        from apt_core.sim.expert import oracle_goal, trained_with_push_contact, trained_with_push_end

        super().__init__(policy)
        self.env, self._goal = env, oracle_goal
        meta = getattr(policy, "meta", {}) or {}
        self.push_contact, self.push_end = trained_with_push_contact(meta), trained_with_push_end(meta)

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        obs = dataclasses.replace(
            obs, extras={**obs.extras, "goal": self._goal(self.env, self.push_contact, self.push_end)}
        )
        return self.policy.predict(obs, instruction)


# the policy node's max_start_jump parameter default (apt_policy.params, config/policy.yaml) [rad]
NODE_MAX_START_JUMP = 0.3


def node_limits(joint_names: Sequence[str]) -> SafetyLimits:
    """The policy node's default joint limits (config/policy.yaml), tightened by the sim arm's URDF."""
    return SafetyLimits.uniform(tuple(joint_names), max_start_jump=NODE_MAX_START_JUMP).intersect_urdf(
        URDF_PATH
    )


class NodeLimits(PolicyWrapper):
    """Wraps a ChunkPolicy: each chunk is clamped as the policy node clamps its plans (a diagnostic).

    The node rewrites every plan to its joint limits (`runtime.safety.SafetyFilter`, mode clamp:
    velocity, acceleration and position, the URDF tightening them); this harness otherwise executes
    chunks as predicted. Here each chunk is clamped from the last command executed (at its
    velocity; at reset the measured joints, at rest), with `limits` (default: the node's defaults,
    `SafetyLimits.uniform` tightened by the simulated arm's URDF). Only the clamp: no ensembling,
    no asynchronous planning. `execute_steps` must be the harness's, so that the next chunk starts
    where this one was cut. `clamped_chunks` counts chunks the clamp changed."""

    def __init__(self, policy: ChunkPolicy, execute_steps: int, limits: SafetyLimits | None = None) -> None:
        if execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
        super().__init__(policy)
        self.execute_steps = execute_steps
        if limits is None:
            limits = node_limits(policy.joint_names)
        self.filter = SafetyFilter(limits)
        self.clamped_chunks = 0
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        super().reset()
        self._last = None

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        chunk = np.asarray(self.policy.predict(obs, instruction), dtype=np.float64)
        dt = 1.0 / self.rate_hz
        if self._last is None:
            p0 = np.asarray(obs.joint_positions, dtype=np.float64)
            v0 = np.zeros_like(p0)
        else:
            p0, v0 = self._last
        pos = np.vstack([p0, chunk])
        traj = Trajectory(np.arange(len(pos)) * dt, pos, velocities_from_positions(pos, dt, v0))
        safe, _ = self.filter.apply(traj, p0, v0)
        out = safe.positions[1:]
        if not np.allclose(out, chunk, rtol=0.0, atol=1e-9):
            self.clamped_chunks += 1
        k = min(self.execute_steps, len(out))
        prev = out[k - 2] if k >= 2 else p0
        self._last = (out[k - 1].copy(), (out[k - 1] - prev) / dt)
        return out


def evaluate(
    policy: ChunkPolicy,
    splits: Sequence[str] = SPLITS,
    n_episodes: int = 20,
    seed: int = 0,
    max_steps: int | None = None,
    execute_steps: int = 8,
    env: TabletopEnv | None = None,
    progress: bool = False,
    chain_text: str = "subtask",
    episode: Callable[..., EpisodeResult] = run_episode,
) -> EvalResults:
    """Run `policy` for `n_episodes` per split on seeds seed..seed+n-1 (see module docstring).

    env: the environment to use; default the policy's own `env` (ScriptedExpert) or a new one.
    max_steps: control-step budget per episode; default 150 per subtask (15 s at 10 Hz).
    chain_text: "subtask" (a chain's words one subtask at a time, as the policy node gives them) or
    "whole" (the whole instruction throughout).
    episode: runs one episode, called as `run_episode` (default) is; `closed_loop.RuntimeLoop` runs
    it through the policy node's runtime instead.
    """
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; expected from {SPLITS}")
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    env = env or getattr(policy, "env", None) or TabletopEnv()
    t0 = time.perf_counter()
    episodes = []
    for split in splits:
        for i in range(n_episodes):
            ep = episode(env, policy, seed + i, split, max_steps, execute_steps, chain_text)
            episodes.append(ep)
            if progress:
                print(f"{split} seed={ep.seed} success={ep.success} steps={ep.steps} :: {ep.instruction}")
    return EvalResults(episodes, summarize(episodes), time.perf_counter() - t0)


def summary_markdown(summary: Sequence[SplitSummary]) -> str:
    """Success with its interval, then the partial-progress columns (see the module docstring)."""
    lines = [
        "| split | n | success | rate | 95% CI | reached | moved | median closest | lifted "
        "| median grasp offset | shut at another object |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cm(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.1f} cm"

    for s in summary:
        # no closest distance: nothing but success was measured (over ROS), so no counts either
        measured = not math.isnan(s.median_distance)
        reached, moved, lifted, wrong = (
            f"{k}/{s.n}" if measured else "n/a" for k in (s.reached, s.moved, s.lifted, s.wrong_object)
        )
        lines.append(
            f"| {s.split} | {s.n} | {s.successes} | {100 * s.rate:.1f}% | "
            f"[{100 * s.ci_low:.1f}%, {100 * s.ci_high:.1f}%] | {reached} | {moved} | "
            f"{cm(s.median_distance)} | {lifted} | {cm(s.median_grasp_offset)} | {wrong} |"
        )
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_results(results: EvalResults, out_dir: str | Path) -> dict[str, Path]:
    """Write episodes.csv, summary.csv and summary.md (atomically) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"episodes": out / "episodes.csv", "summary": out / "summary.csv", "markdown": out / "summary.md"}
    atomic_write_text(paths["episodes"], _csv([asdict(e) for e in results.episodes]))
    atomic_write_text(paths["summary"], _csv([asdict(s) for s in results.summary]))
    atomic_write_text(paths["markdown"], summary_markdown(results.summary) + "\n")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m apt_core.sim.evaluate --policy expert --episodes 20 --out out/eval` (expert only
    from the CLI; trained checkpoints: `--checkpoint DIR` via apt_core.model.runner.load_runner)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--checkpoint", default="", help="trained policy dir (default: the scripted expert)")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS))
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--execute-steps", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--out", default="out/eval")
    ap.add_argument(
        "--oracle-goal",
        action="store_true",
        help="give a checkpoint trained with --goal-input the true goal instead of its goal head's (a diagnostic)",
    )
    ap.add_argument(
        "--node-limits",
        action="store_true",
        help="clamp each chunk to the policy node's default joint limits, as the node does (a diagnostic)",
    )
    ap.add_argument(
        "--runtime",
        action="store_true",
        help="run each episode through the policy node's runtime on simulated time (apt_core.sim.closed_loop: "
        "asynchronous chunks, stitching, the safety filter, the JTC follower; a diagnostic)",
    )
    # with --runtime only; left out, RuntimeLoop's defaults (the node's) apply
    ap.add_argument("--latency", type=float, help="with --runtime: simulated inference time [s] (default 0)")
    ap.add_argument(
        "--replan-steps", type=int, help="with --runtime: a new chunk every this many steps (default 4)"
    )
    ap.add_argument(
        "--stitch-method",
        choices=STITCH_METHODS,
        help="with --runtime: chunk stitching (default ensemble+rtc)",
    )
    ap.add_argument(
        "--noise-scale",
        type=float,
        default=None,
        help="a checkpoint's sampling noise times this (default 0, as the policy node serves: the same chunk "
        "for the same input; 1 samples as trained; docs/model.md)",
    )
    ap.add_argument(
        "--chain-text",
        choices=CHAIN_TEXTS,
        default="subtask",
        help="a chain's words for the policy: one subtask at a time as the policy node gives them "
        "(default), or the whole instruction throughout (this harness before session 24)",
    )
    a = ap.parse_args(argv)
    env = TabletopEnv()
    if a.checkpoint:
        from apt_core.model.runner import check_noise_scale, load_runner  # lazily: torch is heavy

        noise_scale = SERVED_NOISE_SCALE if a.noise_scale is None else a.noise_scale
        try:
            check_noise_scale(noise_scale)
        except ValueError as e:
            ap.error(f"--noise-scale: {e}")
        policy = load_runner(a.checkpoint, noise_scale=noise_scale)
        if a.oracle_goal:
            if not policy.policy.cfg.goal_input:
                ap.error(f"--oracle-goal: {a.checkpoint} was not trained with --goal-input")
            policy = OracleGoal(policy, env)
    elif a.oracle_goal:
        ap.error("--oracle-goal needs --checkpoint (a policy trained with --goal-input)")
    elif a.noise_scale is not None:
        ap.error("--noise-scale needs --checkpoint (the scripted expert samples no noise)")
    else:
        from apt_core.sim.expert import ScriptedExpert

        policy = ScriptedExpert(env)
    if a.node_limits:
        if a.runtime:
            ap.error(
                "--node-limits is for the plain harness: --runtime clamps with the node's safety filter itself"
            )
        policy = NodeLimits(policy, a.execute_steps)
    loop = None
    given = {
        k: v
        for k, v in (
            ("latency_s", a.latency),
            ("replan_steps", a.replan_steps),
            ("stitch_method", a.stitch_method),
        )
        if v is not None
    }
    if a.runtime:
        from apt_core.sim.closed_loop import RuntimeLoop  # it imports this module

        if a.chain_text != "subtask":
            ap.error("--runtime splits chains as the node does: --chain-text must be 'subtask'")
        try:
            loop = RuntimeLoop(**given)
        except ValueError as e:
            ap.error(str(e))
    elif given:
        ap.error("--latency, --replan-steps and --stitch-method need --runtime")
    res = evaluate(
        policy,
        a.splits,
        a.episodes,
        a.seed,
        a.max_steps,
        a.execute_steps,
        env=env,
        progress=True,
        chain_text=a.chain_text,
        episode=loop or run_episode,
    )
    paths = write_results(res, a.out)
    print(summary_markdown(res.summary))
    if a.node_limits:
        print(f"node limits: clamped {policy.clamped_chunks} chunks")
    if loop is not None:
        s = loop.stats
        age = float(np.median(s.plan_ages)) if s.plan_ages else math.nan
        print(
            f"runtime: {s.plans} plans ({s.clamped} clamped; median start {age:.2f} s after the observation), "
            f"{s.holds} holds, {s.faults} tasks ended by the start-jump check over {s.episodes} episodes"
        )
        for r in s.reasons:
            print(f"  {r}")
    print(f"wrote {paths['markdown']} ({res.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
