"""The whole recipe from scratch, reproducible from a seed:

    record N scripted demos through the ROS sim (rosbag2 mcap) -> apt-convert (LeRobot v3)
    -> stage 1 (VA prior) -> stage 2 (language injection) -> evaluation in the simulator -> report

    apt-pipeline --recipe debug --episodes 20 --out runs/pipeline-debug
    apt-pipeline --recipe cpu-demo --episodes 200 --stage1-steps 1500 --stage2-steps 1500 \
        --out runs/pipeline-cpu --export ros2_ws/src/apt_bringup/policies/default

Every step is skipped when its output already exists and is complete, so a re-run after a kill
continues where it stopped (training resumes from its last checkpoint). `--export` copies the final
checkpoint and its report to a folder (how the shipped default policy was made).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from apt_core.contract import load_contract
from apt_core.data.convert import convert
from apt_core.fileio import atomic_write_text
from apt_core.model.checkpoint import load_checkpoint
from apt_core.model.runner import PolicyRunner, check_noise_scale
from apt_core.sim.disturbance import MAX_STD
from apt_core.sim.env import MISS_NEAR, SceneMismatchError, check_dataset_scene, scene_fingerprint
from apt_core.sim.evaluate import evaluate, write_results
from apt_core.sim.tasks import SPLITS

from .cli import field_value
from .config import TRAIN_PRESETS, TrainConfig, TrainConfigError, train_preset
from .loop import final_step, train_or_reuse
from .plots import read_metrics


@dataclass(frozen=True)
class PipelineConfig:
    out: str = "runs/pipeline"  # run folder: demos/, dataset/, stage1/, stage2/, eval/, report.md
    recipe: str = "debug"  # training preset of both stages
    episodes: int = 20  # scripted demonstrations to record
    seed: int = 0  # scene seeds seed..seed+episodes-1; training seed
    stage1_steps: int = 0  # 0: the recipe's default
    stage2_steps: int = 0  # 0: the recipe's default
    eval_episodes: int = 5  # evaluation episodes per split
    eval_splits: tuple[str, ...] = SPLITS  # evaluation splits
    eval_seed: int = 1000  # first evaluation scene seed (disjoint from the training scenes)
    # sampling temperature of the evaluation: 0, as the policy node serves (docs/experiments.md item 25)
    eval_noise_scale: float = 0.0
    export: str = ""  # copy the final checkpoint + report here
    threads: int = 0  # torch threads (0: recipe default)
    record_workers: int = 1  # parallel recorder processes (own ROS domain each, disjoint seed ranges)
    train_scene_episodes: int = 0  # also evaluate on the first N training scenes (memorisation check)
    record_disturbance: float = 0.0  # DART-style recording noise [rad] (apt_core.sim.disturbance)
    record_missed_grasp: float = 0.0  # share of demos that start after a missed grasp (docs/sim.md)
    record_missed_grasp_near: str = "named"  # beside which object: "named" or "any"
    # further training options per stage, as NAME=VALUE of a TrainConfig field (the flags of
    # apt-train-stage1/2 without the dashes), e.g. goal_weight=0.5 frame_stride=4
    stage1_set: tuple[str, ...] = ()
    stage2_set: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.recipe not in TRAIN_PRESETS:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(TRAIN_PRESETS)}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.record_workers < 1:
            raise ValueError(f"record_workers must be >= 1, got {self.record_workers}")
        if not 0 <= self.train_scene_episodes <= self.episodes:
            raise ValueError(
                f"train_scene_episodes must be in 0..episodes ({self.episodes}), got {self.train_scene_episodes}"
            )
        if not 0.0 <= self.record_disturbance <= MAX_STD:
            raise ValueError(
                f"record_disturbance must be in [0, {MAX_STD}] rad, got {self.record_disturbance}"
            )
        if not 0.0 <= self.record_missed_grasp <= 1.0:
            raise ValueError(
                f"record_missed_grasp is a share of episodes in [0, 1], got {self.record_missed_grasp}"
            )
        if self.record_missed_grasp_near not in MISS_NEAR:
            raise ValueError(
                f"record_missed_grasp_near must be one of {MISS_NEAR}, got {self.record_missed_grasp_near!r}"
            )
        try:
            check_noise_scale(self.eval_noise_scale)
        except ValueError as e:
            raise ValueError(f"eval_noise_scale: {e}") from None
        if self.eval_seed < self.seed + self.episodes:
            raise ValueError("eval_seed must be beyond the recorded scene seeds (seed + episodes)")
        for stage in (1, 2):  # refuse a malformed, unknown or invalid NAME=VALUE before recording
            overrides = self.stage_overrides(stage)
            try:
                train_preset(self.recipe, stage=stage, **overrides)
            except TrainConfigError as e:
                flag = f"--stage{stage}-set {' '.join(self.stage1_set if stage == 1 else self.stage2_set)}"
                raise ValueError(f"{flag}: {e}") from None

    def stage_overrides(self, stage: int) -> dict[str, object]:
        """The TrainConfig fields that --stage{1,2}-set NAME=VALUE pairs set for `stage`, typed."""
        fixed = {"dataset", "out_dir", "stage", "steps", "seed", "init_from", "threads"}
        out: dict[str, object] = {}
        for item in self.stage1_set if stage == 1 else self.stage2_set:
            name, eq, value = item.partition("=")
            flag = f"--stage{stage}-set {item!r}"
            if not eq or not name:
                raise ValueError(f"{flag}: expected NAME=VALUE, e.g. goal_weight=0.5")
            if name not in TrainConfig.__dataclass_fields__ or name in fixed:
                known = "; the pipeline sets it" if name in fixed else f"; see apt-train-stage{stage} --help"
                raise ValueError(f"{flag}: {name!r} is not a training option it can set{known}")
            try:
                out[name] = field_value(name, value)
            except ValueError as e:
                raise ValueError(f"{flag}: {e}") from None
        return out


# splits that keep a training scene's layout (the memorisation check, --train-scene-episodes)
TRAIN_SCENE_SPLITS = ("in_distribution", "task_perturbation", "position_perturbation")


def _log(msg: str) -> None:
    print(f"pipeline: {msg}", flush=True)


def record_step(pc: PipelineConfig, demos: Path) -> bool:
    """Record the demos unless `demos` holds a complete recording; returns whether it recorded."""
    done = demos / "DONE.json"
    if done.exists():
        recorded = json.loads(done.read_text())
        scene = recorded.get("sim_scene", "")
        if scene and scene != scene_fingerprint():
            raise SceneMismatchError(
                f"{demos} was recorded in simulator scene {scene!r}, the scene is now "
                f"{scene_fingerprint()!r} (robot, objects or camera changed): delete it to record again"
            )
        for key, asked, default in (
            ("disturbance", pc.record_disturbance, 0.0),
            ("missed_grasp", pc.record_missed_grasp, 0.0),
            ("missed_grasp_near", pc.record_missed_grasp_near, "named"),
        ):
            if type(default)(recorded.get(key, default)) != asked:
                flag = "--record-" + key.replace("_", "-")
                raise ValueError(
                    f"{demos} was recorded with {key} {recorded.get(key, default)}, this run asks for {flag} "
                    f"{asked}: delete it to record again, or use another --out"
                )
        _log(f"demos: {demos} already recorded" + ("" if scene else " (scene not recorded: unchecked)"))
        return False
    ranges = seed_ranges(pc.seed, pc.episodes, pc.record_workers)
    _log(
        f"recording {pc.episodes} scripted demos through the ROS sim -> {demos}"
        + (f" ({len(ranges)} recorder processes)" if len(ranges) > 1 else "")
    )
    if len(ranges) == 1:
        # A separate process: the recorder owns rclpy's global context and the EGL renderer.
        subprocess.run(_record_cmd(pc, demos, pc.episodes, pc.seed), check=True)
    else:
        # One recorder per seed range, each in its own ROS domain so that their sim nodes, expert
        # clients and bag recorders never see each other. The bags land in `demos/` as with one
        # recorder (same names, so the dataset is the same); each recorder writes its own summary.
        base = int(os.environ.get("ROS_DOMAIN_ID", "0") or 0)
        procs = []
        try:
            for k, (first, n) in enumerate(ranges):
                env = {**os.environ, "ROS_DOMAIN_ID": str(1 + (base + k) % 101)}
                cmd = _record_cmd(pc, demos, n, first) + ["--summary", f"summary_{k}.json"]
                procs.append(subprocess.Popen(cmd, env=env))
            failed = [k for k, p in enumerate(procs) if p.wait() != 0]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if failed:
            raise RuntimeError(f"recorder(s) {failed} failed (seed ranges {[ranges[k] for k in failed]})")
    atomic_write_text(
        done,
        json.dumps(
            {
                "episodes": pc.episodes,
                "seed": pc.seed,
                "bags": len(list(demos.glob("episode_*"))),
                "sim_scene": scene_fingerprint(),
                "disturbance": pc.record_disturbance,
                "missed_grasp": pc.record_missed_grasp,
                "missed_grasp_near": pc.record_missed_grasp_near,
            }
        ),
    )
    return True


def seed_ranges(seed: int, episodes: int, workers: int) -> list[tuple[int, int]]:
    """Split seeds seed..seed+episodes-1 into at most `workers` contiguous (first, count) ranges."""
    workers = max(1, min(workers, episodes))
    sizes = [episodes // workers + (k < episodes % workers) for k in range(workers)]
    starts = [seed + sum(sizes[:k]) for k in range(workers)]
    return list(zip(starts, sizes, strict=True))


def _record_cmd(pc: PipelineConfig, out: Path, episodes: int, seed: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "apt_sim.record_demos",
        "--episodes",
        str(episodes),
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--disturbance",
        str(pc.record_disturbance),
        "--missed-grasp",
        str(pc.record_missed_grasp),
        "--missed-grasp-near",
        pc.record_missed_grasp_near,
    ]


def convert_step(demos: Path, dataset: Path) -> tuple[dict, bool]:
    """The dataset's info.json, converting first unless it exists; and whether it converted."""
    info = dataset / "meta" / "info.json"
    if info.exists():
        _log(f"dataset: {dataset} already converted")
        return json.loads(info.read_text()), False
    _log(f"converting {demos} -> {dataset}")
    summary = convert(demos, dataset, load_contract(), progress=True)
    _log(f"converted {summary.episodes} episodes, {summary.frames} frames in {summary.seconds:.1f} s")
    return json.loads(info.read_text()), True


