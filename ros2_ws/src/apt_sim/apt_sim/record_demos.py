"""Record scripted demonstrations through ROS into rosbag2 (mcap), one bag per episode.

    apt-record-demos --episodes 100 --out data/demos --seed 0            # as fast as possible
    apt-record-demos --episodes 5 --out data/demos --speed 1.0           # real time
    apt-record-demos --episodes 100 --out data/demos --disturbance 0.03  # DART-style recovery demos
    apt-record-demos --episodes 100 --out data/demos --missed-grasp 0.5  # half start after a miss
    apt-record-demos --episodes 100 --out data/demos --missed-grasp 0.5 --missed-grasp-near any
    apt-record-demos --episodes 1000 --out data/pushes --families push   # only the seeds whose task pushes

Runs the sim node, a PolicyClient driving the ScriptedExpert (it publishes JointTrajectory chunks
on the controller topic, as a teleoperator would) and a bag recorder on one executor
(`apt_sim.harness`). Each episode becomes `<out>/episode_<seed>/` holding the contract's topics
(/joint_states, camera image + camera_info, the controller topic, /apt/instruction, and
/apt_sim/success) and custom metadata (instruction, task, seed, split, success). Bags are written
under a temporary name and renamed when complete, so a crash never leaves a half-written episode;
failed episodes are deleted unless `--keep-failures`.

On a real robot the equivalent is (one bag per demonstration, while teleoperating):
    ros2 bag record -s mcap -o episode_000000 /joint_states /camera/front/image_raw \
        /camera/front/camera_info /arm_controller/joint_trajectory /apt/instruction
(with the instruction published latched: ros2 topic pub --once --qos-durability transient_local
 /apt/instruction std_msgs/msg/String "{data: 'put the red cube in the blue bowl'}").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from apt_core.sim.disturbance import MAX_STD
from apt_core.sim.env import MISS_NEAR
from apt_core.sim.expert import ScriptedExpert
from apt_core.sim.tasks import FAMILIES, SPLITS, make_task
from apt_sim.harness import SimHarness


def record(
    out: Path,
    episodes: int,
    seed: int = 0,
    split: str = "in_distribution",
    speed: float = 0.0,
    max_seconds: float = 20.0,
    settle: float = 0.5,
    keep_failures: bool = False,
    contract_path: str = "",
    execute_steps: int = 8,
    summary_name: str = "summary.json",
    disturbance: float = 0.0,
    missed_grasp: float = 0.0,
    missed_grasp_near: str = "named",
    families: tuple[str, ...] = (),
) -> dict:
    """Record demos on seeds seed..seed+episodes-1; returns a summary dict. With `families`, only
    the seeds whose task's subtasks are all of those families are recorded (the others are counted
    as skipped), so that a weak task family can be given more demonstrations."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {list(FAMILIES)}")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "episodes": [],
        "ok": 0,
        "failed": 0,
        "skipped": 0,
        "families": list(families),
        "disturbance": disturbance,
        "missed_grasp": missed_grasp,
        "missed_grasp_near": missed_grasp_near,
    }
    t0 = time.perf_counter()
    with SimHarness(
        ScriptedExpert,
        speed,
        contract_path,
        execute_steps,
        record=True,
        disturbance=disturbance,
        missed_grasp=missed_grasp,
        missed_grasp_near=missed_grasp_near,
    ) as h:
        for s in range(seed, seed + episodes):
            if families and any(sub.family not in families for sub in make_task(s, split)[0].subtasks):
                summary["skipped"] += 1
                continue
            final, tmp = out / f"episode_{s:06d}", out / f".episode_{s:06d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                ep = h.episode(s, split, max_seconds=max_seconds, settle=settle, bag=tmp)
            except BaseException:  # e.g. another simulator showed up in this domain: keep no partial bag
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if ep.success or keep_failures:
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            summary["ok" if ep.success else "failed"] += 1
            summary["episodes"].append(ep.__dict__)
            print(
                f"episode {s}: success={ep.success} sim={ep.sim_seconds:.1f}s frames={ep.frames}"
                + (" missed-grasp start" if ep.missed_start else "")
                + f" :: {ep.instruction}",
                flush=True,
            )
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    tmp = out / f".{summary_name}.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / summary_name)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Record scripted demos through the ROS sim node into rosbag2 (mcap)."
    )
    ap.add_argument("--episodes", type=int, default=10, help="number of episodes (seeds seed..seed+N-1)")
    ap.add_argument("--out", type=Path, required=True, help="output folder; one bag folder per episode")
    ap.add_argument("--seed", type=int, default=0, help="first scene seed")
    ap.add_argument("--split", default="in_distribution", choices=SPLITS, help="task split to draw from")
    ap.add_argument("--speed", type=float, default=0.0, help="real-time factor; 0 = as fast as possible")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="sim-time limit per episode [s]")
    ap.add_argument("--settle", type=float, default=0.5, help="keep recording this long after success [s]")
    ap.add_argument("--keep-failures", action="store_true", help="also keep bags of failed episodes")
    ap.add_argument("--contract", default="", help="contract YAML (default: the sim contract)")
    ap.add_argument(
        "--summary",
        default="summary.json",
        help="name of the summary file in --out (parallel recorders into one folder each need their own)",
    )
    ap.add_argument(
        "--disturbance",
        type=float,
        default=0.0,
        help="DART-style noise: std [rad] of a smooth drift added to the arm's setpoints beneath the "
        "controller, so the demos show recoveries while the recorded commands stay the expert's (0 = none)",
    )
    ap.add_argument(
        "--missed-grasp",
        type=float,
        default=0.0,
        help="share of episodes (drawn per scene seed) that start as after a missed grasp: gripper shut "
        "on nothing a few cm beside the object to grasp, so the demo shows opening and grasping again",
    )
    ap.add_argument(
        "--missed-grasp-near",
        choices=MISS_NEAR,
        default="named",
        help="beside which object a missed-grasp start is: the one to grasp, or any of the scene's "
        "(drawn per seed), so that the object beside the gripper does not give away which one to grasp",
    )
    ap.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        default=[],
        help="record only the seeds whose task is of these families (every subtask, for a chain); the "
        "others are skipped, so --episodes counts seeds, not recordings",
    )
    a = ap.parse_args(argv)
    if a.episodes < 1:
        ap.error("--episodes must be >= 1")
    if a.speed < 0:
        ap.error("--speed must be >= 0")
    if not 0.0 <= a.disturbance <= MAX_STD:
        ap.error(f"--disturbance must be in [0, {MAX_STD}] rad, got {a.disturbance}")
    if not 0.0 <= a.missed_grasp <= 1.0:
        ap.error(f"--missed-grasp is a share of episodes in [0, 1], got {a.missed_grasp}")
    try:
        s = record(
            a.out,
            a.episodes,
            a.seed,
            a.split,
            a.speed,
            a.max_seconds,
            a.settle,
            a.keep_failures,
            a.contract,
            summary_name=a.summary,
            disturbance=a.disturbance,
            missed_grasp=a.missed_grasp,
            missed_grasp_near=a.missed_grasp_near,
            families=tuple(a.families),
        )
    except RuntimeError as e:  # the harness could not start (e.g. another simulator in this domain)
        print(f"apt-record-demos: error: {e}", file=sys.stderr)
        return 1
    skipped = f" ({s['skipped']} seeds of other families skipped)" if a.families else ""
    print(
        f"recorded {s['ok']} successful / {s['ok'] + s['failed']} episodes into {a.out} in "
        f"{s['wall_s']:.1f} s{skipped}"
    )
    return 0 if s["ok"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
