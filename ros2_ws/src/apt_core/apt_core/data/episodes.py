"""Turn one bag's streams into episodes: align to control ticks, derive actions, split, decode images.

An episode is a maximal run of consecutive usable ticks with one instruction. A new episode starts
where the instruction text changes (per-segment instructions) or where ticks were dropped (a gap
would break the fixed frame rate that chunked actions assume). Runs shorter than `min_frames` are
skipped and counted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apt_core.contract import Contract
from apt_core.data import align as al
from apt_core.data.bag_reader import COMPRESSED_T, IMAGE_T, BagStreams, deserialize_lenient
from apt_core.data.errors import BagError
from apt_core.data.images import ImageDecodeError, compressed_to_rgb, encode_image, raw_to_rgb, resize_rgb

ENCODE_BATCH = 64  # frames decoded before they are handed to the encoder threads


@dataclass
class Episode:
    """One converted episode, ready for the writer."""

    source: str  # bag folder it came from
    task: str  # instruction
    t: np.ndarray  # (N,) int64 tick times [ns]
    state: np.ndarray  # (N, J) float32 measured joint positions at t
    action: np.ndarray  # (N, J) float32 joint targets for t + dt
    images: dict[str, list[bytes]] = field(default_factory=dict)  # camera -> N encoded images


@dataclass(frozen=True)
class AlignOptions:
    rule: str = "asof"  # asof | hold | drop (see align.py)
    time_source: str = "header"  # header: message header stamps | receive: bag receive time
    max_age_s: float | None = None  # asof staleness limit [s]; None = 2 control periods
    min_frames: int = 2  # shorter episodes are skipped (counted)
    image_format: str = "png"  # png (lossless) | jpeg (smaller, lossy)
    image_budget_mb: float = 1024.0  # image payloads kept in RAM per bag; beyond it, a second pass
    encode_threads: int = 2  # threads resizing/encoding images within one bag (OpenCV frees the GIL)

    def __post_init__(self) -> None:
        if self.rule not in al.ALIGN_RULES:
            raise ValueError(f"align rule {self.rule!r} not one of {al.ALIGN_RULES}")
        if self.time_source not in ("header", "receive"):
            raise ValueError(f"time source {self.time_source!r} not one of ('header', 'receive')")
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {self.max_age_s}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")
        if not self.image_budget_mb > 0:
            raise ValueError(f"image_budget_mb must be > 0, got {self.image_budget_mb}")
        if self.encode_threads < 1:
            raise ValueError(f"encode_threads must be >= 1, got {self.encode_threads}")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format {self.image_format!r} not one of ('png', 'jpeg')")


def build_episodes(streams: BagStreams, contract: Contract, opts: AlignOptions) -> list[Episode]:
    """Align, derive actions, decode images and split into episodes. Skips go to streams.skips."""
    bag, skips = streams.bag, streams.skips
    dt = round(1e9 / contract.rate_hz)
    max_age = None if opts.max_age_s is None else round(opts.max_age_s * 1e9)
    img_t = {name: np.asarray(s.t, np.int64) for name, s in streams.images.items()}
    starts = [int(v[0]) for v in img_t.values()] + [int(streams.joint_t[0])]
    ends = [int(v[-1]) for v in img_t.values()] + [int(streams.joint_t[-1])]
    traj_t = np.asarray([tr.t for tr in streams.trajectories], np.int64)
    if contract.action_source == "command":
        starts.append(int(traj_t[0]))
    elif contract.action_source == "next_state":
        ends[-1] -= dt  # the action of the last tick is the state one period later
    elif contract.action_source == "ee_pose":
        starts.append(int(streams.pose_t[0]))
        ends.append(int(streams.pose_t[-1]) - dt)  # the action is the pose one period later
        if contract.gripper_joint:
            ends[-2] -= dt  # ... with the gripper joint one period later
    else:
        raise BagError(bag, f"action source {contract.action_source!r} is not supported by the converter")
    ticks = al.make_ticks(max(starts), min(ends), dt)
    if ticks.size == 0:
        raise BagError(bag, "streams do not overlap in time: no control tick has all inputs")
    valid = np.ones(ticks.size, bool)
    img_idx = {}
    for name, stamps in img_t.items():
        img_idx[name] = al.align(ticks, stamps, opts.rule, dt, max_age)
        _count(skips, streams.images[name].topic, (img_idx[name] < 0) & valid, opts.rule, ticks)
        valid &= img_idx[name] >= 0
    j_idx = al.align(ticks, streams.joint_t, opts.rule, dt, max_age)
    _count(skips, contract.joint_state_topic, (j_idx < 0) & valid, opts.rule, ticks)
    valid &= j_idx >= 0
    if contract.action_source == "command":
        action, ok = al.command_targets(ticks, dt, traj_t, streams.trajectories)
        action_topic = contract.command_topic
    elif contract.action_source == "next_state":
        n_idx = al.align(ticks + dt, streams.joint_t, opts.rule, dt, max_age)
        ok = n_idx >= 0
        action = streams.joint_pos[np.clip(n_idx, 0, None)]
        action_topic = contract.joint_state_topic
    else:  # ee_pose: the measured pose at t + dt, and the gripper joint at t + dt
        p_idx = al.align(ticks + dt, streams.pose_t, opts.rule, dt, max_age)
        ok = p_idx >= 0
        gripper = np.zeros(ticks.size)
        if contract.gripper_joint:
            g_idx = al.align(ticks + dt, streams.joint_t, opts.rule, dt, max_age)
            ok &= g_idx >= 0
            gripper = streams.joint_pos[
                np.clip(g_idx, 0, None), contract.joint_names.index(contract.gripper_joint)
            ]
        action = al.pose_to_action10(streams.pose[np.clip(p_idx, 0, None)], gripper)
        action_topic = contract.ee_pose_topic
    _count(skips, action_topic, ~ok & valid, opts.rule, ticks)
    valid &= ok
    # Decode only the images the alignment selected; a corrupt one drops its tick. Deserialising
    # and the format checks run in time order; resize + encode (OpenCV, releases the GIL) run on a
    # thread pool in batches, so memory stays bounded by one batch of decoded frames.
    decoded: dict[str, dict[int, bytes]] = {name: {} for name in img_t}
    fmt_seen: dict[str, tuple] = {}
    size = (contract.image_width, contract.image_height)
    with ThreadPoolExecutor(max_workers=opts.encode_threads) as pool:
        for name, s in streams.images.items():
            wanted = sorted({int(img_idx[name][ti]) for ti in np.flatnonzero(valid)})
            keys: list[int] = []
            rgbs: list[np.ndarray] = []

            for k, raw in streams.selected_images(name, wanted):
                try:
                    rgbs.append(_decode(raw, s.compressed, s.topic, int(s.t[k]), fmt_seen, bag))
                    keys.append(k)
                except ImageDecodeError as e:
                    skips.add(s.topic, f"undecodable image: {e}", int(s.t[k]))
                    decoded[name][k] = b""
                if len(rgbs) >= ENCODE_BATCH:
                    _encode_batch(pool, keys, rgbs, decoded[name], size, opts.image_format)
            _encode_batch(pool, keys, rgbs, decoded[name], size, opts.image_format)
            bad = np.array([decoded[name].get(int(k), b"") == b"" for k in img_idx[name]]) & valid
            valid &= ~bad
    tasks = (
        al.instruction_per_tick(ticks, streams.instructions)
        if contract.instruction_source == "topic"
        else [str(streams.metadata_instruction)] * ticks.size
    )
    episodes: list[Episode] = []
    run: list[int] = []
    for i in range(ticks.size + 1):
        if i < ticks.size and valid[i] and (not run or tasks[i] == tasks[run[-1]]):
            run.append(i)
            continue
        if run:
            if len(run) >= opts.min_frames:
                r = np.asarray(run)
                episodes.append(
                    Episode(
                        source=str(bag),
                        task=tasks[run[0]],
                        t=ticks[r],
                        state=streams.joint_pos[j_idx[r]].astype(np.float32),
                        action=action[r].astype(np.float32),
                        images={n: [decoded[n][int(img_idx[n][k])] for k in r] for n in img_t},
                    )
                )
            else:
                skips.add(
                    "",
                    f"episode shorter than min_frames={opts.min_frames} skipped (frames)",
                    int(ticks[run[0]]),
                    n=len(run),
                )
        run = [i] if i < ticks.size and valid[i] else []
    return episodes


def _count(skips, topic: str, mask: np.ndarray, rule: str, ticks: np.ndarray) -> None:
    n = int(mask.sum())
    if n:
        skips.add(
            topic,
            f"ticks dropped by alignment rule '{rule}' (no fresh message)",
            int(ticks[np.argmax(mask)]),
            n=n,
        )


def _encode_batch(
    pool: ThreadPoolExecutor,
    keys: list[int],
    rgbs: list[np.ndarray],
    out: dict[int, bytes],
    size: tuple[int, int],
    fmt: str,
) -> None:
    """Resize and encode a batch of frames on the pool into out[key]; empties the batch lists."""
    out.update(zip(keys, pool.map(lambda im: encode_image(resize_rgb(im, *size), fmt), rgbs)))
    keys.clear()
    rgbs.clear()


def _decode(raw: bytes, compressed: bool, topic: str, stamp: int, fmt_seen: dict, bag: Path) -> np.ndarray:
    """Decode one image to RGB, insisting that encoding and size stay as first seen on the topic."""

    def check(fmt: tuple) -> None:
        prev = fmt_seen.setdefault(topic, fmt)
        if prev != fmt:
            what = "encoding/format" if prev[0] != fmt[0] else "size"
            raise BagError(bag, f"image {what} changed mid-bag from {prev} to {fmt}", topic, stamp / 1e9)

    try:
        if compressed:
            msg, _ = deserialize_lenient(raw, COMPRESSED_T)
            rgb = compressed_to_rgb(msg.data, msg.format)
            check((msg.format.lower(), rgb.shape))
            return rgb
        msg, _ = deserialize_lenient(raw, IMAGE_T)
        check((msg.encoding, (int(msg.height), int(msg.width))))
        return raw_to_rgb(msg.data, msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian)
    except ImageDecodeError as e:
        if "unknown" in str(e):  # every image of the topic would fail the same way
            raise BagError(bag, str(e), topic, stamp / 1e9) from None
        raise
