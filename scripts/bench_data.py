#!/usr/bin/env python
"""Benchmark the demonstration-data pipeline; writes section "data" of docs/benchmarks.md.

    python scripts/bench_data.py [--bags 6] [--frames 150] [--noise 4] [--batch 32] [--no-write]

1. Raw read + deserialise of the contract's topics (rosbags, one process): the floor any converter
   built on rosbags pays. Then `convert()` on the same bags in the same run, with 1 and 2 workers
   and PNG / JPEG storage; the goal is >= 0.8x the raw rate (frames/s and MB/s of bag payload).
2. DemoDataset + make_loader samples/s against the duration of one real training step
   (APTPolicy, `debug` and `cpu-demo` presets, forward + backward + AdamW, same batch size);
   the goal is loading < 10 % of a step.
Bags are synthetic (gradient + moving square + pixel noise, 128x128 rgb8, 10 Hz): see synthetic.py.

torch and the loader are imported inside functions: conversion workers start from a fork server
that re-imports this script, and they should not pay for importing torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import markdown_table, write_section

from apt_core.contract import load_contract
from apt_core.data.bag_reader import TYPESTORE, find_bags, required_topics
from apt_core.data.convert import convert
from apt_core.data.dataset import DemoDataset, make_loader
from apt_core.data.synthetic import write_synthetic_bag


def raw_read(bags: list[Path], contract) -> tuple[float, int, int]:
    """Seconds to read and deserialise every contract message; (seconds, messages, bytes)."""
    from rosbags.highlevel import AnyReader

    want = set(required_topics(contract))
    n = nbytes = 0
    t0 = time.perf_counter()
    for bag in bags:
        with AnyReader([bag], default_typestore=TYPESTORE) as r:
            conns = [c for c in r.connections if c.topic in want]
            for conn, _, raw in r.messages(connections=conns):
                TYPESTORE.deserialize_cdr(raw, conn.msgtype)
                n += 1
                nbytes += len(raw)
    return time.perf_counter() - t0, n, nbytes


def train_step_seconds(root: Path, preset: str, batch_size: int, steps: int = 4) -> float:
    """Median seconds of one training step (process_batch + loss + backward + AdamW) on CPU."""
    import torch

    from apt_core.data.dataset import DemoDataset, make_loader
    from apt_core.model.config import get_preset
    from apt_core.model.policy import APTPolicy
    from apt_core.model.processor import Processor

    probe = get_preset(preset)
    ds = DemoDataset(root, chunk_length=probe.chunk_length, n_action_history=probe.n_action_history)
    joints = tuple(ds.meta["features"]["observation.state"]["names"])
    cfg = get_preset(
        preset,
        joint_names=joints,
        state_dim=len(joints),
        action_dim=len(joints),
        camera_names=tuple(k.removeprefix("observation.images.") for k in ds.camera_keys),
        rate_hz=float(ds.meta["fps"]),
    )
    proc = Processor.from_stats(cfg, ds.stats)
    policy = APTPolicy(cfg).train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    batch = next(iter(make_loader(ds, batch_size, shuffle=True, seed=0)))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss, _ = policy.compute_loss(proc.process_batch(batch, train=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])  # the first step pays one-off allocations


def loader_rate(
    root: Path, batch_size: int, augment: bool, chunk: int, hist: int, batches: int = 12
) -> float:
    ds = DemoDataset(root, chunk_length=chunk, n_action_history=hist, augment=augment)
    n, t0 = 0, time.perf_counter()
    while n < batches * batch_size:
        for b in make_loader(ds, batch_size, shuffle=True, seed=n):
            n += len(b["task"])
            if n >= batches * batch_size:
                break
    return n / (time.perf_counter() - t0)


def bench_conversion(
    tmp: Path, contract, n_bags: int, frames: int, noise: int
) -> tuple[list[list[str]], Path, str]:
    """Rows of the conversion table for one kind of image; returns (rows, png dataset, description)."""
    for i in range(n_bags):
        write_synthetic_bag(
            tmp / "bags" / f"bag{i:02d}",
            contract,
            frames,
            f"task {i % 3}",
            seed=i,
            start_s=100.0 + 1000 * i,
            image_noise=noise,
        )
    bags = find_bags(tmp / "bags")
    total = n_bags * frames
    raw_read(bags[:1], contract)  # warm the page cache and imports
    raw_s, n_msg, nbytes = raw_read(bags, contract)
    mb = nbytes / 1e6
    kind = "rendered-like (noise 0)" if noise == 0 else f"camera-like (noise +-{noise})"
    rows = [
        [kind, "raw read + deserialise (1 process)", f"{total / raw_s:.0f}", f"{mb / raw_s:.1f}", "1.00x", ""]
    ]
    for workers, fmt in ((1, "png"), (2, "png"), (1, "jpeg")):
        out = tmp / f"out-w{workers}-{fmt}"
        t0 = time.perf_counter()
        s = convert(bags, out, contract, workers=workers, image_format=fmt)
        dt = time.perf_counter() - t0
        assert s.frames == total, s.text()
        size = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 1e6
        rows.append(
            [
                kind,
                f"convert: {workers} worker(s), {fmt}",
                f"{total / dt:.0f}",
                f"{mb / dt:.1f}",
                f"{raw_s / dt:.2f}x",
                f"{size:.1f}",
            ]
        )
    desc = f"{n_bags} bags x {frames} frames, {n_msg} messages, {mb:.1f} MB payload"
    return rows, tmp / "out-w1-png", desc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bags", type=int, default=6)
    ap.add_argument("--frames", type=int, default=150, help="frames per bag")
    ap.add_argument("--noise", type=int, default=4, help="pixel noise of the camera-like images")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the training step")
    ap.add_argument("--presets", default="debug,cpu-demo")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    contract = load_contract()
    conv_rows: list[list[str]] = []
    loader_rows: list[list[str]] = []
    step_rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        datasets = {}
        for noise in (0, args.noise):
            rows, ds_path, desc = bench_conversion(
                Path(tmp_s) / f"n{noise}", contract, args.bags, args.frames, noise
            )
            conv_rows += rows
            datasets[rows[0][0]] = ds_path
        import torch

        torch.set_num_threads(args.threads)
        steps: dict[str, float] = {}
        chunk, hist = contract.chunk_length, 0
        for preset in [p for p in args.presets.split(",") if p]:
            try:
                from apt_core.model.config import get_preset

                probe = get_preset(preset)
                chunk, hist = probe.chunk_length, probe.n_action_history
                steps[preset] = train_step_seconds(next(iter(datasets.values())), preset, args.batch)
            except Exception as e:  # the model package is another module; report instead of failing
                step_rows.append([preset, f"n/a ({type(e).__name__}: {e})", "", "", ""])
        for kind, root in datasets.items():
            for augment in (False, True):
                rate = statistics.median(
                    loader_rate(root, args.batch, augment, chunk, hist) for _ in range(3)
                )
                load_s = args.batch / rate
                loader_rows.append([kind, f"augment={augment}", f"{rate:.0f}", f"{load_s * 1e3:.1f}"])
                for preset, step in steps.items():
                    step_rows.append(
                        [
                            preset,
                            f"{step * 1e3:.0f}",
                            kind,
                            f"augment={augment}",
                            f"{100 * load_s / step:.1f} %",
                        ]
                    )
    conv_table = markdown_table(
        ["images", "pipeline", "frames/s", "bag MB/s", "vs raw", "dataset MB"], conv_rows
    )
    loader_table = markdown_table(
        ["images (png dataset)", "augment", "samples/s", f"ms per batch of {args.batch}"], loader_rows
    )
    step_table = markdown_table(
        ["preset", "train step (ms)", "images", "augment", "loading / step"], step_rows
    )
    load = os.getloadavg()
    body = (
        f"Load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on this shared "
        "machine; with other jobs competing for the cores, absolute rates vary run to run by 2-5x.\n\n"
        f"`python scripts/bench_data.py --bags {args.bags} --frames {args.frames} --noise {args.noise} "
        f"--batch {args.batch}`. Synthetic mcap bags ({desc} per image kind): 128x128 rgb8 images, "
        "JointState and JointTrajectory at 10 Hz. Conversion includes image decode, PNG/JPEG encode "
        "(2 encoder threads per worker), statistics and the atomic write; the raw row only reads and "
        "deserialises the same messages with rosbags.\n\n"
        f"{conv_table}\n\n"
        f"Loader: DemoDataset + make_loader, batch {args.batch}, 0 loader workers, median of 3 runs.\n\n"
        f"{loader_table}\n\n"
        f"Training step: APTPolicy process_batch + loss + backward + AdamW at batch {args.batch} on CPU, torch "
        f"threads {args.threads}, median of 4 steps; loading / step = time to load one batch / step time.\n\n"
        f"{step_table}\n"
    )
    print(body)
    if not args.no_write:
        write_section("data", "Demonstration data: conversion and loader (scripts/bench_data.py)", body)


if __name__ == "__main__":
    main()