def run(pc: PipelineConfig) -> Path:
    out = Path(pc.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    reused: set[str] = set()  # steps whose output existed: the report says so instead of "0.0 min"

    t = time.monotonic()
    if not record_step(pc, out / "demos"):
        reused.add("record")
    timings["record"] = time.monotonic() - t

    t = time.monotonic()
    info, converted = convert_step(out / "demos", out / "dataset")
    if not converted:
        reused.add("convert")
    timings["convert"] = time.monotonic() - t
    # training on one scene and evaluating in another fails for no visible reason: refuse it
    warning = check_dataset_scene(out / "dataset")
    if warning:
        _log(f"warning: {warning}")

    recipe = TRAIN_PRESETS[pc.recipe]
    common = dict(dataset=str(out / "dataset"), seed=pc.seed, threads=pc.threads or recipe.get("threads", 0))

    def train_stage(stage: int, steps: int, **extra) -> Path:
        cfg = train_preset(
            pc.recipe, out_dir=str(out / f"stage{stage}"), stage=stage, steps=steps, **common, **extra
        )
        if final_step(cfg.out_path) == cfg.steps:  # what train_or_reuse returns as it is
            reused.add(f"stage{stage}")
        t = time.monotonic()
        final = train_or_reuse(cfg)
        timings[f"stage{stage}"] = time.monotonic() - t
        return final

    s1 = train_stage(1, pc.stage1_steps or recipe["steps"], **pc.stage_overrides(1))
    s2 = train_stage(2, pc.stage2_steps or recipe["steps"], init_from=str(s1), **pc.stage_overrides(2))

    t = time.monotonic()
    _log(f"evaluating {s2} on {len(pc.eval_splits)} splits x {pc.eval_episodes} episodes")
    policy, processor, meta = load_checkpoint(s2)
    res = evaluate(
        PolicyRunner(policy, processor, meta, seed=pc.seed, noise_scale=pc.eval_noise_scale),
        splits=pc.eval_splits,
        n_episodes=pc.eval_episodes,
        seed=pc.eval_seed,
    )
    write_results(res, out / "eval")
    timings["evaluate"] = time.monotonic() - t

    train_res = None
    if pc.train_scene_episodes:
        # The recorded layouts and instructions themselves, and the two perturbations of them:
        # success here but not on unseen scenes means the policy memorised layouts.
        t = time.monotonic()
        _log(f"evaluating on the first {pc.train_scene_episodes} training scenes")
        train_res = evaluate(
            PolicyRunner(policy, processor, meta, seed=pc.seed, noise_scale=pc.eval_noise_scale),
            splits=TRAIN_SCENE_SPLITS,
            n_episodes=pc.train_scene_episodes,
            seed=pc.seed,
        )
        write_results(train_res, out / "eval_training_scenes")
        timings["evaluate_training_scenes"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0

    report = render_report(pc, info, out, res, timings, meta, train_res, reused)
    atomic_write_text(out / "report.md", report)
    print(report)
    if pc.export:
        export(s2, out / "report.md", Path(pc.export))
    return out / "report.md"


def process_ends(rows: list[dict]) -> list[int]:
    """The last logged step of each training process, from a metrics file's train rows (each process
    restarts its `time_s` clock)."""
    ends = []
    for prev, row in zip(rows, rows[1:], strict=False):
        if row["time_s"] < prev["time_s"]:
            ends.append(prev["step"])
    return [*ends, rows[-1]["step"]] if rows else []


def render_report(
    pc: PipelineConfig,
    info: dict,
    out: Path,
    res,
    timings: dict,
    meta: dict,
    train_res=None,
    reused: set[str] = frozenset(),
) -> str:
    from apt_core.sim.evaluate import summary_markdown

    def loss_line(stage: str) -> str:
        rows = [r for r in read_metrics(out / stage / "metrics.jsonl") if r.get("kind") == "train"]
        if not rows:
            return "not trained in this run"
        line = f"{rows[-1]['step']} steps, loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}"
        ends = process_ends(rows)
        if len(ends) > 1:
            line += (
                f"; trained in {len(ends)} processes, ending at steps {', '.join(map(str, ends))} (a rerun "
                "after a kill resumes on the same learning-rate schedule; a rerun with more steps trains on "
                "with the schedule of its new target, so this is not the same as one uninterrupted run)"
            )
        return line

    cmd = (
        f"apt-pipeline --recipe {pc.recipe} --episodes {pc.episodes} --seed {pc.seed} --out {pc.out}"
        + (f" --stage1-steps {pc.stage1_steps}" if pc.stage1_steps else "")
        + (f" --stage2-steps {pc.stage2_steps}" if pc.stage2_steps else "")
        + f" --eval-episodes {pc.eval_episodes}"
        + (f" --eval-noise-scale {pc.eval_noise_scale:g}" if pc.eval_noise_scale else "")
        + (f" --record-workers {pc.record_workers}" if pc.record_workers > 1 else "")
        + (f" --train-scene-episodes {pc.train_scene_episodes}" if pc.train_scene_episodes else "")
        + (f" --record-disturbance {pc.record_disturbance:g}" if pc.record_disturbance else "")
        + (f" --record-missed-grasp {pc.record_missed_grasp:g}" if pc.record_missed_grasp else "")
        + (
            f" --record-missed-grasp-near {pc.record_missed_grasp_near}"
            if pc.record_missed_grasp_near != "named"
            else ""
        )
        + (f" --stage1-set {' '.join(pc.stage1_set)}" if pc.stage1_set else "")
        + (f" --stage2-set {' '.join(pc.stage2_set)}" if pc.stage2_set else "")
    )
    times = ", ".join(
        f"{k} {'done in an earlier run' if k in reused else f'{v / 60:.1f} min'}" for k, v in timings.items()
    )
    return (
        f"# Training report: {pc.recipe}\n\n"
        f"Made by `{cmd}`.\n\n"
        f"- data: {pc.episodes} scripted demos recorded through the ROS sim (scene seeds {pc.seed}.."
        f"{pc.seed + pc.episodes - 1}"
        + (f", DART-style disturbance {pc.record_disturbance:g} rad" if pc.record_disturbance else "")
        + (
            f", a share {pc.record_missed_grasp:g} starting after a missed grasp beside "
            + ("the object to grasp" if pc.record_missed_grasp_near == "named" else "any object")
            if pc.record_missed_grasp
            else ""
        )
        + f"), {info.get('total_episodes', '?')} episodes / "
        f"{info.get('total_frames', '?')} frames after conversion, {info.get('total_tasks', '?')} distinct instructions\n"
        f"- model: preset `{pc.recipe}`, backbone `{meta.get('backbone')}` ({meta.get('backbone_mode')}), "
        f"stage {meta.get('stage')}, {meta.get('chunk_length')}-step chunks at {meta.get('rate_hz')} Hz\n"
        f"- stage 1: {loss_line('stage1')}\n"
        f"- stage 2: {loss_line('stage2')}\n"
        f"- time: {times}\n\n"
        f"## Evaluation in the simulator (scene seeds from {pc.eval_seed}, unseen in training)\n\n"
        f"Actions sampled at noise scale {pc.eval_noise_scale:g}"
        + (" (as the policy node serves them)" if pc.eval_noise_scale == 0 else "")
        + "; a chain is given one subtask's words at a time, as the node gives them.\n\n"
        f"{summary_markdown(res.summary)}\n"
        + (
            ""
            if train_res is None
            else f"\n## The same policy on its first {pc.train_scene_episodes} training scenes "
            f"(scene seeds {pc.seed}..{pc.seed + pc.train_scene_episodes - 1})\n\n"
            "in_distribution is a recorded demonstration's own layout and instruction; task_perturbation "
            "asks for another training task in that layout, position_perturbation swaps the named object "
            "with another's place. Success here but not above means the policy memorised layouts.\n\n"
            f"{summary_markdown(train_res.summary)}\n"
        )
    )


def export(ckpt: Path, report: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(ckpt, tmp)
    shutil.copy2(report, tmp / "TRAINING_REPORT.md")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    _log(f"exported {ckpt} -> {dest}")


def main(argv: list[str] | None = None) -> None:
    # the console script exits with main's return value: None is status 0 (a Path would be 1)
    p = argparse.ArgumentParser(prog="apt-pipeline", description=__doc__.splitlines()[0])
    defaults = PipelineConfig()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, tuple):
            p.add_argument(flag, nargs="+", default=list(value))
        else:
            p.add_argument(flag, type=type(value), default=value)
    a = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(p.parse_args(argv)).items()}
    run(PipelineConfig(**a))


if __name__ == "__main__":
    main()
