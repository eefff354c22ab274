"""Write real rosbag2 files (mcap or sqlite3) that follow a contract, with known ground truth.

A fixture factory for tests here and in training: every frame's image, joint state, commanded
target and instruction are returned, so a round trip through the converter can be checked exactly.

Timing: frame i is recorded at `start + i * dt` (integer nanoseconds). At that time the bag holds
one image per camera, one JointState and one JointTrajectory whose single point (time_from_start
= dt) is `targets[i]`, i.e. the commanded position for `t_i + dt`. So with the "command" action
source frame i's action is exactly `targets[i]`; with "next_state" it is `states[i + 1]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from apt_core.contract import Contract, load_contract

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
T = TYPESTORE.types

# (names, positions, velocities, stamp_ns) -> CDR bytes; lets tests serialise with real rclpy.
JointStateSerializer = Callable[[Sequence[str], np.ndarray, np.ndarray, int], bytes]


@dataclass
class SyntheticBag:
    """Ground truth of a written bag (arrays in the contract's joint order)."""

    path: Path
    times: np.ndarray  # (N,) int64 record times [ns]
    states: np.ndarray  # (N, J) measured joint positions
    targets: np.ndarray  # (N, J) commanded position for t_i + dt
    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8 RGB as the converter should see it
    instructions: list[str] = field(default_factory=list)  # (N,) instruction in force at frame i
    poses: np.ndarray | None = None  # (N, 7) xyz + quaternion xyzw on the ee_pose topic (ee_pose source)


def synthetic_image(i: int, height: int, width: int, cam: int = 0, noise: int = 0) -> np.ndarray:
    """A smooth gradient with a moving square; row 0 encodes the frame index (exact round trips).

    noise > 0 adds seeded uniform pixel noise of that amplitude, so images compress like camera
    frames rather than like flat graphics (used by the benchmark).
    """
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack(
        [(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), np.full_like(x, (37 * cam) % 256)],
        axis=-1,
    ).astype(np.uint8)
    s = max(height // 6, 2)
    r0, c0 = (3 * i) % (height - s), (5 * i) % (width - s)
    img[r0 : r0 + s, c0 : c0 + s] = (255, 64, 0)
    if noise > 0:
        rng = np.random.default_rng(1000 * cam + i)
        img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(
            np.uint8
        )
    img[0, :4] = (i % 256, (i // 256) % 256, cam)
    return img


def _stamp(ns: int):
    return T["builtin_interfaces/msg/Time"](sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _header(ns: int, frame: str = ""):
    return T["std_msgs/msg/Header"](stamp=_stamp(ns), frame_id=frame)


def image_message(rgb: np.ndarray, encoding: str, stamp_ns: int):
    """A sensor_msgs/Image holding `rgb` converted to `encoding`; returns (msg, rgb the converter sees)."""
    h, w = rgb.shape[:2]
    seen = rgb
    if encoding == "rgb8":
        arr = rgb
    elif encoding == "bgr8":
        arr = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        arr = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif encoding == "bgra8":
        arr = np.concatenate([rgb[:, :, ::-1], np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif encoding == "mono8":
        arr = rgb[:, :, 0]
        seen = np.repeat(arr[:, :, None], 3, axis=2)
    elif encoding == "16UC1":
        arr = rgb[:, :, 0].astype(np.uint16) << 8 | 0x5A  # low byte is dropped by the converter
        seen = np.repeat(rgb[:, :, :1], 3, axis=2)
    else:  # unknown encodings are written as 3 bytes/pixel so the bag itself is well-formed
        arr = rgb
    arr = np.ascontiguousarray(arr)
    step = arr.strides[0]
    msg = T["sensor_msgs/msg/Image"](
        header=_header(stamp_ns, "camera"),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=arr.view(np.uint8).reshape(-1),
    )
    return msg, np.ascontiguousarray(seen)


def compressed_message(rgb: np.ndarray, fmt: str, stamp_ns: int):
    ext = ".png" if fmt == "png" else ".jpg"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = T["sensor_msgs/msg/CompressedImage"](
        header=_header(stamp_ns, "camera"), format=fmt, data=buf.reshape(-1)
    )
    seen = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return msg, seen


def joint_state_cdr(names: Sequence[str], pos: np.ndarray, vel: np.ndarray, stamp_ns: int) -> bytes:
    msg = T["sensor_msgs/msg/JointState"](
        header=_header(stamp_ns),
        name=list(names),
        position=np.asarray(pos, np.float64),
        velocity=np.asarray(vel, np.float64),
        effort=np.zeros(0, np.float64),
    )
    return bytes(TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/JointState"))


def trajectory_cdr(names: Sequence[str], points: Sequence[tuple[np.ndarray, int]], stamp_ns: int) -> bytes:
    """A JointTrajectory with (positions, time_from_start_ns) points; stamp 0 means "start now"."""
    pts = [
        T["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.asarray(p, np.float64),
            velocities=np.zeros(0),
            accelerations=np.zeros(0),
            effort=np.zeros(0),
            time_from_start=T["builtin_interfaces/msg/Duration"](
                sec=int(tf // 1_000_000_000), nanosec=int(tf % 1_000_000_000)
            ),
        )
        for p, tf in points
    ]
    msg = T["trajectory_msgs/msg/JointTrajectory"](
        header=_header(stamp_ns), joint_names=list(names), points=pts
    )
    return bytes(TYPESTORE.serialize_cdr(msg, "trajectory_msgs/msg/JointTrajectory"))


EE_AXIS = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)  # rotation axis of the synthetic end effector


def synthetic_pose(state: np.ndarray) -> np.ndarray:
    """(7,) xyz + unit quaternion (x, y, z, w): a rotation by state[3] rad about EE_AXIS."""
    half = 0.5 * float(state[3])
    return np.concatenate([0.3 + 0.1 * state[:3], EE_AXIS * np.sin(half), [np.cos(half)]])


def pose_cdr(pose: np.ndarray, stamp_ns: int) -> bytes:
    p = pose
    msg = T["geometry_msgs/msg/PoseStamped"](
        header=_header(stamp_ns, "base_link"),
        pose=T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=T["geometry_msgs/msg/Quaternion"](x=p[3], y=p[4], z=p[5], w=p[6]),
        ),
    )
    return bytes(TYPESTORE.serialize_cdr(msg, "geometry_msgs/msg/PoseStamped"))


def string_cdr(text: str) -> bytes:
    return bytes(TYPESTORE.serialize_cdr(T["std_msgs/msg/String"](data=text), "std_msgs/msg/String"))


def write_synthetic_bag(
    path: Path | str,
    contract: Contract | None = None,
    n_frames: int = 20,
    instruction: str = "pick up the red cube",
    *,
    storage: str = "mcap",
    start_s: float = 100.0,
    seed: int = 0,
    instruction_changes: Sequence[tuple[int, str]] = (),
    instruction_in_metadata: bool | None = None,
    image_encoding: str | None = None,
    image_size: tuple[int, int] | None = None,
    compressed_format: str = "png",
    joint_order: Sequence[str] | None = None,
    header_offset_s: float = 0.0,
    joint_state_serializer: JointStateSerializer | None = None,
    skip_topics: Sequence[str] = (),
    nan_frames: Sequence[int] = (),
    frame_hook: Callable[[int, dict[str, object]], None] | None = None,
    stamp_offsets_s: dict[int, float] | None = None,
    image_noise: int = 0,
) -> SyntheticBag:
    """Write a rosbag2 at `path` (must not exist) with `n_frames` frames at the contract rate.

    instruction_changes: (frame, text) pairs; the String topic gets `text` from that frame on.
    instruction_in_metadata: also/only put `instruction` in custom_data (default: when the contract
        says instruction.source == "metadata"; then no String topic is written).
    image_encoding / image_size: override the camera's encoding / (H, W) (default: contract's).
    joint_order: order of names in JointState messages (default: contract order).
    header_offset_s: header stamps are `record time - offset` (tests header vs receive time).
    joint_state_serializer: custom serialiser for JointState (tests pass rclpy's, see module doc).
    skip_topics: topics not written at all. nan_frames: frames whose JointState holds a NaN.
    frame_hook: called as hook(i, overrides) before frame i is written; it may set
        overrides["image_encoding"], overrides["image_size"], overrides["skip"] = True (no message
        at all this frame) or overrides["skip_topics"] = [...] (these topics publish nothing).
    stamp_offsets_s: frame -> seconds added to that frame's header stamps (e.g. to go backwards).
    image_noise: amplitude of seeded pixel noise added to images (0: none).
    """
    contract = contract or load_contract()
    path = Path(path)
    dt_ns = round(1e9 / contract.rate_hz)
    start_ns = round(start_s * 1e9)
    off_ns = round(header_offset_s * 1e9)
    names = list(contract.joint_names)
    order = list(joint_order) if joint_order is not None else names
    perm = [names.index(n) if n in names else -1 for n in order]
    rng = np.random.default_rng(seed)
    J = len(names)
    phase = rng.uniform(0, np.pi, J)
    k = np.arange(n_frames + 1)[:, None]
    states = (0.5 * np.sin(0.2 * k + phase[None, :])).astype(np.float64)
    targets = states[1:] + 0.01  # commanded slightly ahead of what is reached
    states = states[:n_frames]
    meta = (
        instruction_in_metadata
        if instruction_in_metadata is not None
        else contract.instruction_source == "metadata"
    )
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    images: dict[str, list[np.ndarray]] = {c.name: [] for c in contract.cameras}
    instr_per_frame: list[str] = []
    changes = dict(instruction_changes)
    with Writer(path, version=9, storage_plugin=plugin) as w:
        if meta:
            w.set_custom_data("instruction", instruction)
        conns = {}
        for cam in contract.cameras:
            if cam.topic not in skip_topics:
                typ = "sensor_msgs/msg/CompressedImage" if cam.compressed else "sensor_msgs/msg/Image"
                conns[cam.name] = w.add_connection(cam.topic, typ, typestore=TYPESTORE)
        js = (
            w.add_connection(contract.joint_state_topic, "sensor_msgs/msg/JointState", typestore=TYPESTORE)
            if contract.joint_state_topic not in skip_topics
            else None
        )
        cmd = (
            w.add_connection(
                contract.command_topic, "trajectory_msgs/msg/JointTrajectory", typestore=TYPESTORE
            )
            if contract.command_topic not in skip_topics
            else None
        )
        ee = None
        if contract.action_source == "ee_pose" and contract.ee_pose_topic not in skip_topics:
            ee = w.add_connection(
                contract.ee_pose_topic, "geometry_msgs/msg/PoseStamped", typestore=TYPESTORE
            )
        instr = None
        if not meta and contract.instruction_topic not in skip_topics:
            instr = w.add_connection(contract.instruction_topic, "std_msgs/msg/String", typestore=TYPESTORE)
        current = instruction
        for i in range(n_frames):
            t = start_ns + i * dt_ns
            hs = t - off_ns + round((stamp_offsets_s or {}).get(i, 0.0) * 1e9)
            ov: dict[str, object] = {}
            if frame_hook is not None:
                frame_hook(i, ov)
            if i in changes:
                current = changes[i]
            if instr is not None and (i == 0 or i in changes):
                w.write(instr, t, string_cdr(current))
            instr_per_frame.append(current)
            if ov.get("skip"):
                for cam in contract.cameras:
                    images[cam.name].append(np.zeros((1, 1, 3), np.uint8))
                continue
            for ci, cam in enumerate(contract.cameras):
                hgt, wid = ov.get("image_size") or image_size or (contract.image_height, contract.image_width)
                rgb = synthetic_image(i, hgt, wid, ci, image_noise)
                if cam.compressed:
                    msg, seen = compressed_message(rgb, compressed_format, hs)
                    data = TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
                else:
                    enc = str(ov.get("image_encoding") or image_encoding or cam.encoding)
                    msg, seen = image_message(rgb, enc, hs)
                    data = TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/Image")
                images[cam.name].append(seen)
                if cam.name in conns and cam.topic not in ov.get("skip_topics", ()):
                    w.write(conns[cam.name], t, bytes(data))
            if js is not None and contract.joint_state_topic not in ov.get("skip_topics", ()):
                pos = np.array([states[i, p] if p >= 0 else 0.0 for p in perm])
                if i in nan_frames:
                    pos[0] = np.nan
                vel = np.zeros_like(pos)
                ser = joint_state_serializer or joint_state_cdr
                w.write(js, t, ser(order, pos, vel, hs))
            if ee is not None and contract.ee_pose_topic not in ov.get("skip_topics", ()):
                w.write(ee, t, pose_cdr(synthetic_pose(states[i]), hs))
            if cmd is not None and contract.command_topic not in ov.get("skip_topics", ()):
                w.write(cmd, t, trajectory_cdr(names, [(targets[i], dt_ns)], hs))
    return SyntheticBag(
        path=path,
        times=start_ns + np.arange(n_frames, dtype=np.int64) * dt_ns,
        states=states,
        targets=targets,
        images={k2: np.stack(v) if len({a.shape for a in v}) == 1 else v for k2, v in images.items()},  # type: ignore[misc]
        instructions=instr_per_frame,
        poses=np.stack([synthetic_pose(x) for x in states]) if n_frames else None,
    )
