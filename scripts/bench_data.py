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
from apt_core.data.bag_reader import TYPESTORE, find_bags, read_bag, required_topics
from apt_core.data.convert import convert
from apt_core.data.dataset import DemoDataset, make_loader
from apt_core.data.synthetic import write_synthetic_bag

REPEATS = 2  # conversion rows report the best of this many runs (the machine is shared)


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


def load_vs_step(
    root: Path, preset: str, batch_size: int, augment: bool, rounds: int = 6
) -> tuple[float, float]:
    """Median (load seconds, step seconds) of `rounds` interleaved (load one batch, train on it).

    Interleaving makes both halves see the same machine load, so their ratio is meaningful on a
    shared machine. A step is process_batch + loss + backward + AdamW on CPU, as in training.
    """
    import torch

    from apt_core.model.config import get_preset
    from apt_core.model.policy import APTPolicy
    from apt_core.model.processor import Processor

    probe = get_preset(preset)
    ds = DemoDataset(
        root, chunk_length=probe.chunk_length, n_action_history=probe.n_action_history, augment=augment
    )
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
    it = iter(make_loader(ds, batch_size, shuffle=True, seed=0, drop_last=True))
    loads, steps = [], []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(make_loader(ds, batch_size, shuffle=True, seed=r, drop_last=True))
            t0 = time.perf_counter()
            batch = next(it)
        t1 = time.perf_counter()
        loss, _ = policy.compute_loss(proc.process_batch(batch, train=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if r:  # round 0 pays one-off allocations
            loads.append(t1 - t0)
            steps.append(t2 - t1)
    return statistics.median(loads), statistics.median(steps)


def loader_rate(
    root: Path, batch_size: int, augment: bool, chunk: int, hist: int, batches: int = 12
) -> float:
    """Samples/s of DemoDataset + make_loader alone (best of 3 runs of `batches` batches)."""

    ds = DemoDataset(root, chunk_length=chunk, n_action_history=hist, augment=augment)
    best = 0.0
    for rep in range(3):
        n, t0 = 0, time.perf_counter()
        for b in make_loader(ds, batch_size, shuffle=True, seed=rep):
            n += len(b["task"])
            if n >= batches * batch_size:
                break
        best = max(best, n / (time.perf_counter() - t0))
    return best


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
    raw_s, n_msg, nbytes = min(raw_read(bags, contract) for _ in range(REPEATS))
    mb = nbytes / 1e6
    kind = "rendered-like (noise 0)" if noise == 0 else f"camera-like (noise +-{noise})"
    rows = [
        [kind, "raw read + deserialise (1 process)", f"{total / raw_s:.0f}", f"{mb / raw_s:.1f}", "1.00x", ""]
    ]
    t_read = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for b in bags:
            read_bag(b, contract)
        t_read = min(t_read, time.perf_counter() - t0)
    rows.append(
        [
            kind,
            "converter's reader only (read_bag: stamps, joints, commands)",
            f"{total / t_read:.0f}",
            f"{mb / t_read:.1f}",
            f"{raw_s / t_read:.2f}x",
            "",
        ]
    )
    for workers, fmt in ((1, "png"), (2, "png"), (1, "jpeg")):
        out = tmp / f"out-w{workers}-{fmt}"
        dt = float("inf")
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            s = convert(bags, out, contract, workers=workers, image_format=fmt, overwrite=True)
            dt = min(dt, time.perf_counter() - t0)
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
        chunk, hist = contract.chunk_length, 0
        presets = [p for p in args.presets.split(",") if p]
        for kind, root in datasets.items():
            for augment in (False, True):
                rate = loader_rate(root, args.batch, augment, chunk, hist)
                loader_rows.append(
                    [kind, f"augment={augment}", f"{rate:.0f}", f"{args.batch / rate * 1e3:.1f}"]
                )
                for preset in presets:
                    try:
                        load_s, step_s = load_vs_step(root, preset, args.batch, augment)
                    except Exception as e:  # the model is another module; report instead of failing
                        step_rows.append(
                            [preset, kind, f"augment={augment}", f"n/a ({type(e).__name__}: {e})", "", ""]
                        )
                        continue
                    step_rows.append(
                        [
                            preset,
                            kind,
                            f"augment={augment}",
                            f"{step_s * 1e3:.0f}",
                            f"{load_s * 1e3:.1f}",
                            f"{100 * load_s / step_s:.1f} %",
                        ]
                    )
    conv_table = markdown_table(
        ["images", "pipeline", "frames/s", "bag MB/s", "vs raw", "dataset MB"], conv_rows
    )
    loader_table = markdown_table(
        ["images (png dataset)", "augment", "samples/s", f"ms per batch of {args.batch}"], loader_rows
    )
    step_table = markdown_table(
        ["preset", "images", "augment", "train step (ms)", "load batch (ms)", "loading / step"], step_rows
    )
    load = os.getloadavg()
    body = (
        f"Load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on this shared "
        "machine; with other jobs competing for the cores, absolute rates vary run to run by 2-5x.\n\n"
        f"`python scripts/bench_data.py --bags {args.bags} --frames {args.frames} --noise {args.noise} "
        f"--batch {args.batch}`. Synthetic mcap bags ({desc} per image kind): 128x128 rgb8 images, "
        "JointState and JointTrajectory at 10 Hz. Conversion includes image decode, PNG/JPEG encode "
        "(2 encoder threads per worker), statistics and the atomic write; the raw row only reads and "
        f"deserialises the same messages with rosbags. Each conversion row is the best of {REPEATS} runs.\n\n"
        f"{conv_table}\n\n"
        f"Loader alone: DemoDataset + make_loader, batch {args.batch}, 0 loader workers, best of 3 runs.\n\n"
        f"{loader_table}\n\n"
        "Loading against a training step, interleaved (load a batch, train on it; medians of 6 rounds, "
        f"so both see the same machine load): APTPolicy process_batch + loss + backward + AdamW at batch "
        f"{args.batch} on CPU, torch threads {args.threads}, 0 loader workers (loading adds to every step).\n\n"
        f"{step_table}\n"
    )
    print(body)
    if not args.no_write:
        write_section("data", "Demonstration data: conversion and loader (scripts/bench_data.py)", body)


if __name__ == "__main__":
    main()
