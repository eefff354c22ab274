"""Read one rosbag2 (mcap or sqlite3, via `rosbags`) into per-topic time series for alignment.

Per-message problems (NaN joints, missing joint names, timestamps going backwards, undecodable
payloads) drop that message and are counted in a `SkipLog`; per-bag problems (missing required
topic, empty or corrupt bag) raise `BagError`, which names bag, topic and time.

Images are not deserialised here: only their header stamp is read from the CDR bytes, and the
payload is kept, so that only the frames the alignment selects are decoded later.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rosbags.highlevel import AnyReader
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

from apt_core.contract import Contract
from apt_core.data.errors import BagError

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
TIME_SOURCES = ("header", "receive")
IMAGE_T = "sensor_msgs/msg/Image"
COMPRESSED_T = "sensor_msgs/msg/CompressedImage"
JOINT_STATE_T = "sensor_msgs/msg/JointState"
TRAJECTORY_T = "trajectory_msgs/msg/JointTrajectory"
STRING_T = "std_msgs/msg/String"
POSE_T = "geometry_msgs/msg/PoseStamped"


class SkipLog:
    """Counts dropped items by (topic, reason) and remembers the first time each happened."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.first: dict[tuple[str, str], float] = {}

    def add(self, topic: str, reason: str, stamp_ns: int | None = None, n: int = 1) -> None:
        key = (topic, reason)
        self.counts[key] += n
        if key not in self.first and stamp_ns is not None:
            self.first[key] = stamp_ns / 1e9

    def merge(self, other: SkipLog) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v
            if k in other.first and k not in self.first:
                self.first[k] = other.first[k]

    def lines(self) -> list[str]:
        out = []
        for (topic, reason), n in sorted(self.counts.items()):
            at = f" (first at t={self.first[(topic, reason)]:.3f} s)" if (topic, reason) in self.first else ""
            out.append(f"{topic or '-'}: {reason}: {n}{at}")
        return out

    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class ImageStream:
    topic: str
    compressed: bool
    t: list[int] = field(default_factory=list)  # stamps [ns] of the kept messages
    ordinal: list[int] = field(default_factory=list)  # position of each kept message on its topic
    raw: list[bytes] = field(default_factory=list)  # CDR payloads (empty once over the memory budget)


@dataclass
class Trajectory:
    t: int  # as-of time of the message [ns] (when it counts as received)
    start: int  # absolute time its time_from_start is relative to [ns]
    tfs: np.ndarray  # (P,) int64 time_from_start [ns]
    pos: np.ndarray  # (P, J) positions in contract order


@dataclass
class BagStreams:
    """Everything the converter needs from one bag, in the contract's joint order."""

    bag: Path
    images: dict[str, ImageStream]
    joint_t: np.ndarray  # (N,) int64 [ns]
    joint_pos: np.ndarray  # (N, J) float64
    trajectories: list[Trajectory]
    instructions: list[tuple[int, str]]  # (receive time [ns], text)
    pose_t: np.ndarray  # (P,) int64 [ns] end-effector pose stamps (action source ee_pose)
    pose: np.ndarray  # (P, 7) x, y, z, qx, qy, qz, qw (unit quaternion)
    metadata_instruction: str | None
    skips: SkipLog
    n_messages: int = 0
    n_bytes: int = 0
    lenient_decodes: int = 0
    reread_images: bool = False  # payloads exceeded the budget: episodes re-read the selected ones
    sim_scene: str = ""  # custom_data `sim_scene`: the simulator scene it was recorded in ("" if unsaid)

    def selected_images(self, name: str, wanted: list[int]):
        """Yield (k, payload) for the kept image indices `wanted` (sorted) of camera `name`.

        From memory when the payloads were kept; otherwise by a second pass over the bag that
        matches messages by their ordinal on the topic, so memory stays bounded for long HD bags.
        """
        s = self.images[name]
        if not self.reread_images:
            for k in wanted:
                yield k, s.raw[k]
            return
        by_ordinal = {s.ordinal[k]: k for k in wanted}
        try:
            with AnyReader([self.bag], default_typestore=TYPESTORE) as reader:
                conns = [c for c in reader.connections if c.topic == s.topic]
                for n, (_, _, raw) in enumerate(reader.messages(connections=conns)):
                    k = by_ordinal.get(n)
                    if k is not None:
                        yield k, bytes(raw)
        except BagError:
            raise
        except Exception as e:  # the bag changed or broke between the two passes
            raise BagError(
                self.bag, f"second pass over images failed: {type(e).__name__}: {e}", s.topic
            ) from e


