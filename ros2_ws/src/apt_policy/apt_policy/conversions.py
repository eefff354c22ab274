"""Message <-> numpy conversions for the policy node, without cv_bridge.

Images are decoded with the same functions the dataset converter uses (`apt_core.data.images`), so a
frame reaches the model through exactly the pixels it was trained on. Trajectories, chunks and
status are built from the ROS-free runtime's arrays.
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from apt_core.data.images import ImageDecodeError, compressed_to_rgb, raw_to_rgb, resize_rgb
from apt_core.runtime.stitching import Trajectory

__all__ = [
    "ConversionError",
    "compressed_msg_to_rgb",
    "image_msg_to_rgb",
    "joint_state_to_array",
    "rgb_to_compressed_msg",
    "rgb_to_image_msg",
    "seconds_to_time",
    "time_to_seconds",
    "trajectory_to_msg",
]


class ConversionError(ValueError):
    """A message could not be converted; the message says what was wrong."""


def time_to_seconds(t: Time) -> float:
    return float(t.sec) + float(t.nanosec) * 1e-9


def seconds_to_time(s: float) -> Time:
    sec = math.floor(s)
    return Time(sec=int(sec), nanosec=min(int(round((s - sec) * 1e9)), 999_999_999))


def seconds_to_duration(s: float) -> Duration:
    sec = math.floor(s)
    return Duration(sec=int(sec), nanosec=min(int(round((s - sec) * 1e9)), 999_999_999))


def image_msg_to_rgb(msg: Image, width: int = 0, height: int = 0) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, resized to width x height when given (> 0)."""
    try:
        img = raw_to_rgb(
            np.frombuffer(bytes(msg.data), dtype=np.uint8)
            if not isinstance(msg.data, np.ndarray)
            else msg.data,
            int(msg.height),
            int(msg.width),
            str(msg.encoding),
            int(msg.step),
            int(msg.is_bigendian),
        )
    except ImageDecodeError as e:
        raise ConversionError(str(e)) from None
    return resize_rgb(img, width, height) if width > 0 and height > 0 else img


def compressed_msg_to_rgb(msg: CompressedImage, width: int = 0, height: int = 0) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> (H, W, 3) uint8 RGB, resized when asked."""
    try:
        data = (
            msg.data if isinstance(msg.data, np.ndarray) else np.frombuffer(bytes(msg.data), dtype=np.uint8)
        )
        img = compressed_to_rgb(data, str(msg.format))
    except ImageDecodeError as e:
        raise ConversionError(str(e)) from None
    return resize_rgb(img, width, height) if width > 0 and height > 0 else img


def rgb_to_image_msg(img: np.ndarray, stamp: float = 0.0, frame_id: str = "") -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ConversionError(f"expected (H, W, 3) uint8, got {img.shape} {img.dtype}")
    msg = Image()
    msg.header.stamp, msg.header.frame_id = seconds_to_time(stamp), frame_id
    msg.height, msg.width, msg.encoding, msg.is_bigendian = img.shape[0], img.shape[1], "rgb8", 0
    msg.step = img.shape[1] * 3
    msg.data = np.ascontiguousarray(img).tobytes()
    return msg


def rgb_to_compressed_msg(img: np.ndarray, fmt: str = "jpeg", stamp: float = 0.0) -> CompressedImage:
    import cv2

    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ConversionError(f"could not encode {img.shape} as {fmt}")
    msg = CompressedImage()
    msg.header.stamp, msg.format, msg.data = seconds_to_time(stamp), fmt, buf.tobytes()
    return msg


def joint_state_to_array(msg: JointState, joint_names: tuple[str, ...]) -> np.ndarray:
    """Positions of `joint_names` (contract order) from a JointState in any order; raises on
    missing joints, length mismatches and non-finite values."""
    names = list(msg.name)
    pos = list(msg.position)
    if len(names) != len(pos):
        raise ConversionError(f"joint_states has {len(names)} names but {len(pos)} positions")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise ConversionError(f"joint_states lacks configured joints {missing} (got {names})")
    out = np.array([pos[index[n]] for n in joint_names], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        bad = [n for n, v in zip(joint_names, out) if not math.isfinite(v)]
        raise ConversionError(f"joint_states has non-finite positions for {bad}")
    return out


def trajectory_to_msg(traj: Trajectory, joint_names: tuple[str, ...], frame_id: str = "") -> JointTrajectory:
    """Plan on absolute times -> JointTrajectory stamped at the plan's start; time_from_start per point."""
    msg = JointTrajectory()
    msg.header.stamp, msg.header.frame_id = seconds_to_time(traj.start), frame_id
    msg.joint_names = list(joint_names)
    for t, p, v in zip(traj.times, traj.positions, traj.velocities):
        pt = JointTrajectoryPoint()
        pt.positions, pt.velocities = [float(x) for x in p], [float(x) for x in v]
        pt.time_from_start = seconds_to_duration(float(t - traj.start))
        msg.points.append(pt)
    return msg
