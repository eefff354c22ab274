"""rosbag2 (mcap / sqlite3) -> LeRobot v3 dataset converter, as a function and as `apt-convert`.

    apt-convert BAG_OR_DIR... --out DIR [--contract YAML] [--workers N] [--align asof|hold|drop]
                [--time header|receive] [--max-age S] [--min-frames N] [--image-format png|jpeg]
                [--threads N] [--image-budget-mb MB]
                [--overwrite] [--strict]

Bags are read and their images decoded in parallel worker processes (one bag per task); the main
process appends episodes in input order, so the output does not depend on --workers. A bag that
cannot be used is skipped with an error naming bag, topic and time, and listed in the summary;
`--strict` makes any skipped bag fail the whole conversion instead. Exit codes: 0 converted,
1 nothing converted or an error, 2 bad command line.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from apt_core.contract import Contract, ContractError, load_contract
from apt_core.data.bag_reader import SkipLog, find_bags, read_bag
from apt_core.data.episodes import AlignOptions, Episode, build_episodes
from apt_core.data.errors import BagError, ConversionError, DataError
from apt_core.data.lerobot_v3 import DatasetWriter, check_output_dir


@dataclass
class ConversionSummary:
    """What a conversion produced and what it left out, and why."""

    out_dir: Path
    bags: int = 0  # bags found
    bags_converted: int = 0
    episodes: int = 0
    frames: int = 0
    tasks: int = 0
    bytes_read: int = 0  # serialised message bytes read from bags
    messages: int = 0
    lenient_decodes: int = 0  # JointState/JointTrajectory with rclpy trailing padding (decoded, kept)
    seconds: float = 0.0
    skipped_bags: list[str] = field(default_factory=list)  # one error message per skipped bag
    skips: SkipLog = field(default_factory=SkipLog)  # dropped messages / ticks / short episodes

    def text(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"converted {self.bags_converted}/{self.bags} bags -> {self.out_dir}",
            f"  episodes: {self.episodes}, frames: {self.frames}, tasks: {self.tasks}",
            f"  read {self.messages} messages, {self.bytes_read / 1e6:.1f} MB in {self.seconds:.1f} s ({rate:.0f} frames/s)",
        ]
        if self.lenient_decodes:
            lines.append(
                f"  note: {self.lenient_decodes} messages had rclpy trailing padding (decoded, kept)"
            )
        if self.skipped_bags:
            lines.append(f"  skipped bags ({len(self.skipped_bags)}):")
            lines += [f"    {m}" for m in self.skipped_bags]
        if self.skips.total():
            lines.append(f"  skipped items ({self.skips.total()}):")
            lines += [f"    {m}" for m in self.skips.lines()]
        return "\n".join(lines)


@dataclass
class _BagResult:
    bag: str
    episodes: list[Episode]
    skips: SkipLog
    messages: int
    bytes_read: int
    lenient: int
    error: str = ""
    sim_scene: str = ""  # the bag's custom_data `sim_scene` ("" when it does not say)


def _convert_one(bag: Path, contract: Contract, opts: AlignOptions) -> _BagResult:
    """Worker: one bag -> episodes (images already encoded). Never raises for bad data."""
    try:
        streams = read_bag(bag, contract, opts.time_source, opts.image_budget_mb)
        eps = build_episodes(streams, contract, opts)
        return _BagResult(
            str(bag),
            eps,
            streams.skips,
            streams.n_messages,
            streams.n_bytes,
            streams.lenient_decodes,
            sim_scene=streams.sim_scene,
        )
    except BagError as e:
        return _BagResult(str(bag), [], SkipLog(), 0, 0, 0, error=str(e))


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from our processes and encoder threads


def _results(bags: list[Path], contract: Contract, opts: AlignOptions, workers: int) -> Iterator[_BagResult]:
    if workers <= 1 or len(bags) <= 1:
        for b in bags:
            yield _convert_one(b, contract, opts)
        return
    # fork on Linux: a worker starts in milliseconds with everything imported, where spawn and
    # forkserver re-import the caller's __main__ (seconds when it imports torch; measured 3-4 s
    # per pool here). Workers only run numpy / rosbags / OpenCV, and `_worker_init` pins OpenCV to
    # one thread, so no lock held by a parent's thread pool is needed in the child.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        yield from pool.map(_convert_one, bags, [contract] * len(bags), [opts] * len(bags))


def convert(
    bags: list[Path] | Path,
    out_dir: Path,
    contract: Contract,
    *,
    workers: int = 1,
    align: str = "asof",
    time_source: str = "header",
    max_age_s: float | None = None,
    min_frames: int = 2,
    image_format: str = "png",
    encode_threads: int = 2,
    image_budget_mb: float = 1024.0,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Convert bags (folders, or folders of bags) into a LeRobot v3 dataset at `out_dir`.

    Raises ConversionError when nothing can be converted, when the output folder is in the way, or
    (with strict) when any bag fails; a BagError from `find_bags` when an input path is no bag.
    """
    t0 = time.perf_counter()
    opts = AlignOptions(
        rule=align,
        time_source=time_source,
        max_age_s=max_age_s,
        min_frames=min_frames,
        image_format=image_format,
        encode_threads=encode_threads,
        image_budget_mb=image_budget_mb,
    )
    if contract.action_source == "ee_pose" and not contract.ee_pose_topic:
        raise ConversionError("action.source is 'ee_pose' but action.ee_pose_topic is empty")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    bag_list = find_bags(bags)
    summary = ConversionSummary(out_dir=out_dir, bags=len(bag_list))
    writer = DatasetWriter(
        out_dir,
        contract,
        image_format=image_format,
        extra_meta={
            "align": align,
            "time_source": time_source,
            "max_age_s": max_age_s,
            "image_format": image_format,
            "action_source": contract.action_source,
        },
    )
    scenes: set[str] = set()
    try:
        bar = _progress(len(bag_list), progress)
        for res in _results(bag_list, contract, opts, workers):
            if bar is not None:
                bar.update(1)
            if res.error:
                if strict:
                    raise ConversionError(f"--strict: {res.error}")
                summary.skipped_bags.append(res.error)
                continue
            summary.bags_converted += 1
            if res.sim_scene and res.episodes:
                scenes.add(res.sim_scene)
            summary.messages += res.messages
            summary.bytes_read += res.bytes_read
            summary.lenient_decodes += res.lenient
            summary.skips.merge(res.skips)
            if not res.episodes:
                summary.skipped_bags.append(
                    f"bag {res.bag}: no episode with at least {min_frames} usable frames"
                )
                summary.bags_converted -= 1
            for ep in res.episodes:
                writer.add_episode(ep)
                summary.frames += len(ep.t)
        if bar is not None:
            bar.close()
        if writer.n_episodes == 0:
            raise ConversionError("no usable episodes in any bag:\n  " + "\n  ".join(summary.skipped_bags))
        # the simulator scene(s) the bags were recorded in (apt_core.sim.env.scene_fingerprint);
        # empty for bags that do not say (a real robot)
        writer.extra_meta["sim_scene"] = sorted(scenes)
        summary.episodes = writer.n_episodes
        summary.tasks = len(writer.tasks)
        writer.finalize(overwrite=overwrite)
    except BaseException:
        writer.abort()
        raise
    summary.seconds = time.perf_counter() - t0
    return summary


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="bag", desc="converting", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="apt-convert", description="Convert rosbag2 demonstrations to a LeRobot v3 dataset."
    )
    ap.add_argument("bags", nargs="+", type=Path, help="bag folders, or folders searched for bags")
    ap.add_argument("--out", required=True, type=Path, help="output dataset folder")
    ap.add_argument(
        "--contract", type=Path, default=None, help="contract YAML (default: the simulated robot's)"
    )
    ap.add_argument("--workers", type=int, default=1, help="parallel bag readers (processes)")
    ap.add_argument(
        "--align", choices=("asof", "hold", "drop"), default="asof", help="alignment rule (docs/data.md)"
    )
    ap.add_argument(
        "--time",
        dest="time_source",
        choices=("header", "receive"),
        default="header",
        help="timestamps: message header stamps or bag receive time",
    )
    ap.add_argument(
        "--max-age", type=float, default=None, help="asof: max age of a sample [s] (default 2/rate)"
    )
    ap.add_argument("--min-frames", type=int, default=2, help="shorter episodes are skipped")
    ap.add_argument("--image-format", choices=("png", "jpeg"), default="png", help="stored image encoding")
    ap.add_argument("--threads", type=int, default=2, help="image encoder threads per worker")
    ap.add_argument(
        "--image-budget-mb",
        type=float,
        default=1024.0,
        help="image payloads kept in RAM per bag; larger bags are read twice instead",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ap.add_argument("--strict", action="store_true", help="fail if any bag has to be skipped")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("apt-convert: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        contract = load_contract(args.contract)
        summary = convert(
            args.bags,
            args.out,
            contract,
            workers=args.workers,
            align=args.align,
            time_source=args.time_source,
            max_age_s=args.max_age,
            min_frames=args.min_frames,
            image_format=args.image_format,
            encode_threads=args.threads,
            image_budget_mb=args.image_budget_mb,
            overwrite=args.overwrite,
            strict=args.strict,
            progress=not args.no_progress,
        )
    except (DataError, ContractError) as e:
        print(f"apt-convert: error: {e}", file=sys.stderr)
        return 1
    print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