def deserialize_lenient(raw: bytes | memoryview, typename: str) -> tuple[object, bool]:
    """Deserialise CDR; on rosbags' size check failure, retry without it.

    rclpy's serialize_message (and so `ros2 bag record`) reports a serialized size larger than the
    content: a JointState with empty trailing arrays (effort=[]) carries a few extra bytes, and a
    JointTrajectory about 8 bytes per point (measured: 64 B for 8 points, 256 B for 32), which
    rosbags' strict size check rejects (ENVIRONMENT.md). The fields themselves parse fine, so we
    parse them and ignore the padding, as long as it is smaller than the parsed content (a
    truncated message still fails inside the parse). Returns (msg, lenient?).
    """
    try:
        return TYPESTORE.deserialize_cdr(raw, typename), False
    except SerdeError as e:
        if "size mismatch" not in str(e):
            raise
    msgdef = TYPESTORE.get_msgdef(typename)
    func = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
    msg, pos = func(memoryview(raw)[4:], 0, msgdef.cls, TYPESTORE)
    if len(raw) - (pos + 4) > max(16, pos):
        raise SerdeError(f"CDR message size mismatch for {typename!r}: {len(raw) - pos - 4} trailing bytes")
    return msg, True


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """Read std_msgs/Header.stamp from the start of a CDR payload without deserialising the rest."""
    fmt = "<iI" if raw[1] else ">iI"
    sec, nsec = struct.unpack_from(fmt, raw, 4)
    return sec * 1_000_000_000 + nsec


def _stamp(msg_stamp) -> int:
    return int(msg_stamp.sec) * 1_000_000_000 + int(msg_stamp.nanosec)


