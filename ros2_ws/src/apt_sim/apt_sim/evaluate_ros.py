"""End-to-end evaluation through the ROS nodes: same seeds, splits and tables as the in-process
harness (`apt_core.sim.evaluate`), but observations and commands travel over topics.

    apt-eval-ros --policy expert --episodes 10 --out out/eval_ros           # policy in this process
    apt-eval-ros --checkpoint runs/apt --episodes 10 --out out/eval_ros     # trained policy
    apt-eval-ros --external --episodes 10 --out out/eval_ros --speed 1      # a policy node elsewhere

With --external no policy runs here: another process (the apt_policy node) must follow the
instruction on /apt/instruction and publish on the controller topic; run at --speed 1 then.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apt_core.sim.evaluate import (
    SERVED_NOISE_SCALE,
    EpisodeResult,
    EvalResults,
    summarize,
    summary_markdown,
    write_results,
)
from apt_core.sim.tasks import SPLITS
from apt_sim.harness import SimHarness


def evaluate_ros(
    policy_factory,
    splits=SPLITS,
    n_episodes: int = 10,
    seed: int = 0,
    speed: float = 0.0,
    max_seconds_per_subtask: float = 15.0,
    execute_steps: int = 8,
) -> EvalResults:
    """Run episodes seed..seed+n-1 per split through the sim node; policy_factory(env) or None."""
    import time

    t0 = time.perf_counter()
    eps: list[EpisodeResult] = []
    with SimHarness(policy_factory, speed, execute_steps=execute_steps) as h:
        for split in splits:
            for s in range(seed, seed + n_episodes):
                from apt_core.sim.tasks import make_task

                n_sub = len(make_task(s, split)[0].subtasks)
                ep = h.episode(s, split, max_seconds=max_seconds_per_subtask * n_sub, settle=0.0)
                eps.append(
                    EpisodeResult(
                        split,
                        s,
                        ep.instruction,
                        ep.family,
                        ep.success,
                        round(ep.sim_seconds * h.sim.contract.rate_hz),
                        ep.subtasks_done,
                    )
                )
                print(f"{split} seed={s} success={ep.success} :: {ep.instruction}", flush=True)
    return EvalResults(eps, summarize(eps), time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate a policy end to end through the apt_sim ROS node.")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", default="", help="trained policy dir (apt_core.model.runner.load_runner)")
    g.add_argument(
        "--external", action="store_true", help="a policy node in another process drives the robot"
    )
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--speed", type=float, default=0.0, help="real-time factor; 0 = as fast as possible")
    ap.add_argument("--execute-steps", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("out/eval_ros"))
    ap.add_argument(
        "--noise-scale",
        type=float,
        default=SERVED_NOISE_SCALE,
        help="with --checkpoint: its sampling noise times this (default 0, as the policy node serves; 1: as trained)",
    )
    a = ap.parse_args(argv)
    if a.noise_scale != SERVED_NOISE_SCALE and not a.checkpoint:
        ap.error(
            "--noise-scale needs --checkpoint (the scripted expert and an external node sample their own)"
        )
    if a.external:
        factory = None
    elif a.checkpoint:
        from apt_core.model.runner import check_noise_scale  # lazily: torch is heavy

        try:
            check_noise_scale(a.noise_scale)
        except ValueError as e:
            ap.error(f"--noise-scale: {e}")

        def factory(env):
            from apt_core.model.runner import load_runner  # lazily: torch is heavy

            return load_runner(a.checkpoint, noise_scale=a.noise_scale)
    else:
        from apt_core.sim.expert import ScriptedExpert

        factory = ScriptedExpert
    try:
        res = evaluate_ros(factory, a.splits, a.episodes, a.seed, a.speed, execute_steps=a.execute_steps)
    except RuntimeError as e:  # the harness could not start (e.g. another simulator in this domain)
        print(f"apt-eval-ros: error: {e}", file=sys.stderr)
        return 1
    paths = write_results(res, a.out)
    print(summary_markdown(res.summary))
    print(f"wrote {paths['markdown']} ({res.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
