"""Benchmark the APT policy on CPU: parameters and per-chunk inference latency (p50 / p99).

Measures the serving path end to end (Observation -> processor -> backbone once -> N denoising
steps of the expert -> unnormalise -> absolute joint targets) through `PolicyRunner.predict`, for
the CPU default preset per objective and step count, and writes the table to section "model" of
docs/benchmarks.md. Weights are random (latency does not depend on their values).

    python scripts/bench_model.py                  # cpu-demo, 1 torch thread, 30 chunks per row
    python scripts/bench_model.py --threads 1,2 --repeats 50 --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import markdown_table, placeholder_stats, write_section

from apt_core.model.checkpoint import save_checkpoint
from apt_core.model.config import get_preset
from apt_core.model.policy import APTPolicy
from apt_core.model.processor import Processor
from apt_core.model.runner import load_runner
from apt_core.types import Observation


def _obs(cfg, rng: np.random.Generator) -> Observation:
    return Observation(
        images={c: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for c in cfg.camera_names},
        joint_positions=rng.normal(0, 0.3, cfg.state_dim),
        stamp=0.0,
    )


def bench_rows(
    preset: str, stage: int, repeats: int, rows: list[tuple[str, int, str]], tmp: Path
) -> list[list[object]]:
    """rows: (objective, denoising steps, vision tokens: pooled | keypoints | keypoints + N grounded
    (minilm_effnet only; grounded keypoints exist in stage 2) | keypoints + goal input (the goal
    head's prediction fed to the actions: one more expert pass per chunk) | keypoints + goal
    pointer (the goal pointer's prediction instead: no extra expert pass) | keypoints + goal pointer
    pixels (the pointer with its pixel readout)); "keypoints 64": 64 keypoints per camera and tap
    instead of the preset's 32."""
    out = []
    rng = np.random.default_rng(0)
    for objective, steps, tokens in rows:
        over = {}
        if preset == "cpu-demo":
            kind, _, extra = tokens.partition(" + ")  # e.g. "keypoints + 4 grounded", "keypoints 64"
            goal_input = extra in ("goal input", "goal pointer", "goal pointer pixels")
            grounded = int(extra.split()[0]) if extra and not goal_input else 0
            kind, *count = kind.split()  # a count after "keypoints": that many (else the preset's 32)
            over = {"backbone": {"vision_tokens": kind, "grounded_keypoints": grounded}}
            if count:
                over["backbone"]["keypoints"] = int(count[0])
            if goal_input:
                pointer = extra.startswith("goal pointer")
                over.update(goal_dim=3, goal_input=True, goal_pointer=pointer)
                over.update(goal_pointer_pixels=extra == "goal pointer pixels")
        cfg = get_preset(preset, stage=stage, objective={"kind": objective, "inference_steps": steps}, **over)
        torch.manual_seed(0)
        policy = APTPolicy(cfg)
        ck = save_checkpoint(
            tmp / f"{preset}-{objective}-{steps}-{tokens.replace(' ', '')}",
            policy,
            Processor.from_stats(cfg, placeholder_stats(cfg.state_dim)),
            {},
        )
        runner = load_runner(ck, num_steps=steps)
        instruction = "pick up the red cube and put it in the bowl"
        for _ in range(3):  # warm-up: lazy tokenizer, allocator, text-feature cache
            runner.predict(_obs(cfg, rng), instruction)
        lat, cpu = [], []
        for _ in range(repeats):
            obs = _obs(cfg, rng)
            c0 = time.process_time()
            runner.predict(obs, instruction)
            # process CPU time: with one thread it is what the chunk costs on an idle core, free of
            # the waiting that other jobs on a shared machine add to the wall-clock latency
            cpu.append((time.process_time() - c0) * 1000)
            lat.append(runner.last_latency_s * 1000)
        # the backbone alone (vision each chunk; instruction features cached across chunks)
        batch = runner.processor.process_observation(_obs(cfg, rng), instruction)
        enc = []
        with torch.inference_mode():
            for _ in range(max(5, repeats // 3)):
                t0 = time.perf_counter()
                runner.policy.encode(batch)
                enc.append((time.perf_counter() - t0) * 1000)
        p = runner.policy
        out.append(
            [
                preset,
                tokens if preset == "cpu-demo" else "-",
                stage,
                objective,
                steps,
                f"{p.num_parameters() / 1e6:.2f}",
                f"{sum(x.numel() for x in p.expert.parameters()) / 1e6:.2f}",
                f"{np.median(enc):.1f}",
                f"{np.percentile(lat, 50):.1f}",
                f"{np.percentile(lat, 99):.1f}",
                f"{np.min(lat):.1f}",
                f"{np.median(cpu):.1f}",
                "yes" if np.percentile(lat, 50) <= 30 else "no",
            ]
        )
        print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-demo")
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts to measure, e.g. 1,2")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    threads = [int(t) for t in str(args.threads).split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load0 = os.getloadavg()[0]
    # the served default: flow, 10 steps, keypoint tokens (the cpu-demo recipe); pooled for reference
    rows_spec = [
        ("ddim", 20, "pooled"),
        ("ddim", 10, "pooled"),
        ("flow", 10, "pooled"),
        ("flow", 10, "keypoints"),
        ("flow", 10, "keypoints + 4 grounded"),
        ("flow", 10, "keypoints + goal input"),
        ("flow", 10, "keypoints + goal pointer"),
        ("flow", 10, "keypoints 64 + goal pointer"),  # the shipped default since session 28
        ("flow", 10, "keypoints 64 + goal pointer pixels"),  # with the pointer's pixel readout
        ("flow", 5, "keypoints"),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in threads:
            torch.set_num_threads(n)
            rows += [[n, *r] for r in bench_rows(args.preset, 2, args.repeats, rows_spec, Path(d))]
            rows += [
                [n, *r]
                for r in bench_rows(args.preset, 1, args.repeats, [("flow", 10, "keypoints")], Path(d))
            ]
            rows += [[n, *r] for r in bench_rows("debug", 2, args.repeats, [("ddim", 10, "-")], Path(d))]
    load1 = os.getloadavg()[0]
    headers = [
        "threads",
        "preset",
        "vision tokens",
        "stage",
        "objective",
        "steps",
        "params [M]",
        "expert [M]",
        "backbone [ms]",
        "p50 [ms]",
        "p99 [ms]",
        "min [ms]",
        "CPU time p50 [ms]",
        "p50 <= 30 ms",
    ]
    table = markdown_table(headers, rows)
    body = (
        f"`python scripts/bench_model.py --threads {args.threads} --repeats {args.repeats}`: per-chunk latency of "
        "`PolicyRunner.predict` (processor + backbone once + denoising steps + unnormalise), batch 1, one 128x128 "
        f"camera, random weights. 'backbone' is one `encode` (EfficientNet-Lite0 each "
        "chunk; MiniLM instruction features cached per instruction). "
        f"Load average (1 min) while measuring: {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores shared with "
        "other jobs, so wall-clock numbers are pessimistic and noisy; 'CPU time' is the process CPU time per "
        "chunk (with 1 thread: the latency an idle core would give).\n\n" + table
    )
    print(table)
    if not args.no_write:
        write_section("model", "APT policy: parameters and per-chunk CPU latency", body)


if __name__ == "__main__":
    main()