def bag_custom_data(bag: Path) -> dict[str, str]:
    """The `custom_data` mapping of a rosbag2's metadata.yaml (empty when absent)."""
    try:
        meta = yaml.safe_load((bag / "metadata.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise BagError(bag, f"cannot read metadata.yaml: {e}") from None
    info = meta.get("rosbag2_bagfile_information", {}) if isinstance(meta, dict) else {}
    custom = info.get("custom_data") if isinstance(info, dict) else None
    return {str(k): str(v) for k, v in (custom or {}).items()}


def required_topics(contract: Contract) -> dict[str, tuple[str, ...]]:
    """topic -> accepted message types, for every topic the contract needs."""
    req: dict[str, tuple[str, ...]] = {}
    for cam in contract.cameras:
        req[cam.topic] = (COMPRESSED_T,) if cam.compressed else (IMAGE_T,)
    req[contract.joint_state_topic] = (JOINT_STATE_T,)
    if contract.action_source == "command":
        req[contract.command_topic] = (TRAJECTORY_T,)
    if contract.action_source == "ee_pose":
        req[contract.ee_pose_topic] = (POSE_T,)
    if contract.instruction_source == "topic":
        req[contract.instruction_topic] = (STRING_T,)
    return req


def find_bags(inputs: list[Path] | Path) -> list[Path]:
    """Expand inputs (bag folders, folders of bags, or a bag's .mcap/.db3 file) to bag folders."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    bags: list[Path] = []
    for item in map(Path, items):
        if item.is_file() and (item.parent / "metadata.yaml").is_file():
            bags.append(item.parent)
        elif (item / "metadata.yaml").is_file():
            bags.append(item)
        elif item.is_dir():
            found = sorted(p.parent for p in item.rglob("metadata.yaml"))
            if not found:
                raise BagError(item, "no rosbag2 found (no metadata.yaml in this folder or below)")
            bags.extend(found)
        else:
            raise BagError(item, "not a rosbag2 folder or file (path does not exist or has no metadata.yaml)")
    seen: set[Path] = set()
    return [b for b in bags if not (b.resolve() in seen or seen.add(b.resolve()))]


DEFAULT_IMAGE_BUDGET_MB = 1024.0  # image payloads kept in memory per bag before switching to two passes


def read_bag(
    bag: Path,
    contract: Contract,
    time_source: str = "header",
    image_budget_mb: float = DEFAULT_IMAGE_BUDGET_MB,
) -> BagStreams:
    """Read the contract's topics from one bag. Raises BagError for a bag that cannot be used.

    Image payloads are kept in memory up to `image_budget_mb`; past it they are dropped and the
    selected frames are re-read later (`BagStreams.selected_images`), trading a second pass over
    the bag for bounded memory.
    """
    if time_source not in TIME_SOURCES:
        raise ValueError(f"time source {time_source!r} not one of {TIME_SOURCES}")
    try:
        return _read(Path(bag), contract, time_source, int(image_budget_mb * 1024 * 1024))
    except BagError:
        raise
    except Exception as e:  # rosbags raises many types for damaged files; report them uniformly
        raise BagError(bag, f"cannot read bag (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _read(bag: Path, contract: Contract, time_source: str, image_budget: int) -> BagStreams:
    use_header = time_source == "header"
    names = contract.joint_names
    J = len(names)
    skips = SkipLog()
    with AnyReader([bag], default_typestore=TYPESTORE) as reader:
        if reader.message_count == 0:
            raise BagError(bag, "bag is empty (0 messages)")
        present = {c.topic: c.msgtype for c in reader.connections}
        for topic, types in required_topics(contract).items():
            if topic not in present:
                raise BagError(bag, f"required topic missing (bag has: {sorted(present)})", topic)
            if present[topic] not in types:
                raise BagError(bag, f"has type {present[topic]}, contract needs {types[0]}", topic)
        custom = bag_custom_data(bag)
        meta_instr = custom.get("instruction")
        if contract.instruction_source == "metadata" and not meta_instr:
            raise BagError(
                bag, "instruction.source is 'metadata' but the bag's custom_data has no 'instruction'"
            )
        cam_by_topic = {c.topic: c for c in contract.cameras}
        images = {c.name: ImageStream(c.topic, c.compressed) for c in contract.cameras}
        want = set(required_topics(contract))
        conns = [c for c in reader.connections if c.topic in want]
        jt: list[int] = []
        jp: list[np.ndarray] = []
        trajs: list[Trajectory] = []
        pt: list[int] = []
        pp: list[np.ndarray] = []
        instr: list[tuple[int, str]] = []
        last: dict[str, int] = {}
        n_msg = n_bytes = lenient = kept = 0
        reread = False
        seen: Counter[str] = Counter()
        for conn, recv, raw in reader.messages(connections=conns):
            n_msg += 1
            n_bytes += len(raw)
            topic = conn.topic
            try:
                if topic in cam_by_topic:
                    ordinal = seen[topic]
                    seen[topic] += 1
                    t = header_stamp_ns(raw) if use_header else recv
                    if use_header and t == 0:
                        skips.add(topic, "zero header stamp", recv)
                        continue
                    if not _monotonic(last, topic, t, skips):
                        continue
                    s = images[cam_by_topic[topic].name]
                    s.t.append(t)
                    s.ordinal.append(ordinal)
                    if not reread:
                        s.raw.append(bytes(raw))
                        kept += len(raw)
                        if kept > image_budget:
                            reread = True
                            for st in images.values():
                                st.raw.clear()
                elif topic == contract.joint_state_topic:
                    msg, len_ok = deserialize_lenient(raw, JOINT_STATE_T)
                    lenient += len_ok
                    t = _stamp(msg.header.stamp) if use_header else recv
                    if use_header and t == 0:
                        skips.add(topic, "zero header stamp", recv)
                        continue
                    pos = _reorder(
                        list(msg.name), np.asarray(msg.position, np.float64), names, topic, t, skips
                    )
                    if pos is None or not _monotonic(last, topic, t, skips):
                        continue
                    jt.append(t)
                    jp.append(pos)
                elif topic == contract.command_topic and contract.action_source == "command":
                    msg, len_ok = deserialize_lenient(raw, TRAJECTORY_T)
                    lenient += len_ok
                    hs = _stamp(msg.header.stamp)
                    t = recv
                    # JTC semantics: a zero stamp means "start now" (on receipt).
                    start = hs if (use_header and hs != 0) else recv
                    if use_header and hs != 0:
                        t = hs
                    tr = _trajectory(msg, names, t, start, topic, skips)
                    if tr is None or not _monotonic(last, topic, t, skips):
                        continue
                    trajs.append(tr)
                elif topic == contract.ee_pose_topic and contract.action_source == "ee_pose":
                    msg, _ = deserialize_lenient(raw, POSE_T)
                    t = _stamp(msg.header.stamp) if use_header else recv
                    p, q = msg.pose.position, msg.pose.orientation
                    v = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], np.float64)
                    qn = float(np.linalg.norm(v[3:]))
                    if use_header and t == 0:
                        skips.add(topic, "zero header stamp", recv)
                    elif not np.all(np.isfinite(v)) or abs(qn - 1.0) > 0.01:
                        skips.add(topic, "non-finite pose or non-unit quaternion", t)
                    elif _monotonic(last, topic, t, skips):
                        v[3:] /= qn
                        pt.append(t)
                        pp.append(v)
                elif topic == contract.instruction_topic:
                    msg, _ = deserialize_lenient(raw, STRING_T)
                    instr.append((recv, str(msg.data).strip()))
            except (SerdeError, struct.error, ValueError) as e:
                skips.add(topic, f"undecodable message ({type(e).__name__})", recv)
    if not jt:
        detail = "; ".join(skips.lines()) or "no messages"
        raise BagError(bag, f"no usable joint states ({detail})", contract.joint_state_topic)
    for cam in contract.cameras:
        if not images[cam.name].t:
            raise BagError(bag, "no usable images", cam.topic)
    if contract.action_source == "command" and not trajs:
        raise BagError(bag, "no usable JointTrajectory commands", contract.command_topic)
    if contract.action_source == "ee_pose" and not pt:
        raise BagError(bag, "no usable end-effector poses", contract.ee_pose_topic)
    if contract.instruction_source == "topic" and not [s for _, s in instr if s]:
        raise BagError(bag, "no non-empty instruction", contract.instruction_topic)
    return BagStreams(
        bag=bag,
        images=images,
        joint_t=np.asarray(jt, np.int64),
        joint_pos=np.stack(jp).reshape(-1, J),
        trajectories=trajs,
        instructions=instr,
        pose_t=np.asarray(pt, np.int64),
        pose=np.stack(pp) if pp else np.zeros((0, 7)),
        metadata_instruction=meta_instr,
        skips=skips,
        n_messages=n_msg,
        n_bytes=n_bytes,
        lenient_decodes=lenient,
        reread_images=reread,
        sim_scene=custom.get("sim_scene", ""),
    )


def _monotonic(last: dict[str, int], topic: str, t: int, skips: SkipLog) -> bool:
    """Keep a message only if its time is after the previous kept one on the topic."""
    prev = last.get(topic)
    if prev is not None and t <= prev:
        skips.add(topic, "timestamp not after the previous message (went backwards or repeated)", t)
        return False
    last[topic] = t
    return True


def _reorder(
    msg_names: list[str], values: np.ndarray, names: tuple[str, ...], topic: str, t: int, skips: SkipLog
) -> np.ndarray | None:
    """Map a message's (names, values) to the contract's joint order; None (and a skip) if unusable."""
    if len(values) != len(msg_names):
        skips.add(topic, f"{len(msg_names)} names but {len(values)} positions", t)
        return None
    idx = {n: i for i, n in enumerate(msg_names)}
    missing = [n for n in names if n not in idx]
    if missing:
        skips.add(topic, f"joints missing from message: {missing}", t)
        return None
    out = values[[idx[n] for n in names]]
    if not np.all(np.isfinite(out)):
        skips.add(topic, "non-finite joint value (NaN/inf)", t)
        return None
    return out


def _trajectory(
    msg, names: tuple[str, ...], t: int, start: int, topic: str, skips: SkipLog
) -> Trajectory | None:
    if not msg.points:
        skips.add(topic, "trajectory with no points", t)
        return None
    rows, tfs = [], []
    for p in msg.points:
        pos = _reorder(list(msg.joint_names), np.asarray(p.positions, np.float64), names, topic, t, skips)
        if pos is None:
            return None
        rows.append(pos)
        tfs.append(int(p.time_from_start.sec) * 1_000_000_000 + int(p.time_from_start.nanosec))
    tfs_a = np.asarray(tfs, np.int64)
    if np.any(np.diff(tfs_a) <= 0):
        skips.add(topic, "trajectory points not in increasing time_from_start", t)
        return None
    return Trajectory(t=t, start=start, tfs=tfs_a, pos=np.stack(rows))
