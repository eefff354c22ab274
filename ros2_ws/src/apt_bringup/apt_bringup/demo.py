"""The main job: the simulated arm follows language instructions with the shipped default policy.

    scripts/demo.sh                                    # = python -m apt_bringup.demo
    python -m apt_bringup.demo --checkpoint runs/pipeline-cpu/stage2/final --out outputs/demo

Starts the same node graph as `ros2 launch apt_bringup robot.launch.py sim:=true checkpoint:=...`
(apt_sim + apt_policy, from apt_bringup.graph), then for each scenario: resets the simulator to a
scene from an evaluation split (/apt_sim/reset), sends the instruction through the /apt/execute
action (feedback printed), and reads the simulator's ground-truth success (/apt_sim/success).
Prints a table, writes results.md and a contact sheet (contact_sheet.png: one row of camera frames
per instruction) into --out. The scenes are seeds the policy never saw in training.

    python -m apt_bringup.demo --splits chain --episodes 20 --seed 1100 --timeout 15 --out DIR

evaluates the whole ROS stack in real time on evaluation scenes instead (scene seeds --seed.. of each
split, `--timeout` seconds per subtask as the in-process harness's 15): results.md with a row per
split, and episodes.csv / summary.csv as `apt_core.sim.evaluate` writes them, so
`scripts/compare_evals.py` pairs the node over ROS with the in-process harness scene by scene.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apt_bringup.graph import DEFAULT_POLICY, command, resolve, share_dir
from apt_core.fileio import atomic_write_text

# (label, split, scene seed): in-distribution, a paraphrase, an unseen object-target combination and
# a two-step chain. A scene's layout depends only on its seed (the split draws the task), so the
# seeds lie outside every recording made for the shipped policy and its experiments (stage 1:
# 0-999, stage 2: 3000-5399, missed-grasp starts: 6000-6899, held-out checks: 9000-9039 and
# 19000-19099, fine-tunes: 10000-14799 and 20000-28199) and outside the evaluation sets (scene
# seeds 1000-2999, 7100-7639 and 7700-7939). Until session 18 they were 5001-5004, inside the stage-2 recordings' seed range.
SCENARIOS: tuple[tuple[str, str, int], ...] = (
    ("in-distribution", "in_distribution", 7001),
    ("paraphrase", "paraphrase", 7002),
    ("unseen combination", "unseen_combination", 7003),
    ("two-step chain", "chain", 7004),
)


def default_checkpoint() -> Path:
    """The shipped default policy (trained by apt-pipeline, see its TRAINING_REPORT.md)."""
    return share_dir() / DEFAULT_POLICY  # also what the graph uses when checkpoint:= is empty


@dataclass
class Outcome:
    label: str
    instruction: str
    accepted: bool
    policy_success: bool
    sim_success: bool
    reason: str
    seconds: float
    frames: list[np.ndarray]
    subtasks_done: int = 0  # the simulator's count (/apt_sim/subtasks_done) at the end


def _image(msg) -> np.ndarray:
    arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
    img = arr.reshape(msg.height, msg.width, 3)
    return img[:, :, ::-1].copy() if msg.encoding == "bgr8" else img.copy()


class DemoClient:
    """rclpy client: reset service, execute action, camera and success subscriptions."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool, UInt32

        from apt_core.contract import load_contract
        from apt_msgs.action import Execute
        from apt_msgs.srv import ResetSim

        self.rclpy = rclpy
        self.Execute, self.ResetSim = Execute, ResetSim
        rclpy.init()
        self.node = rclpy.create_node("apt_demo")
        c = load_contract()
        self.reset_cli = self.node.create_client(ResetSim, "/apt_sim/reset")
        self.exec_cli = ActionClient(self.node, Execute, "/apt/execute")
        self.success = False
        self.frame: np.ndarray | None = None
        self.subtasks_done = 0
        self.node.create_subscription(Bool, c.success_topic, self._on_success, 10)
        self.node.create_subscription(UInt32, c.subtasks_done_topic, self._on_subtasks_done, 10)
        self.node.create_subscription(Image, c.cameras[0].topic, self._on_image, qos_profile_sensor_data)
        # one thread: no callback here blocks, and rclpy 9's MultiThreadedExecutor can spin on
        # callbacks waiting for a pool thread (docs/runtime.md, "Threads")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_success(self, msg) -> None:
        self.success = bool(msg.data)

    def _on_subtasks_done(self, msg) -> None:
        self.subtasks_done = int(msg.data)

    def _on_image(self, msg) -> None:
        try:
            self.frame = _image(msg)
        except ValueError:
            pass  # an image of another encoding/size: the contact sheet just skips it

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                self.reset_cli.service_is_ready()
                and self.exec_cli.server_is_ready()
                and self.frame is not None
            ):
                return
            time.sleep(0.1)
        raise TimeoutError(
            "the simulator or the policy node did not come up in time "
            f"(reset service: {self.reset_cli.service_is_ready()}, execute action: {self.exec_cli.server_is_ready()}, "
            f"camera: {self.frame is not None}); see the node logs above"
        )

    def _wait(self, fut, timeout: float):
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not fut.done():
            raise TimeoutError("no answer in time")
        return fut.result()

    def run(self, label: str, split: str, seed: int, timeout: float) -> Outcome:
        resp = self._wait(self.reset_cli.call_async(self.ResetSim.Request(seed=seed, split=split)), 20.0)
        if not resp.success:
            raise RuntimeError(f"/apt_sim/reset failed: {resp.message}")
        time.sleep(0.5)  # let the policy see the new scene
        self.success, self.subtasks_done = False, 0
        frames: list[np.ndarray] = []
        print(f'\n[{label}] "{resp.instruction}"', flush=True)
        t0 = time.monotonic()
        last_phase = [""]

        def on_feedback(m) -> None:
            fb = m.feedback
            line = f"  subtask {fb.subtask_index + 1}/{fb.subtask_count} '{fb.subtask}' progress {fb.progress:.2f}"
            if line != last_phase[0]:
                last_phase[0] = line
                print(line, flush=True)

        handle = self._wait(
            self.exec_cli.send_goal_async(
                self.Execute.Goal(instruction=resp.instruction, timeout_s=float(timeout)),
                feedback_callback=on_feedback,
            ),
            10.0,
        )
        if not handle.accepted:
            return Outcome(label, resp.instruction, False, False, False, "rejected", 0.0, frames)
        res_fut = handle.get_result_async()
        next_frame = 0.0
        while not res_fut.done() and time.monotonic() - t0 < timeout + 15:
            if time.monotonic() >= next_frame and self.frame is not None:
                frames.append(self.frame)
                next_frame = time.monotonic() + 1.0
            time.sleep(0.05)
        if not res_fut.done():
            handle.cancel_goal_async()
            return Outcome(
                label,
                resp.instruction,
                True,
                False,
                self.success,
                "no result",
                time.monotonic() - t0,
                frames,
                self.subtasks_done,
            )
        result = res_fut.result().result
        time.sleep(0.3)
        if self.frame is not None:
            frames.append(self.frame)
        return Outcome(
            label,
            resp.instruction,
            True,
            result.success,
            self.success,
            result.reason,
            time.monotonic() - t0,
            frames,
            self.subtasks_done,
        )

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def contact_sheet(outcomes: list[Outcome], path: Path, per_row: int = 6) -> Path:
    """One row of `per_row` evenly spaced frames per instruction, with a caption."""
    import cv2

    rows = []
    for o in outcomes:
        if not o.frames:
            continue
        idx = np.linspace(0, len(o.frames) - 1, min(per_row, len(o.frames))).round().astype(int)
        tiles = [o.frames[i] for i in idx] + [np.zeros_like(o.frames[0])] * (per_row - len(idx))
        strip = np.concatenate(tiles, axis=1)
        caption = np.full((22, strip.shape[1], 3), 255, np.uint8)
        verdict = "SUCCESS" if o.sim_success else "FAIL"
        cv2.putText(
            caption,
            f"{o.label} -> {verdict}: {o.instruction}"[:110],  # the verdict first: long chains are cut
            (4, 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        rows.append(np.concatenate([caption, strip[:, :, ::-1]], axis=0))
    if not rows:
        raise RuntimeError("no camera frames were received")
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    tmp = path.with_name(path.stem + ".tmp.png")
    cv2.imwrite(str(tmp), sheet)
    os.replace(tmp, path)
    return path


def results_markdown(outcomes: list[Outcome], checkpoint: Path) -> str:
    lines = [
        f"# Demo run with `{checkpoint}`\n",
        "| scenario | instruction | policy says | simulator success | reason | time [s] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.label} | {o.instruction} | {'done' if o.policy_success else 'not done'} | "
            f"{'yes' if o.sim_success else 'no'} | {o.reason} | {o.seconds:.1f} |"
        )
    k = sum(o.sim_success for o in outcomes)
    lines.append(f"\n{k}/{len(outcomes)} instructions completed (ground truth from the simulator).\n")
    return "\n".join(lines)


def evaluation_scenes(splits: list[str], episodes: int, seed: int) -> list[tuple[str, str, int]]:
    """(label, split, scene seed) for seeds seed..seed+episodes-1 of each split, in evaluate's order."""
    from apt_core.sim.tasks import SPLITS

    bad = [x for x in splits if x not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; expected from {SPLITS}")
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    return [(f"{split} {s}", split, s) for split in splits for s in range(seed, seed + episodes)]


def scene_results(outcomes: list[Outcome], scenes: list[tuple[str, str, int]], rate_hz: float):
    """The outcomes as `apt_core.sim.evaluate.EvalResults` (steps: the run's seconds x rate_hz; the
    partial-progress measures need the simulator's state and stay NaN / False, as over ROS)."""
    from apt_core.sim.evaluate import EpisodeResult, EvalResults, summarize
    from apt_core.sim.tasks import make_task

    eps = []
    for o, (_, split, seed) in zip(outcomes, scenes, strict=True):
        family = make_task(seed, split)[0].family
        eps.append(
            EpisodeResult(
                split, seed, o.instruction, family, o.sim_success, round(o.seconds * rate_hz), o.subtasks_done
            )
        )
    return EvalResults(eps, summarize(eps), sum(o.seconds for o in outcomes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="apt-demo", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", type=Path, default=None, help="policy checkpoint (default: the shipped one)"
    )
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"), help="results.md and contact_sheet.png")
    ap.add_argument(
        "--timeout", type=float, default=40.0, help="seconds per instruction (with --splits: per subtask)"
    )
    ap.add_argument("--only", nargs="*", default=None, help="scenario labels to run (default: all)")
    ap.add_argument(
        "--splits",
        nargs="+",
        default=None,
        help="evaluate on these splits' scenes instead of the four demo scenarios",
    )
    ap.add_argument("--episodes", type=int, default=10, help="scenes per split (with --splits)")
    ap.add_argument("--seed", type=int, default=1000, help="first scene seed (with --splits)")
    a = ap.parse_args(argv)
    scenes: list[tuple[str, str, int]] = []
    if a.splits:
        if a.only is not None:
            ap.error("--only picks demo scenarios; it does not go with --splits")
        try:
            scenes = evaluation_scenes(a.splits, a.episodes, a.seed)
        except ValueError as e:
            ap.error(str(e))
    ckpt = a.checkpoint or default_checkpoint()
    if not (ckpt / "meta.json").is_file():
        print(
            f"apt-demo: error: no policy checkpoint at {ckpt}. Train one with "
            "`apt-pipeline --recipe cpu-demo --export <dir>` and pass --checkpoint <dir>.",
            file=sys.stderr,
        )
        return 2
    scenarios = scenes or [s for s in SCENARIOS if a.only is None or s[0] in a.only]
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    procs = []
    for spec in resolve({"sim": "true", "checkpoint": str(ckpt)}):
        if spec.module:
            print(f"apt-demo: starting {spec.name}", flush=True)
            procs.append(subprocess.Popen(command(spec), start_new_session=True))
    client = None
    try:
        client = DemoClient()
        client.wait_ready(timeout=120.0)
        outcomes = []
        for label, split, seed in scenarios:
            n_sub = 1
            if scenes:  # per subtask, as the in-process harness
                from apt_core.sim.tasks import make_task

                n_sub = len(make_task(seed, split)[0].subtasks)
            outcomes.append(client.run(label, split, seed, a.timeout * n_sub))
    finally:
        if client is not None:
            client.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(2)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    a.out.mkdir(parents=True, exist_ok=True)
    if scenes:
        from apt_core.contract import load_contract
        from apt_core.sim.evaluate import summary_markdown, write_results

        res = scene_results(outcomes, scenes, load_contract().rate_hz)
        write_results(res, a.out)  # episodes.csv, summary.csv, summary.md
        md = (
            f"# The policy node over ROS in real time, `{ckpt}`\n\n"
            f"Scene seeds {a.seed}..{a.seed + a.episodes - 1} of each split, {a.timeout:g} s per subtask.\n\n"
            + summary_markdown(res.summary)
            + "\n"
        )
        atomic_write_text(a.out / "results.md", md)
        print("\n" + md)
        print(f"apt-demo: wrote {a.out / 'results.md'} and {a.out / 'episodes.csv'}")
        return 0
    md = results_markdown(outcomes, ckpt)
    atomic_write_text(a.out / "results.md", md)
    sheet = contact_sheet(outcomes, a.out / "contact_sheet.png")
    print("\n" + md)
    print(f"apt-demo: wrote {a.out / 'results.md'} and {sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
