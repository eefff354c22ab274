"""Record scripted demonstrations through ROS into rosbag2 (mcap), one bag per episode.

    apt-record-demos --episodes 100 --out data/demos --seed 0            # as fast as possible
    apt-record-demos --episodes 5 --out data/demos --speed 1.0           # real time
    apt-record-demos --episodes 100 --out data/demos --disturbance 0.03  # DART-style recovery demos
    apt-record-demos --episodes 100 --out data/demos --missed-grasp 0.5  # half start after a miss
    apt-record-demos --episodes 100 --out data/demos --missed-grasp 0.5 --missed-grasp-near any
    apt-record-demos --episodes 1000 --out data/pushes --families push   # only the seeds whose task pushes
    apt-record-demos --episodes 100 --out data/takeover --policy-start ros2_ws/src/apt_bringup/policies/default
        # DAgger-style: the policy drives 1-10 s, then the expert takes over and the recording starts

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
from apt_core.sim.policy_start import SECONDS, PolicyStart, check_settings
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
    policy_start: PolicyStart | None = None,
) -> dict:
    """Record demos on seeds seed..seed+episodes-1; returns a summary dict. With `families`, only
    the seeds whose task's subtasks are all of those families are recorded (the others are counted
    as skipped), so that a weak task family can be given more demonstrations. With `policy_start`,
    episodes begin where that policy has taken the scene (apt_core.sim.policy_start); those the
    policy finished on its own are not kept (counted as "policy_completed")."""
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
        "policy_start": None
        if policy_start is None
        else {"share": policy_start.share, "seconds": list(policy_start.seconds)},
        "policy_completed": 0,
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
        policy_start=policy_start,
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
            summary["episodes"].append(ep.__dict__)
            if ep.policy_completed:  # nothing left for the expert to show
                shutil.rmtree(tmp, ignore_errors=True)
                summary["policy_completed"] += 1
                print(
                    f"episode {s}: the policy finished it in {ep.policy_start_s:.1f} s; not kept", flush=True
                )
                continue
            if ep.success or keep_failures:
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            summary["ok" if ep.success else "failed"] += 1
            print(
                f"episode {s}: success={ep.success} sim={ep.sim_seconds:.1f}s frames={ep.frames}"
                + (" missed-grasp start" if ep.missed_start else "")
                + (f" policy start {ep.policy_start_s:.1f}s" if ep.policy_start_s else "")
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
    ap.add_argument(
        "--policy-start",
        default="",
        metavar="CHECKPOINT",
        help="DAgger-style starts: this trained policy first drives for a while (drawn per seed), then the "
        "expert takes over and the recording begins there, so the demos show the way on from the states "
        "the policy's own actions lead to (apt_core.sim.policy_start); episodes it finishes are not kept",
    )
    ap.add_argument(
        "--policy-start-share",
        type=float,
        default=1.0,
        help="share of episodes (drawn per scene seed) with a policy start; the others start at HOME",
    )
    ap.add_argument(
        "--policy-start-seconds",
        type=float,
        nargs=2,
        default=SECONDS,
        metavar=("LOW", "HIGH"),
        help="how long the policy drives before the takeover, drawn uniformly per seed [s]",
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
    start = None
    if a.policy_start:
        from apt_core.model.runner import load_runner  # lazily: torch is heavy

        try:
            check_settings(a.policy_start_share, a.policy_start_seconds)
        except ValueError as e:
            ap.error(str(e))
        try:
            runner = load_runner(a.policy_start, noise_scale=0.0)
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: CheckpointError
            ap.error(f"--policy-start {a.policy_start}: {e}")
        start = PolicyStart(runner, a.policy_start_share, a.policy_start_seconds)
    elif a.policy_start_share != 1.0 or tuple(a.policy_start_seconds) != SECONDS:
        ap.error("--policy-start-share and --policy-start-seconds need --policy-start CHECKPOINT")
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
            policy_start=start,
        )
    except RuntimeError as e:  # the harness could not start (e.g. another simulator in this domain)
        print(f"apt-record-demos: error: {e}", file=sys.stderr)
        return 1
    skipped = f" ({s['skipped']} seeds of other families skipped)" if a.families else ""
    if start is not None:
        skipped += f" ({s['policy_completed']} finished by the policy before the takeover, not kept)"
    print(
        f"recorded {s['ok']} successful / {s['ok'] + s['failed']} episodes into {a.out} in "
        f"{s['wall_s']:.1f} s{skipped}"
    )
    return 0 if s["ok"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
